# The node role, the IRSA trust policies and the tag-scoped IAM permissions.

mock_provider "aws" {
  source = "./tests/mocks"
}

# Roles get their real-looking ARN from their name, so policies that reference one role can be
# checked against it.
override_resource {
  target = aws_iam_role.node
  values = { arn = "arn:aws:iam::123456789012:role/research-dask-recc-node" }
}

variables {
  name                       = "research-dask"
  availability_zones         = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  budget_notification_emails = ["platform@example.org"]
}

run "node_role_is_for_ec2_and_carries_only_node_policies" {
  command = apply

  assert {
    condition     = jsondecode(aws_iam_role.node.assume_role_policy).Statement[0].Principal.Service == "ec2.amazonaws.com"
    error_message = "the node role must be assumable by EC2 instances"
  }

  assert {
    condition     = length(jsondecode(aws_iam_role.node.assume_role_policy).Statement) == 1
    error_message = "the node role must trust nothing but EC2"
  }

  assert {
    condition = toset([for a in aws_iam_role_policy_attachment.node : a.policy_arn]) == toset([
      "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
      "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
      "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
    ])
    error_message = "the node role must carry exactly the worker-node, ECR read-only and SSM policies (no CNI: aws-node has its own IRSA role; no S3: workers use theirs)"
  }

  assert {
    condition     = output.node_role_arn == "arn:aws:iam::123456789012:role/research-dask-recc-node"
    error_message = "node_role_arn must be the node role RECC passes to its node groups"
  }

  assert {
    condition     = aws_eks_node_group.system.node_role_arn == aws_iam_role.node.arn
    error_message = "the system node group must use the node role"
  }
}

run "irsa_trust_is_pinned_to_issuer_audience_and_service_account" {
  command = apply

  variables {
    worker_s3_bucket_arns           = ["arn:aws:s3:::simulations"]
    worker_s3_read_only_bucket_arns = ["arn:aws:s3:::reference-data"]
  }

  # Worker: any RECC namespace (prefix wildcard), one service account name, STS audience.
  assert {
    condition     = jsondecode(aws_iam_role.irsa["worker"].assume_role_policy).Statement[0].Action == "sts:AssumeRoleWithWebIdentity"
    error_message = "the worker role must be assumed with a web identity token"
  }

  assert {
    condition     = jsondecode(aws_iam_role.irsa["worker"].assume_role_policy).Statement[0].Principal.Federated == aws_iam_openid_connect_provider.eks.arn
    error_message = "the worker role must trust this cluster's OIDC provider only"
  }

  assert {
    condition     = jsondecode(aws_iam_role.irsa["worker"].assume_role_policy).Statement[0].Condition.StringEquals["oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789:aud"] == "sts.amazonaws.com"
    error_message = "the worker trust must pin the token audience to sts.amazonaws.com"
  }

  assert {
    condition     = jsondecode(aws_iam_role.irsa["worker"].assume_role_policy).Statement[0].Condition.StringLike["oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789:sub"] == "system:serviceaccount:recc-*:recc-worker"
    error_message = "the worker trust must be limited to the recc-worker service account in RECC's namespaces"
  }

  # Harvester: exactly one service account, no wildcard, no other principal by default.
  assert {
    condition     = jsondecode(aws_iam_role.irsa["harvester"].assume_role_policy).Statement[0].Condition.StringLike["oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789:sub"] == "system:serviceaccount:recc:recc-harvester"
    error_message = "the harvester trust must name its one service account"
  }

  assert {
    condition     = jsondecode(aws_iam_role.irsa["harvester"].assume_role_policy).Statement[0].Condition.StringEquals["oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789:aud"] == "sts.amazonaws.com"
    error_message = "the harvester trust must pin the token audience"
  }

  assert {
    condition     = length(jsondecode(aws_iam_role.irsa["harvester"].assume_role_policy).Statement) == 1
    error_message = "without harvester_external_principal_arns only the service account may assume the harvester role"
  }

  assert {
    condition     = jsondecode(aws_iam_role.irsa["vpc_cni"].assume_role_policy).Statement[0].Condition.StringLike["oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789:sub"] == "system:serviceaccount:kube-system:aws-node"
    error_message = "the VPC CNI role must trust kube-system/aws-node only"
  }

  # Worker S3: listed buckets only, writes only to the read-write ones.
  assert {
    condition = one([
      for s in jsondecode(aws_iam_role_policy.worker_s3[0].policy).Statement : s.Resource if s.Sid == "WriteObjects"
    ]) == ["arn:aws:s3:::simulations/*"]
    error_message = "workers may write only to worker_s3_bucket_arns"
  }

  assert {
    condition = toset(one([
      for s in jsondecode(aws_iam_role_policy.worker_s3[0].policy).Statement : s.Resource if s.Sid == "ReadObjects"
    ])) == toset(["arn:aws:s3:::simulations/*", "arn:aws:s3:::reference-data/*"])
    error_message = "workers may read both read-write and read-only buckets"
  }
}

