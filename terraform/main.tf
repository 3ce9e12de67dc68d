# RECC's base platform: what every ephemeral Dask cluster relies on and that outlives them all.
# Per-cluster resources (node groups, launch templates, namespaces) are RECC's, not this
# module's; they carry recc:managed-by = recc, which nothing here ever does, so the harvester
# can never mistake the platform for an orphaned cluster.

data "aws_partition" "current" {}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

locals {
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id
  dns_suffix = data.aws_partition.current.dns_suffix

  tags = merge(var.tags, {
    "recc:component" = "platform"
    "recc:platform"  = var.name
  })

  # The tag every RECC-created resource carries; IAM conditions below key on it.
  managed_by_key   = "recc:managed-by"
  managed_by_value = "recc"
  # The marks `recc protect` sets (recc.tags.PROTECT_LABEL / PROTECT_UNTIL_TAG).
  protect_tags = ["recc.io/protect", "recc:protect-until"]

  # RECC's cost allocation tags (see the tag schema in DESIGN.md); recc:managed-by is also
  # activated because the cluster budget filters on it.
  cost_allocation_tags = ["recc:cluster", "recc:user", "recc:namespace", "recc:job", "recc:managed-by"]

  system_nodegroup     = "recc-system"
  cluster_arn          = "arn:${local.partition}:eks:${local.region}:${local.account_id}:cluster/${var.name}"
  nodegroup_arns       = "arn:${local.partition}:eks:${local.region}:${local.account_id}:nodegroup/${var.name}/*/*"
  launch_template_arns = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:launch-template/*"
}
