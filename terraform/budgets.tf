# Cost: RECC's tags become cost allocation tags (so Cost Explorer and the budgets below can
# group and filter by cluster, user, namespace and job), one budget for everything RECC
# creates, and optional per-researcher budgets.

resource "aws_ce_cost_allocation_tag" "recc" {
  for_each = var.activate_cost_allocation_tags ? toset(local.cost_allocation_tags) : toset([])

  tag_key = each.value
  status  = "Active"
}

locals {
  budget_subscribers = {
    emails = var.budget_notification_emails
    topics = var.budget_notification_sns_topic_arns
  }

  # Budgets filter on user-defined tags as "user:<key>$<value>".
  budgets = merge(
    {
      clusters = {
        name   = "${var.name}-recc-clusters"
        amount = var.monthly_budget_usd
        filter = format("user:%s$%s", local.managed_by_key, local.managed_by_value)
      }
    },
    {
      for user, amount in var.user_monthly_budgets_usd : "user-${user}" => {
        name   = "${var.name}-recc-user-${user}"
        amount = amount
        filter = format("user:recc:user$%s", user)
      }
    },
  )
}

resource "aws_budgets_budget" "recc" {
  for_each = local.budgets

  name         = each.value.name
  budget_type  = "COST"
  limit_amount = format("%.2f", each.value.amount)
  limit_unit   = "USD"
  time_unit    = "MONTHLY"

  cost_filter {
    name   = "TagKeyValue"
    values = [each.value.filter]
  }

  dynamic "notification" {
    for_each = toset(var.budget_thresholds_percent)
    content {
      comparison_operator        = "GREATER_THAN"
      threshold                  = notification.value
      threshold_type             = "PERCENTAGE"
      notification_type          = "ACTUAL"
      subscriber_email_addresses = local.budget_subscribers.emails
      subscriber_sns_topic_arns  = local.budget_subscribers.topics
    }
  }

  # Warn before the money is spent, not only after.
  notification {
    comparison_operator        = "GREATER_THAN"
    threshold                  = 100
    threshold_type             = "PERCENTAGE"
    notification_type          = "FORECASTED"
    subscriber_email_addresses = local.budget_subscribers.emails
    subscriber_sns_topic_arns  = local.budget_subscribers.topics
  }

  tags = local.tags
}
