# The EKS control plane, its OIDC provider (for IRSA), the platform's own small node group and
# the networking/DNS add-ons. Dask clusters get their own node groups from RECC at `recc up`.

resource "aws_iam_role" "cluster" {
  name = "${var.name}-eks-cluster"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "eks.${local.dns_suffix}" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

# EKS encrypts Secrets through grants the cluster role creates on the platform key.
resource "aws_iam_role_policy" "cluster_kms" {
  name = "encrypt-secrets"
  role = aws_iam_role.cluster.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect   = "Allow"
      Action   = ["kms:Encrypt", "kms:Decrypt", "kms:ListGrants", "kms:DescribeKey", "kms:CreateGrant"]
      Resource = aws_kms_key.this.arn
    }]
  })
}

resource "aws_cloudwatch_log_group" "cluster" {
  # EKS writes to exactly this name; creating it here sets retention and encryption.
  name              = "/aws/eks/${var.name}/cluster"
  retention_in_days = var.flow_log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_eks_cluster" "this" {
  name     = var.name
  version  = var.kubernetes_version
  role_arn = aws_iam_role.cluster.arn

  enabled_cluster_log_types = ["api", "audit", "authenticator", "controllerManager", "scheduler"]

  # Access entries only (no aws-auth ConfigMap), and no implicit admin for whoever ran apply:
  # admins are named in admin_principal_arns.
  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = false
  }

  vpc_config {
    subnet_ids              = local.private_subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = var.endpoint_public_access
    public_access_cidrs     = var.endpoint_public_access ? var.public_access_cidrs : null
  }

  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.this.arn
    }
  }

  tags = local.tags

  depends_on = [
    aws_iam_role_policy_attachment.cluster,
    aws_iam_role_policy.cluster_kms,
    aws_cloudwatch_log_group.cluster,
  ]
}

locals {
  # The issuer without its scheme is the prefix of the IRSA condition keys (":sub", ":aud").
  oidc_issuer_url = aws_eks_cluster.this.identity[0].oidc[0].issuer
  oidc_issuer     = replace(local.oidc_issuer_url, "https://", "")
  # The audience EKS's pod identity webhook puts in projected service account tokens.
  irsa_audience = "sts.amazonaws.com"
}

# Since provider 5.81 the thumbprint is optional: IAM trusts the issuer's CA chain itself.
resource "aws_iam_openid_connect_provider" "eks" {
  url            = local.oidc_issuer_url
  client_id_list = [local.irsa_audience]
  tags           = local.tags
}

# ---------------------------------------------------------------------------------------------
# The platform's own nodes: CoreDNS, the dask-kubernetes operator, the harvester
# ---------------------------------------------------------------------------------------------

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = local.system_nodegroup
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = local.private_subnet_ids
  instance_types  = var.system_node_instance_types
  capacity_type   = "ON_DEMAND"

  scaling_config {
    desired_size = var.system_node_count
    min_size     = var.system_node_count
    max_size     = var.system_node_count + 1
  }

  update_config {
    max_unavailable = 1
  }

  labels = {
    "recc.io/pool" = "system"
  }

  tags = local.tags

  depends_on = [aws_iam_role_policy_attachment.node]
}

resource "aws_eks_addon" "vpc_cni" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "vpc-cni"
  service_account_role_arn    = aws_iam_role.irsa["vpc_cni"].arn
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"
  tags                        = local.tags
}

resource "aws_eks_addon" "kube_proxy" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "kube-proxy"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"
  tags                        = local.tags
}

resource "aws_eks_addon" "coredns" {
  cluster_name                = aws_eks_cluster.this.name
  addon_name                  = "coredns"
  resolve_conflicts_on_create = "OVERWRITE"
  resolve_conflicts_on_update = "PRESERVE"
  tags                        = local.tags

  # CoreDNS needs somewhere to run.
  depends_on = [aws_eks_node_group.system]
}
