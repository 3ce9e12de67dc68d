# One customer-managed key for the platform: Kubernetes Secrets (RECC keeps each cluster's TLS
# key pair in one) and the CloudWatch log groups.

resource "aws_kms_key" "this" {
  description             = "RECC platform ${var.name}: EKS secrets and CloudWatch logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Delegates key use to IAM policies in this account, as AWS's default key policy does;
        # without it the key could become unmanageable.
        Sid       = "AccountAdministersKey"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncryptsPlatformLogs"
        Effect    = "Allow"
        Principal = { Service = "logs.${local.region}.${local.dns_suffix}" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = [
              "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/aws/eks/${var.name}/*",
              "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/recc/${var.name}/*",
            ]
          }
        }
      },
    ]
  })

  tags = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/recc-${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
