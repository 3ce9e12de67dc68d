# The names RECC reads (recc platform configure --from-terraform): keep them as the module has them.

output "cluster_name" {
  description = "See the module output of the same name."
  value       = module.recc_platform.cluster_name
}

output "region" {
  description = "See the module output of the same name."
  value       = module.recc_platform.region
}

output "cluster_endpoint" {
  description = "See the module output of the same name."
  value       = module.recc_platform.cluster_endpoint
}

output "cluster_ca_data" {
  description = "See the module output of the same name."
  value       = module.recc_platform.cluster_ca_data
}

output "subnet_ids" {
  description = "See the module output of the same name."
  value       = module.recc_platform.subnet_ids
}

output "security_group_ids" {
  description = "See the module output of the same name."
  value       = module.recc_platform.security_group_ids
}

output "node_role_arn" {
  description = "See the module output of the same name."
  value       = module.recc_platform.node_role_arn
}

output "worker_role_arn" {
  description = "See the module output of the same name."
  value       = module.recc_platform.worker_role_arn
}

output "harvester_role_arn" {
  description = "See the module output of the same name."
  value       = module.recc_platform.harvester_role_arn
}

output "allowed_client_cidrs" {
  description = "See the module output of the same name."
  value       = module.recc_platform.allowed_client_cidrs
}

output "operator_namespace" {
  description = "See the module output of the same name."
  value       = module.recc_platform.operator_namespace
}

output "system_namespace" {
  description = "See the module output of the same name."
  value       = module.recc_platform.system_namespace
}

output "namespace_prefix" {
  description = "See the module output of the same name."
  value       = module.recc_platform.namespace_prefix
}

output "worker_service_account" {
  description = "See the module output of the same name."
  value       = module.recc_platform.worker_service_account
}

output "harvester_service_account" {
  description = "See the module output of the same name."
  value       = module.recc_platform.harvester_service_account
}

output "researcher_group" {
  description = "See the module output of the same name."
  value       = module.recc_platform.researcher_group
}

output "harvester_group" {
  description = "See the module output of the same name."
  value       = module.recc_platform.harvester_group
}

output "harvester_schedule" {
  description = "See the module output of the same name."
  value       = module.recc_platform.harvester_schedule
}

output "harvester_image" {
  description = "See the module output of the same name."
  value       = module.recc_platform.harvester_image
}

output "source_nfs_server" {
  description = "See the module output of the same name."
  value       = module.recc_platform.source_nfs_server
}

output "source_nfs_path" {
  description = "See the module output of the same name."
  value       = module.recc_platform.source_nfs_path
}

output "researcher_policy_arn" {
  description = "Attach to researchers' roles."
  value       = module.recc_platform.researcher_policy_arn
}
