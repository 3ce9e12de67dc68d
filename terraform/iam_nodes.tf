# The node role: every node of the platform (the system node group and each RECC cluster's node
# group, which RECC creates with this role's ARN) runs with it. It carries only what a node
# needs to join the cluster and pull images; the VPC CNI has its own IRSA role, and Dask pods
# get S3 access through the worker IRSA role, never through the node.

resource "aws_iam_role" "node" {
  name        = "${var.name}-recc-node"
  description = "EKS nodes of the RECC platform ${var.name} (system and per-cluster node groups)"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EC2NodesAssumeRole"
      Effect    = "Allow"
      Principal = { Service = "ec2.${local.dns_suffix}" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEC2ContainerRegistryReadOnly",
    # Lets operators open a shell on a node without SSH keys or open ports.
    "AmazonSSMManagedInstanceCore",
  ])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}
