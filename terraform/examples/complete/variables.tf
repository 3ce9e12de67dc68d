variable "region" {
  type        = string
  description = "AWS region of the platform."
  default     = "eu-west-1"
}

variable "name" {
  type        = string
  description = "Name of the EKS cluster."
  default     = "research-dask"
}

variable "admin_principal_arns" {
  type        = list(string)
  description = "Platform engineers' IAM roles (cluster admin)."
  default     = []
}

variable "researcher_principal_arns" {
  type        = list(string)
  description = "Researchers' IAM roles (access scoped to RECC's namespaces)."
  default     = []
}

variable "allowed_client_cidrs" {
  type        = list(string)
  description = "Networks from which researchers connect to schedulers (VPN, office)."
  default     = ["10.0.0.0/8"]
}

variable "data_bucket_arns" {
  type        = list(string)
  description = "S3 buckets Dask workers read and write."
  default     = []
}

variable "budget_emails" {
  type        = list(string)
  description = "Who hears about the budgets."
  default     = ["research-platform@example.org"]
}
