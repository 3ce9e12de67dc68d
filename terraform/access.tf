# Who may do what on the cluster (EKS access entries) and in AWS (the researcher policy).
#
# - Platform engineers: cluster admin.
# - Researchers: EKS's admin policy scoped to RECC's namespaces (namespace_prefix*), so in those
#   namespaces they can create what a Dask cluster needs (pods, services, secrets, role
#   bindings, network policies) and nothing outside them; plus the Kubernetes group
#   researcher_group, which `recc platform install` binds to the little that is cluster-scoped
#   (creating RECC-labelled namespaces, DaskCluster resources) under an admission policy that
#   confines it to the same prefix.
# - The harvester's IAM role: the Kubernetes group harvester_group, bound by
#   `recc platform install` to the harvester's ClusterRole (the in-cluster CronJob uses the
#   service account, bound to the same ClusterRole).

resource "aws_eks_access_entry" "admin" {
  for_each = toset(var.admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  type          = "STANDARD"
  tags          = local.tags
}

resource "aws_eks_access_policy_association" "admin" {
  for_each = aws_eks_access_entry.admin

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value.principal_arn
  policy_arn    = "arn:${local.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"

  access_scope {
    type = "cluster"
  }
}

resource "aws_eks_access_entry" "researcher" {
  for_each = toset(var.researcher_principal_arns)

  cluster_name      = aws_eks_cluster.this.name
  principal_arn     = each.value
  type              = "STANDARD"
  kubernetes_groups = [var.researcher_group]
  tags              = local.tags
}

resource "aws_eks_access_policy_association" "researcher" {
  for_each = aws_eks_access_entry.researcher

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value.principal_arn
  policy_arn    = "arn:${local.partition}:eks::aws:cluster-access-policy/AmazonEKSAdminPolicy"

  access_scope {
    type       = "namespace"
    namespaces = ["${var.namespace_prefix}*"]
  }
}

resource "aws_eks_access_entry" "harvester" {
  cluster_name      = aws_eks_cluster.this.name
  principal_arn     = aws_iam_role.irsa["harvester"].arn
  type              = "STANDARD"
  kubernetes_groups = [var.harvester_group]
  tags              = local.tags
}

# ---------------------------------------------------------------------------------------------
# What a researcher's own AWS credentials need for `recc up` / `recc down` (attach this policy
# to the researchers' roles, e.g. their IAM Identity Center permission set). Creation is only
# allowed with recc:managed-by = recc in the request, changes only on resources carrying it.
# ---------------------------------------------------------------------------------------------

resource "aws_iam_policy" "researcher" {
  name        = "${var.name}-recc-researcher"
  description = "Create, scale and delete RECC's per-cluster node groups on ${var.name}"
  tags        = local.tags

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "UseTheCluster"
        Effect   = "Allow"
        Action   = ["eks:DescribeCluster", "eks:ListNodegroups"]
        Resource = local.cluster_arn
      },
      {
        Sid      = "CreateRECCNodegroups"
        Effect   = "Allow"
        Action   = "eks:CreateNodegroup"
        Resource = [local.cluster_arn, local.nodegroup_arns]
        Condition = {
          StringEquals = { "aws:RequestTag/${local.managed_by_key}" = local.managed_by_value }
        }
      },
      {
        # Node groups only, never the cluster; and see the Deny below.
        Sid      = "TagRECCNodegroups"
        Effect   = "Allow"
        Action   = "eks:TagResource"
        Resource = local.nodegroup_arns
        Condition = {
          StringEquals = { "aws:RequestTag/${local.managed_by_key}" = local.managed_by_value }
        }
      },
      {
        # Tagging the platform's own node group recc:managed-by = recc would otherwise make it
        # deletable through the statements above.
        Sid      = "NeverTouchTheSystemNodegroup"
        Effect   = "Deny"
        Action   = ["eks:TagResource", "eks:UntagResource", "eks:UpdateNodegroupConfig", "eks:DeleteNodegroup"]
        Resource = "arn:${local.partition}:eks:${local.region}:${local.account_id}:nodegroup/${var.name}/${local.system_nodegroup}/*"
      },
      {
        Sid      = "ManageRECCNodegroups"
        Effect   = "Allow"
        Action   = ["eks:DescribeNodegroup", "eks:ListTagsForResource", "eks:UpdateNodegroupConfig", "eks:DeleteNodegroup"]
        Resource = local.nodegroup_arns
        Condition = {
          StringEquals = { "aws:ResourceTag/${local.managed_by_key}" = local.managed_by_value }
        }
      },
      {
        # `recc protect` / `recc unprotect`: only the two protection tags, only on RECC's own
        # node groups and launch templates.
        Sid      = "MarkRECCResourcesProtected"
        Effect   = "Allow"
        Action   = ["eks:TagResource", "eks:UntagResource", "ec2:CreateTags", "ec2:DeleteTags"]
        Resource = [local.nodegroup_arns, local.launch_template_arns]
        Condition = {
          StringEquals                = { "aws:ResourceTag/${local.managed_by_key}" = local.managed_by_value }
          "ForAllValues:StringEquals" = { "aws:TagKeys" = local.protect_tags }
        }
      },
      {
        Sid      = "PassOnlyTheNodeRole"
        Effect   = "Allow"
        Action   = "iam:PassRole"
        Resource = aws_iam_role.node.arn
      },
      {
        Sid      = "CreateRECCLaunchTemplates"
        Effect   = "Allow"
        Action   = "ec2:CreateLaunchTemplate"
        Resource = local.launch_template_arns
        Condition = {
          StringEquals = { "aws:RequestTag/${local.managed_by_key}" = local.managed_by_value }
        }
      },
      {
        Sid      = "TagLaunchTemplatesOnCreate"
        Effect   = "Allow"
        Action   = "ec2:CreateTags"
        Resource = local.launch_template_arns
        Condition = {
          StringEquals = { "ec2:CreateAction" = "CreateLaunchTemplate" }
        }
      },
      {
        Sid      = "DeleteRECCLaunchTemplates"
        Effect   = "Allow"
        Action   = "ec2:DeleteLaunchTemplate"
        Resource = local.launch_template_arns
        Condition = {
          StringEquals = { "aws:ResourceTag/${local.managed_by_key}" = local.managed_by_value }
        }
      },
      {
        Sid      = "NodegroupServiceLinkedRole"
        Effect   = "Allow"
        Action   = "iam:CreateServiceLinkedRole"
        Resource = "arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/eks-nodegroup.amazonaws.com/AWSServiceRoleForAmazonEKSNodegroup"
        Condition = {
          StringEquals = { "iam:AWSServiceName" = "eks-nodegroup.amazonaws.com" }
        }
      },
      {
        # Planning and pricing reads; none of these support resource-level permissions.
        Sid    = "PlanAndPrice"
        Effect = "Allow"
        Action = [
          "ec2:DescribeInstanceTypes",
          "ec2:DescribeLaunchTemplates",
          "ec2:DescribeLaunchTemplateVersions",
          "ec2:DescribeSubnets",
          "ec2:DescribeSpotPriceHistory",
          "pricing:GetProducts",
          "tag:GetResources",
        ]
        Resource = "*"
      },
    ]
  })
}
