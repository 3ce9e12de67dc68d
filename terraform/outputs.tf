# What RECC needs. `recc platform configure --from-terraform outputs.json` reads the outputs of a
# root module that re-exports these under the same names (see examples/complete) and writes
# them as recc.eks.* dask config; the mapping lives in recc/platform.py (TERRAFORM_OUTPUTS).

output "cluster_name" {
  description = "EKS cluster name (recc.eks.cluster-name)."
  value       = aws_eks_cluster.this.name
}

output "region" {
  description = "AWS region of the platform (recc.eks.region)."
  value       = local.region
}

output "cluster_endpoint" {
  description = "Kubernetes API endpoint (recc.eks.endpoint)."
  value       = aws_eks_cluster.this.endpoint
}

output "cluster_ca_data" {
  description = "Base64 PEM of the cluster's certificate authority (recc.eks.ca-data)."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "subnet_ids" {
  description = "Private subnets for RECC's per-cluster node groups (recc.eks.subnets)."
  value       = local.private_subnet_ids
}

output "security_group_ids" {
  description = "Security groups for RECC's node launch templates: the RECC nodes group and the EKS cluster group (recc.eks.security-groups)."
  value       = [aws_security_group.nodes.id, aws_eks_cluster.this.vpc_config[0].cluster_security_group_id]
}

output "node_role_arn" {
  description = "IAM role of RECC's per-cluster node groups (recc.eks.node-role-arn)."
  value       = aws_iam_role.node.arn
}

output "worker_role_arn" {
  description = "IRSA role of the Dask pods' service account (recc.eks.worker-role-arn)."
  value       = aws_iam_role.irsa["worker"].arn
}

output "harvester_role_arn" {
  description = "IRSA role of the harvester's service account (recc.eks.harvester-role-arn)."
  value       = aws_iam_role.irsa["harvester"].arn
}

output "allowed_client_cidrs" {
  description = "CIDRs allowed to reach schedulers through internal load balancers (recc.eks.allowed-client-cidrs)."
  value       = var.allowed_client_cidrs
}

output "operator_namespace" {
  description = "Namespace of the dask-kubernetes operator (recc.eks.operator-namespace)."
  value       = var.operator_namespace
}

output "system_namespace" {
  description = "Namespace of the harvester CronJob (recc.eks.system-namespace)."
  value       = var.system_namespace
}

output "namespace_prefix" {
  description = "Prefix of RECC's per-cluster namespaces (recc.eks.namespace-prefix)."
  value       = var.namespace_prefix
}

output "worker_service_account" {
  description = "Service account of Dask pods in each cluster namespace (recc.eks.worker-service-account)."
  value       = var.worker_service_account
}

output "harvester_service_account" {
  description = "Service account of the harvester (recc.eks.harvester-service-account)."
  value       = var.harvester_service_account
}

output "researcher_group" {
  description = "Kubernetes group of researchers (recc.eks.researcher-group)."
  value       = var.researcher_group
}

output "harvester_group" {
  description = "Kubernetes group of the harvester's IAM role (recc.eks.harvester-group)."
  value       = var.harvester_group
}

output "harvester_schedule" {
  description = "Cron schedule of the harvester (recc.eks.harvester-schedule)."
  value       = trimspace(var.harvester_schedule)
}

output "harvester_image" {
  description = "Harvester image; empty means RECC's Dask image plus RECC at start-up (recc.eks.harvester-image)."
  value       = var.harvester_image
}

output "source_nfs_server" {
  description = "NFS server of source branches, or null (recc.eks.source-nfs-server)."
  value       = var.source_nfs_server
}

output "source_nfs_path" {
  description = "Export path of source branches (recc.eks.source-nfs-path)."
  value       = var.source_nfs_path
}

# ----- For the platform engineer, not read by RECC ----------------------------------------------

output "vpc_id" {
  description = "VPC of the platform."
  value       = local.vpc_id
}

output "oidc_provider_arn" {
  description = "IAM OIDC provider of the cluster, for further IRSA roles."
  value       = aws_iam_openid_connect_provider.eks.arn
}

output "researcher_policy_arn" {
  description = "IAM policy to attach to researchers' roles so `recc up` can create node groups."
  value       = aws_iam_policy.researcher.arn
}

output "budget_names" {
  description = "Names of the AWS Budgets watching RECC's spend."
  value       = [for b in aws_budgets_budget.recc : b.name]
}

output "cost_allocation_tags" {
  description = "Cost allocation tags activated for RECC."
  value       = [for t in aws_ce_cost_allocation_tag.recc : t.tag_key]
}

output "kms_key_arn" {
  description = "KMS key encrypting Kubernetes Secrets and the platform's logs."
  value       = aws_kms_key.this.arn
}
