# ---------------------------------------------------------------------------------------------
# Identity of the platform
# ---------------------------------------------------------------------------------------------

variable "name" {
  type        = string
  description = "Name of the EKS cluster, and the prefix of every IAM role, budget and log group this module creates."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lower-case letters, digits and '-', starting with a letter (for example: \"research-dask\")."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes version of the EKS control plane (major.minor)."
  default     = "1.32"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like \"1.32\"."
  }
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource of the platform. Never set recc:managed-by here: that tag marks what RECC's harvester may delete."
  default     = {}

  validation {
    condition     = !contains(keys(var.tags), "recc:managed-by")
    error_message = "tags must not contain recc:managed-by: the harvester may delete whatever carries it; platform resources are tagged recc:component = platform instead."
  }
}

# ---------------------------------------------------------------------------------------------
# Network: a new VPC, or bring your own subnets
# ---------------------------------------------------------------------------------------------

variable "create_vpc" {
  type        = bool
  description = "Create a VPC (private subnets for nodes, public subnets for one NAT gateway, an S3 gateway endpoint, flow logs). Set to false to bring your own vpc_id and subnet_ids."
  default     = true
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the VPC this module creates (create_vpc = true). Each availability zone gets a private subnet (1/16 of it) and a public one (1/256 of it): /20 and /24 for a /16."
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be an IPv4 CIDR of /18 or larger (for example: \"10.42.0.0/16\")."
  }
}

variable "availability_zones" {
  type        = list(string)
  description = "Availability zones for the subnets this module creates. Empty: the first three available zones of the region."
  default     = []
}

variable "vpc_id" {
  type        = string
  description = "Existing VPC to use when create_vpc = false."
  default     = null

  validation {
    condition     = var.create_vpc || var.vpc_id != null
    error_message = "vpc_id is required when create_vpc = false (for example: \"vpc-0123456789abcdef0\")."
  }
}

variable "subnet_ids" {
  type        = list(string)
  description = "Existing private subnets (two or more availability zones) for the control plane ENIs and RECC's node groups, when create_vpc = false. Tag them kubernetes.io/role/internal-elb = 1 for the schedulers' internal load balancers."
  default     = []

  validation {
    condition     = var.create_vpc || length(var.subnet_ids) >= 2
    error_message = "subnet_ids needs at least two private subnets in different zones when create_vpc = false (for example: [\"subnet-0aaa\", \"subnet-0bbb\"])."
  }
}

variable "allowed_client_cidrs" {
  type        = list(string)
  description = "CIDRs (VPN, office, peered VPCs) allowed to reach Dask schedulers and dashboards through their internal load balancers (TLS on ports 8786/8787)."
  default     = []

  validation {
    condition     = alltrue([for c in var.allowed_client_cidrs : can(cidrnetmask(c)) && c != "0.0.0.0/0"])
    error_message = "allowed_client_cidrs must be IPv4 CIDRs narrower than 0.0.0.0/0 (for example: [\"10.0.0.0/8\"])."
  }
}

variable "flow_log_retention_days" {
  type        = number
  description = "Retention of the VPC flow logs and the EKS control plane logs in CloudWatch, in days."
  default     = 365
}

# ---------------------------------------------------------------------------------------------
# EKS control plane and access
# ---------------------------------------------------------------------------------------------

variable "endpoint_public_access" {
  type        = bool
  description = "Expose the Kubernetes API endpoint publicly (restricted to public_access_cidrs). False keeps it reachable only from the VPC and connected networks."
  default     = false
}

variable "public_access_cidrs" {
  type        = list(string)
  description = "CIDRs allowed to reach the public Kubernetes API endpoint when endpoint_public_access = true."
  default     = []

  validation {
    condition     = !var.endpoint_public_access || (length(var.public_access_cidrs) > 0 && !contains(var.public_access_cidrs, "0.0.0.0/0"))
    error_message = "public_access_cidrs must list the networks allowed to the public endpoint, and not 0.0.0.0/0 (for example: [\"203.0.113.0/24\"])."
  }
}

variable "admin_principal_arns" {
  type        = list(string)
  description = "IAM roles/users of the platform engineers: cluster-admin access (they run `recc platform install`)."
  default     = []
}

variable "researcher_principal_arns" {
  type        = list(string)
  description = "IAM roles/users of researchers: admin access scoped to RECC's namespaces (namespace_prefix*) plus the Kubernetes group researcher_group, which `recc platform install` binds to RECC's ClusterRole."
  default     = []
}

variable "researcher_group" {
  type        = string
  description = "Kubernetes group researchers are mapped to by their access entries."
  default     = "recc-researchers"
}

variable "harvester_group" {
  type        = string
  description = "Kubernetes group the harvester's IAM role is mapped to, for harvests run outside the cluster (CI, a scheduled profile)."
  default     = "recc-harvester"
}

variable "namespace_prefix" {
  type        = string
  description = "Prefix of the namespace RECC creates for each Dask cluster; researchers' access and the workers' IRSA trust are scoped to it."
  default     = "recc-"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,20}-$", var.namespace_prefix))
    error_message = "namespace_prefix must be lower-case, end with '-' and be at most 22 characters (for example: \"recc-\")."
  }
}

variable "system_node_instance_types" {
  type        = list(string)
  description = "Instance types of the small managed node group that runs the platform's own pods (CoreDNS, the dask-kubernetes operator, the harvester). Dask clusters never run here: each gets its own node group."
  default     = ["t3.large"]
}