run "no_buckets_means_no_worker_s3_policy" {
  command = apply

  assert {
    condition     = length(aws_iam_role_policy.worker_s3) == 0
    error_message = "without buckets the worker role must have no S3 permissions at all"
  }
}

run "external_harvester_principals_are_a_separate_statement" {
  command = apply

  variables {
    harvester_external_principal_arns = ["arn:aws:iam::123456789012:role/ci"]
  }

  assert {
    condition     = jsondecode(aws_iam_role.irsa["harvester"].assume_role_policy).Statement[1].Principal.AWS == ["arn:aws:iam::123456789012:role/ci"]
    error_message = "the CI principal must be trusted through its own sts:AssumeRole statement"
  }
}

run "deletes_and_creates_are_scoped_by_recc_tags" {
  command = apply

  # The checks below hold for every matching statement; make sure there are some to check.
  assert {
    condition = length([
      for s in jsondecode(aws_iam_role_policy.harvester.policy).Statement : s
      if contains(flatten([s.Action]), "eks:DeleteNodegroup") || contains(flatten([s.Action]), "ec2:DeleteLaunchTemplate")
    ]) == 2
    error_message = "the harvester must be able to delete node groups and launch templates"
  }

  assert {
    condition = length([
      for s in jsondecode(aws_iam_policy.researcher.policy).Statement : s
      if contains(flatten([s.Action]), "eks:CreateNodegroup") || contains(flatten([s.Action]), "ec2:CreateLaunchTemplate")
    ]) == 2
    error_message = "researchers must be able to create node groups and launch templates"
  }

  # Every statement of the harvester that can destroy something requires the RECC tag.
  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.harvester.policy).Statement :
      try(s.Condition.StringEquals["aws:ResourceTag/recc:managed-by"], "") == "recc"
      if length([for a in flatten([s.Action]) : a if can(regex("Delete|Update", a))]) > 0
    ])
    error_message = "the harvester may update or delete only resources tagged recc:managed-by = recc"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_policy.researcher.policy).Statement :
      try(s.Condition.StringEquals["aws:RequestTag/recc:managed-by"], "") == "recc"
      if contains(flatten([s.Action]), "eks:CreateNodegroup") || contains(flatten([s.Action]), "ec2:CreateLaunchTemplate")
    ])
    error_message = "researchers may create node groups and launch templates only with recc:managed-by = recc in the request"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_policy.researcher.policy).Statement :
      try(s.Condition.StringEquals["aws:ResourceTag/recc:managed-by"], "") == "recc"
      if s.Effect == "Allow" && (contains(flatten([s.Action]), "eks:DeleteNodegroup") || contains(flatten([s.Action]), "ec2:DeleteLaunchTemplate"))
    ])
    error_message = "researchers may delete only node groups and launch templates tagged recc:managed-by = recc"
  }

  assert {
    condition = length([
      for s in jsondecode(aws_iam_policy.researcher.policy).Statement : s
      if s.Effect == "Deny" && s.Resource == "arn:aws:eks:eu-west-1:123456789012:nodegroup/research-dask/recc-system/*" && contains(flatten([s.Action]), "eks:DeleteNodegroup") && contains(flatten([s.Action]), "eks:TagResource")
    ]) == 1
    error_message = "researchers must never be able to tag (and so claim) or delete the platform's system node group"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_policy.researcher.policy).Statement :
      !contains(flatten([s.Resource]), "arn:aws:eks:eu-west-1:123456789012:cluster/research-dask")
      if s.Effect == "Allow" && contains(flatten([s.Action]), "eks:TagResource")
    ])
    error_message = "researchers must not be able to tag the EKS cluster"
  }

  # recc protect tags RECC's node groups and launch templates with the protection marks only.
  assert {
    condition = length([
      for s in jsondecode(aws_iam_policy.researcher.policy).Statement : s
      if s.Effect == "Allow" && try(s.Condition.StringEquals["aws:ResourceTag/recc:managed-by"], "") == "recc" && try(s.Condition["ForAllValues:StringEquals"]["aws:TagKeys"], []) == ["recc.io/protect", "recc:protect-until"] && contains(flatten([s.Action]), "eks:TagResource") && contains(flatten([s.Action]), "ec2:CreateTags")
    ]) == 1
    error_message = "researchers must be able to set only the protection tags, and only on resources tagged recc:managed-by = recc"
  }

  assert {
    condition = one([
      for s in jsondecode(aws_iam_policy.researcher.policy).Statement : s.Resource if s.Action == "iam:PassRole"
    ]) == "arn:aws:iam::123456789012:role/research-dask-recc-node"
    error_message = "researchers may pass the node role and no other role"
  }
}
