# The cluster, access entries, and the network choices (new VPC or bring your own subnets).

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name                       = "research-dask"
  availability_zones         = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  budget_notification_emails = ["platform@example.org"]
  admin_principal_arns       = ["arn:aws:iam::123456789012:role/platform-admin"]
  researcher_principal_arns  = ["arn:aws:iam::123456789012:role/researcher"]
  allowed_client_cidrs       = ["10.8.0.0/16"]
}

run "cluster_is_private_encrypted_and_access_entry_only" {
  command = apply

  assert {
    condition     = aws_eks_cluster.this.access_config[0].authentication_mode == "API" && aws_eks_cluster.this.access_config[0].bootstrap_cluster_creator_admin_permissions == false
    error_message = "access must come from access entries only, with no implicit admin"
  }

  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].endpoint_public_access == false && aws_eks_cluster.this.vpc_config[0].endpoint_private_access == true
    error_message = "the API endpoint must be private by default"
  }

  assert {
    condition     = aws_eks_cluster.this.encryption_config[0].provider[0].key_arn == aws_kms_key.this.arn
    error_message = "Kubernetes Secrets (RECC's TLS keys) must be encrypted with the platform key"
  }

  assert {
    condition     = aws_iam_openid_connect_provider.eks.url == "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE0123456789"
    error_message = "the OIDC provider must be the cluster's issuer"
  }

  assert {
    condition     = !contains(keys(aws_eks_cluster.this.tags), "recc:managed-by")
    error_message = "the platform must never carry recc:managed-by (the harvester would consider it RECC's)"
  }
}

run "researchers_are_scoped_to_recc_namespaces" {
  command = apply

  assert {
    condition     = aws_eks_access_policy_association.researcher["arn:aws:iam::123456789012:role/researcher"].access_scope[0].type == "namespace"
    error_message = "researcher access must be namespace-scoped"
  }

  assert {
    condition     = aws_eks_access_policy_association.researcher["arn:aws:iam::123456789012:role/researcher"].access_scope[0].namespaces == toset(["recc-*"])
    error_message = "researcher access must be limited to RECC's namespaces"
  }

  assert {
    condition     = aws_eks_access_entry.researcher["arn:aws:iam::123456789012:role/researcher"].kubernetes_groups == toset(["recc-researchers"])
    error_message = "researchers must be mapped to the group RECC's RBAC binds"
  }

  assert {
    condition     = aws_eks_access_policy_association.admin["arn:aws:iam::123456789012:role/platform-admin"].access_scope[0].type == "cluster"
    error_message = "admins get cluster scope"
  }

  assert {
    condition     = aws_eks_access_entry.harvester.principal_arn == aws_iam_role.irsa["harvester"].arn && aws_eks_access_entry.harvester.kubernetes_groups == toset(["recc-harvester"])
    error_message = "the harvester role must be mapped to the harvester group"
  }
}

run "new_vpc_has_private_subnets_for_internal_load_balancers" {
  command = apply

  assert {
    condition     = length(aws_subnet.private) == 3 && alltrue([for s in aws_subnet.private : s.tags["kubernetes.io/role/internal-elb"] == "1"])
    error_message = "one private subnet per zone, tagged for internal load balancers"
  }

  assert {
    condition     = [for s in aws_subnet.private : s.cidr_block] == ["10.42.0.0/20", "10.42.16.0/20", "10.42.32.0/20"]
    error_message = "private subnets must be carved from vpc_cidr"
  }

  assert {
    condition     = output.subnet_ids == tolist([for s in aws_subnet.private : s.id])
    error_message = "RECC's node groups must go into the private subnets"
  }

  assert {
    condition     = toset([for r in aws_vpc_security_group_ingress_rule.nodes_dask_clients : r.cidr_ipv4]) == toset(["10.8.0.0/16"]) && alltrue([for r in aws_vpc_security_group_ingress_rule.nodes_dask_clients : r.from_port == 8786 && r.to_port == 8787])
    error_message = "only allowed_client_cidrs may reach the scheduler and dashboard ports"
  }
}

run "bring_your_own_subnets" {
  command = apply

  variables {
    create_vpc = false
    vpc_id     = "vpc-0123456789abcdef0"
    subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  }

  assert {
    condition     = length(aws_vpc.this) == 0 && length(aws_subnet.private) == 0 && length(aws_nat_gateway.this) == 0
    error_message = "no network may be created when bringing your own"
  }

  assert {
    condition     = aws_eks_cluster.this.vpc_config[0].subnet_ids == toset(["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"])
    error_message = "the cluster must use the given subnets"
  }

  assert {
    condition     = output.subnet_ids == tolist(["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]) && output.vpc_id == "vpc-0123456789abcdef0"
    error_message = "RECC must be pointed at the given subnets"
  }

  assert {
    condition     = aws_vpc_security_group_egress_rule.nodes_vpc.cidr_ipv4 == "10.99.0.0/16"
    error_message = "node egress must be scoped to the existing VPC's CIDR"
  }
}

run "bring_your_own_needs_a_vpc" {
  command = plan

  variables {
    create_vpc = false
    subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"]
  }

  expect_failures = [var.vpc_id]
}

run "platform_tags_cannot_claim_recc_ownership" {
  command = plan

  variables {
    tags = { "recc:managed-by" = "recc" }
  }

  expect_failures = [var.tags]
}

run "public_endpoint_needs_a_narrow_allow_list" {
  command = plan

  variables {
    endpoint_public_access = true
    public_access_cidrs    = ["0.0.0.0/0"]
  }

  expect_failures = [var.public_access_cidrs]
}

# Researchers are admins in namespace_prefix*: the harvester's namespace must not be one.
run "system_namespace_outside_researcher_namespaces" {
  command = plan

  variables {
    system_namespace = "recc-system"
  }

  expect_failures = [var.system_namespace]
}
