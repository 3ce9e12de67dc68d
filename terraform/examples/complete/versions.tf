terraform {
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }

  # Keep state remote and locked in real use, for example:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "recc/platform.tfstate"
  #   region       = "eu-west-1"
  #   use_lockfile = true
  # }
}

provider "aws" {
  region = var.region

  # Every platform resource is findable by these; RECC's own per-cluster resources carry
  # recc:managed-by = recc instead, which the module refuses to put on the platform.
  default_tags {
    tags = {
      "owner"      = "research-platform"
      "managed-by" = "terraform"
    }
  }
}
