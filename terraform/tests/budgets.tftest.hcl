# Budgets and RECC's cost allocation tags.

mock_provider "aws" {
  source = "./tests/mocks"
}

variables {
  name                       = "research-dask"
  availability_zones         = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
  budget_notification_emails = ["platform@example.org"]
  monthly_budget_usd         = 1500
  user_monthly_budgets_usd   = { alice = 250 }
}

run "cluster_budget_watches_everything_recc_creates" {
  command = apply

  assert {
    condition     = aws_budgets_budget.recc["clusters"].budget_type == "COST" && aws_budgets_budget.recc["clusters"].time_unit == "MONTHLY"
    error_message = "the RECC budget must be a monthly cost budget"
  }

  assert {
    condition     = aws_budgets_budget.recc["clusters"].limit_amount == "1500.00" && aws_budgets_budget.recc["clusters"].limit_unit == "USD"
    error_message = "the RECC budget must be monthly_budget_usd in USD"
  }

  assert {
    condition = [for f in aws_budgets_budget.recc["clusters"].cost_filter : f if f.name == "TagKeyValue"][0].values == tolist([
      "user:recc:managed-by$recc"
    ])
    error_message = "the RECC budget must filter on the tag recc:managed-by = recc"
  }

  assert {
    condition     = anytrue([for n in aws_budgets_budget.recc["clusters"].notification : n.notification_type == "FORECASTED" && n.threshold == 100])
    error_message = "a forecast above the budget must notify"
  }

  assert {
    condition = toset([
      for n in aws_budgets_budget.recc["clusters"].notification : n.threshold if n.notification_type == "ACTUAL"
    ]) == toset([80, 100])
    error_message = "actual spend must notify at each of budget_thresholds_percent"
  }

  assert {
    condition     = alltrue([for n in aws_budgets_budget.recc["clusters"].notification : contains(n.subscriber_email_addresses, "platform@example.org")])
    error_message = "every notification must reach budget_notification_emails"
  }
}

run "per_user_budget_filters_on_recc_user" {
  command = apply

  assert {
    condition     = aws_budgets_budget.recc["user-alice"].limit_amount == "250.00"
    error_message = "alice's budget must be her amount"
  }

  assert {
    condition     = [for f in aws_budgets_budget.recc["user-alice"].cost_filter : f.values if f.name == "TagKeyValue"][0] == tolist(["user:recc:user$alice"])
    error_message = "a user's budget must filter on recc:user = <user>"
  }

  assert {
    condition     = length(output.budget_names) == 2
    error_message = "one RECC budget plus one per user"
  }
}

run "recc_cost_allocation_tags_are_activated" {
  command = apply

  assert {
    condition     = toset(keys(aws_ce_cost_allocation_tag.recc)) == toset(["recc:cluster", "recc:user", "recc:namespace", "recc:job", "recc:managed-by"])
    error_message = "RECC's cost allocation tags must all be activated"
  }

  assert {
    condition     = alltrue([for t in aws_ce_cost_allocation_tag.recc : t.status == "Active"])
    error_message = "cost allocation tags must be Active"
  }
}

run "cost_allocation_tags_can_wait_for_first_use" {
  command = plan

  variables {
    activate_cost_allocation_tags = false
  }

  assert {
    condition     = length(aws_ce_cost_allocation_tag.recc) == 0
    error_message = "activate_cost_allocation_tags = false must not touch cost allocation tags"
  }
}

run "budgets_need_a_recipient" {
  command = plan

  variables {
    budget_notification_emails = []
  }

  expect_failures = [var.budget_notification_sns_topic_arns]
}
