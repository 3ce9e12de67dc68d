# IAM roles for service accounts (IRSA). Each role trusts exactly one service account subject,
# through this cluster's OIDC provider, with the audience pinned: a token minted for another
# cluster, another namespace or another audience cannot assume it.

locals {
  irsa_subjects = {
    # RECC creates one namespace per Dask cluster (namespace_prefix + cluster name), each with a
    # service account of this name; the wildcard is confined to that prefix.
    worker    = "system:serviceaccount:${var.namespace_prefix}*:${var.worker_service_account}"
    harvester = "system:serviceaccount:${var.system_namespace}:${var.harvester_service_account}"
    vpc_cni   = "system:serviceaccount:kube-system:aws-node"
  }

  irsa_statements = {
    for role, subject in local.irsa_subjects : role => {
      Sid       = "ServiceAccountAssumesRole"
      Effect    = "Allow"
      Principal = { Federated = aws_iam_openid_connect_provider.eks.arn }
      Action    = "sts:AssumeRoleWithWebIdentity"
      Condition = {
        StringEquals = { "${local.oidc_issuer}:aud" = local.irsa_audience }
        StringLike   = { "${local.oidc_issuer}:sub" = subject }
      }
    }
  }

  # Harvests can also run outside the cluster (CI, a scheduled profile) as the same role.
  harvester_external_statements = length(var.harvester_external_principal_arns) == 0 ? [] : [{
    Sid       = "ExternalHarvesterAssumesRole"
    Effect    = "Allow"
    Principal = { AWS = var.harvester_external_principal_arns }
    Action    = "sts:AssumeRole"
  }]

  irsa_trust_policies = {
    worker    = jsonencode({ Version = "2012-10-17", Statement = [local.irsa_statements.worker] })
    vpc_cni   = jsonencode({ Version = "2012-10-17", Statement = [local.irsa_statements.vpc_cni] })
    harvester = jsonencode({ Version = "2012-10-17", Statement = concat([local.irsa_statements.harvester], local.harvester_external_statements) })
  }

  irsa_descriptions = {
    worker    = "Dask schedulers and workers of RECC clusters: S3 data access"
    harvester = "RECC harvester: reaps idle, expired and orphaned RECC node groups"
    vpc_cni   = "Amazon VPC CNI (aws-node): pod networking"
  }
}

resource "aws_iam_role" "irsa" {
  for_each = local.irsa_trust_policies

  name               = "${var.name}-recc-${replace(each.key, "_", "-")}"
  description        = local.irsa_descriptions[each.key]
  assume_role_policy = each.value
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "vpc_cni" {
  role       = aws_iam_role.irsa["vpc_cni"].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKS_CNI_Policy"
}

# ---------------------------------------------------------------------------------------------
# Workers: the S3 buckets the platform names, nothing else
# ---------------------------------------------------------------------------------------------

locals {
  worker_buckets = concat(var.worker_s3_bucket_arns, var.worker_s3_read_only_bucket_arns)

  worker_s3_statements = concat(
    length(local.worker_buckets) > 0 ? [{
      Sid      = "ListBuckets"
      Effect   = "Allow"
      Action   = ["s3:ListBucket", "s3:GetBucketLocation"]
      Resource = local.worker_buckets
    }] : [],
    length(local.worker_buckets) > 0 ? [{
      Sid      = "ReadObjects"
      Effect   = "Allow"
      Action   = ["s3:GetObject"]
      Resource = [for b in local.worker_buckets : "${b}/*"]
    }] : [],
    length(var.worker_s3_bucket_arns) > 0 ? [{
      Sid      = "WriteObjects"
      Effect   = "Allow"
      Action   = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
      Resource = [for b in var.worker_s3_bucket_arns : "${b}/*"]
    }] : [],
  )
}

resource "aws_iam_role_policy" "worker_s3" {
  count = length(local.worker_buckets) > 0 ? 1 : 0

  name   = "s3-data"
  role   = aws_iam_role.irsa["worker"].id
  policy = jsonencode({ Version = "2012-10-17", Statement = local.worker_s3_statements })
}

# ---------------------------------------------------------------------------------------------
# Harvester: discover everything of this cluster, delete only what RECC tagged as its own
# ---------------------------------------------------------------------------------------------

resource "aws_iam_role_policy" "harvester" {
  name = "reap-recc-clusters"
  role = aws_iam_role.irsa["harvester"].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "DiscoverNodegroups"
        Effect   = "Allow"
        Action   = ["eks:DescribeCluster", "eks:ListNodegroups"]
        Resource = local.cluster_arn
      },
      {
        Sid      = "ReadNodegroups"
        Effect   = "Allow"
        Action   = ["eks:DescribeNodegroup", "eks:ListTagsForResource"]
        Resource = local.nodegroup_arns
      },
      {
        Sid      = "ReapOnlyRECCNodegroups"
        Effect   = "Allow"
        Action   = ["eks:UpdateNodegroupConfig", "eks:DeleteNodegroup"]
        Resource = local.nodegroup_arns
        Condition = {
          StringEquals = { "aws:ResourceTag/${local.managed_by_key}" = local.managed_by_value }
        }
      },
      {
        Sid      = "ReapOnlyRECCLaunchTemplates"
        Effect   = "Allow"
        Action   = ["ec2:DeleteLaunchTemplate"]
        Resource = local.launch_template_arns
        Condition = {
          StringEquals = { "aws:ResourceTag/${local.managed_by_key}" = local.managed_by_value }
        }
      },
      {
        # These actions support no resource-level permissions.
        Sid      = "DescribeWithoutResourceScope"
        Effect   = "Allow"
        Action   = ["ec2:DescribeLaunchTemplates", "tag:GetResources"]
        Resource = "*"
      },
    ]
  })
}