variable "system_node_count" {
  type        = number
  description = "Number of nodes in the system node group."
  default     = 2

  validation {
    condition     = var.system_node_count >= 1 && var.system_node_count <= 10
    error_message = "system_node_count must be between 1 and 10 (for example: 2)."
  }
}

# ---------------------------------------------------------------------------------------------
# Workloads: service accounts, the operator and the harvester
# ---------------------------------------------------------------------------------------------

variable "operator_namespace" {
  type        = string
  description = "Namespace of the dask-kubernetes operator (installed by `recc platform install`)."
  default     = "dask-operator"
}

variable "system_namespace" {
  type        = string
  description = "Namespace of the harvester CronJob (installed by `recc platform install`). Must not start with namespace_prefix: researchers are admins there."
  default     = "recc"

  validation {
    condition     = !startswith(var.system_namespace, var.namespace_prefix) && !startswith(var.operator_namespace, var.namespace_prefix)
    error_message = "system_namespace and operator_namespace must not start with namespace_prefix, where researchers have admin access (for example: \"recc\" and \"dask-operator\" with prefix \"recc-\")."
  }
}

variable "worker_service_account" {
  type        = string
  description = "Name of the service account RECC creates in each cluster namespace for the scheduler and workers; its IRSA role grants worker_s3_bucket_arns."
  default     = "recc-worker"
}

variable "harvester_service_account" {
  type        = string
  description = "Name of the harvester's service account in system_namespace."
  default     = "recc-harvester"
}

variable "worker_s3_bucket_arns" {
  type        = list(string)
  description = "S3 buckets (ARNs, without /*) Dask workers may read and write through their IRSA role."
  default     = []

  validation {
    condition     = alltrue([for b in var.worker_s3_bucket_arns : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]{3,63}$", b))])
    error_message = "worker_s3_bucket_arns must be bucket ARNs (for example: \"arn:aws:s3:::my-simulations\")."
  }
}

variable "worker_s3_read_only_bucket_arns" {
  type        = list(string)
  description = "S3 buckets (ARNs, without /*) Dask workers may only read."
  default     = []

  validation {
    condition     = alltrue([for b in var.worker_s3_read_only_bucket_arns : can(regex("^arn:aws[a-z-]*:s3:::[a-z0-9.-]{3,63}$", b))])
    error_message = "worker_s3_read_only_bucket_arns must be bucket ARNs (for example: \"arn:aws:s3:::reference-data\")."
  }
}

variable "harvester_schedule" {
  type        = string
  description = "Cron schedule (five fields, UTC) of the harvester CronJob that reaps idle, expired and orphaned clusters."
  default     = "*/10 * * * *"

  validation {
    condition     = can(regex("^\\S+(\\s+\\S+){4}$", trimspace(var.harvester_schedule)))
    error_message = "harvester_schedule must be a five-field cron expression (for example: \"*/10 * * * *\")."
  }
}

variable "harvester_image" {
  type        = string
  description = "Container image with RECC installed for the harvester CronJob. Empty: the Dask image RECC uses, with RECC added at start-up (EXTRA_PIP_PACKAGES)."
  default     = ""
}

variable "harvester_external_principal_arns" {
  type        = list(string)
  description = "IAM principals (for example a CI role) allowed to assume the harvester role to run `recc harvest` outside the cluster."
  default     = []
}

variable "source_nfs_server" {
  type        = string
  description = "NFS/EFS server holding one directory per source branch, mounted into Dask pods for source_git_branch. Null: the feature is off."
  default     = null
}

variable "source_nfs_path" {
  type        = string
  description = "Export path on source_nfs_server under which branch directories live."
  default     = "/recc/branches"
}

# ---------------------------------------------------------------------------------------------
# Cost: budgets and cost allocation tags
# ---------------------------------------------------------------------------------------------

variable "monthly_budget_usd" {
  type        = number
  description = "Monthly budget (USD) for everything RECC creates (resources tagged recc:managed-by = recc)."
  default     = 1000

  validation {
    condition     = var.monthly_budget_usd > 0
    error_message = "monthly_budget_usd must be positive (for example: 1000)."
  }
}

variable "user_monthly_budgets_usd" {
  type        = map(number)
  description = "Optional monthly budget (USD) per researcher, keyed by the value RECC puts in the recc:user tag."
  default     = {}

  validation {
    condition     = alltrue([for u, v in var.user_monthly_budgets_usd : v > 0 && can(regex("^[A-Za-z0-9._@-]{1,63}$", u))])
    error_message = "user_monthly_budgets_usd maps recc:user tag values to positive amounts (for example: { alice = 200 })."
  }
}

variable "budget_thresholds_percent" {
  type        = list(number)
  description = "Percentages of each budget at which actual spend notifies; a forecast above 100% always notifies."
  default     = [80, 100]
}

variable "budget_notification_emails" {
  type        = list(string)
  description = "E-mail addresses notified by the budgets."
  default     = []
}

variable "budget_notification_sns_topic_arns" {
  type        = list(string)
  description = "SNS topics notified by the budgets (for chat or paging integrations)."
  default     = []

  validation {
    condition     = length(var.budget_notification_sns_topic_arns) + length(var.budget_notification_emails) > 0
    error_message = "budgets need somebody to notify: set budget_notification_emails or budget_notification_sns_topic_arns (for example: [\"platform@example.org\"])."
  }
}

variable "activate_cost_allocation_tags" {
  type        = bool
  description = "Activate RECC's cost allocation tags in Cost Explorer. AWS only accepts tag keys it has already seen on a billed resource: set false on the very first apply, true once a RECC cluster has run."
  default     = true
}
