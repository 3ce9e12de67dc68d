# A complete RECC platform: new VPC, EKS, IAM, budgets. After `terraform apply`:
#
#   terraform output -json > recc-platform.json
#   recc platform configure --from-terraform recc-platform.json
#   recc platform install      # dask-kubernetes operator, RBAC, harvester CronJob
#   recc platform check

module "recc_platform" {
  source = "../.."

  name                      = var.name
  admin_principal_arns      = var.admin_principal_arns
  researcher_principal_arns = var.researcher_principal_arns
  allowed_client_cidrs      = var.allowed_client_cidrs
  worker_s3_bucket_arns     = var.data_bucket_arns

  harvester_schedule = "*/10 * * * *"

  monthly_budget_usd = 2000
  user_monthly_budgets_usd = {
    alice = 300
  }
  budget_notification_emails = var.budget_emails

  # Cost allocation tags can only be activated once AWS has billed a resource carrying them:
  # apply with false first, then true after the first RECC cluster has run.
  activate_cost_allocation_tags = false
}
