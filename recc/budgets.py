"""AWS Budgets on RECC's tags: a monthly budget per user or namespace with email alerts, and
activating RECC's tag keys as cost allocation tags (budgets and Cost Explorer need that).

Budgets filter on user-defined tags as ``user:<key>$<value>``; names follow the Terraform
module (``<eks cluster>-recc-user-<u>`` when ``recc.eks.cluster-name`` is set, else
``recc-user-<u>``), so ``recc budget set`` and Terraform's ``user_monthly_budgets_usd`` address
the same budget - manage each budget from one of them only.

Example
-------
>>> request = BudgetRequest("user", "alice", 200, alert_at=(80,), emails=("a@example.org",))
>>> budget_document(request, prefix="")["CostFilters"]
{'TagKeyValue': ['user:recc:user$alice']}
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from recc import config
from recc.errors import BackendError, SpecError
from recc.naming import aws_tag_value

SCOPES = ("user", "namespace")
COST_ALLOCATION_TAGS = ("recc:cluster", "recc:user", "recc:namespace", "recc:job")
_RECC_FILTER_PREFIX = "user:recc:"
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")  # fullmatch: "$" accepts a newline
# AWS Budgets allows 5 notifications per budget and 10 email subscribers per notification.
_MAX_NOTIFICATIONS = 5
_MAX_EMAILS = 10


@dataclass(frozen=True)
class BudgetRequest:
    """A monthly budget on everything RECC tags with ``recc:<scope>=<value>``."""

    scope: str
    value: str
    monthly_usd: float
    alert_at: tuple[float, ...] = (80.0,)
    forecasted: bool = False
    emails: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)


def _validate(r: BudgetRequest) -> None:
    if r.scope not in SCOPES:
        raise SpecError("scope", r.scope, f"must be one of {', '.join(SCOPES)}", "--user alice")
    if not r.value or not r.value.strip():
        raise SpecError(r.scope, r.value, "must not be empty", f"--{r.scope} alice")
    if not (math.isfinite(r.monthly_usd) and r.monthly_usd > 0):
        raise SpecError(
            "monthly-usd", r.monthly_usd, "must be a positive amount", "--monthly-usd 200"
        )
    _check_list(
        "alert-at",
        r.alert_at,
        _MAX_NOTIFICATIONS,
        "thresholds",
        lambda t: math.isfinite(t) and 0 < t <= 1000,
        "must be a percentage of the budget in (0, 1000]",
        "--alert-at 80",
    )
    _check_list(
        "email",
        r.emails,
        _MAX_EMAILS,
        "addresses",
        lambda e: _EMAIL.fullmatch(e) is not None,
        "is not an email address",
        "--email alice@example.org",
    )


def _check_list(
    field: str,
    values: tuple[Any, ...],
    most: int,
    noun: str,
    valid: Callable[[Any], bool],
    problem: str,
    example: str,
) -> None:
    """1 to ``most`` values, each ``valid``; else a SpecError naming the field and the value."""
    if not values or len(values) > most:
        raise SpecError(field, list(values), f"give 1 to {most} {noun}", example)
    for value in values:
        if not valid(value):
            raise SpecError(field, value, problem, example)


def name_prefix() -> str:
    """``<recc.eks.cluster-name>-`` (as the Terraform module names budgets), or nothing."""
    cluster = config.get("eks.cluster-name")
    return f"{cluster}-" if cluster else ""


def budget_name(scope: str, value: str, prefix: str | None = None) -> str:
    """``[<prefix>]recc-<scope>-<value>``, with the characters budget names forbid replaced."""
    prefix = name_prefix() if prefix is None else prefix
    return re.sub(r"[:\\]", "_", f"{prefix}recc-{scope}-{value}")[:100]


def tag_filter(scope: str, value: str) -> str:
    """The CostFilters TagKeyValue matching RECC's tag ``recc:<scope>`` = ``value``."""
    return f"{_RECC_FILTER_PREFIX}{scope}${aws_tag_value(value)}"


def budget_document(request: BudgetRequest, prefix: str | None = None) -> dict[str, Any]:
    """The ``Budget`` of CreateBudget / ``NewBudget`` of UpdateBudget. Pure given ``prefix``."""
    return {
        "BudgetName": budget_name(request.scope, request.value, prefix),
        "BudgetLimit": {"Amount": f"{request.monthly_usd:.2f}", "Unit": "USD"},
        "CostFilters": {"TagKeyValue": [tag_filter(request.scope, request.value)]},
        "TimeUnit": "MONTHLY",
        "BudgetType": "COST",
    }


def notifications(request: BudgetRequest) -> list[dict[str, Any]]:
    """One notification per threshold, each mailing every address. Pure."""
    kind = "FORECASTED" if request.forecasted else "ACTUAL"
    subscribers = [{"SubscriptionType": "EMAIL", "Address": a} for a in request.emails]
    return [
        {
            "Notification": {
                "NotificationType": kind,
                "ComparisonOperator": "GREATER_THAN",
                "Threshold": float(t),
                "ThresholdType": "PERCENTAGE",
            },
            "Subscribers": subscribers,
        }
        for t in sorted(set(request.alert_at))
    ]


def _clients(budgets_client: Any, account_id: str | None) -> tuple[Any, str]:
    from recc.aws import client

    budgets_client = budgets_client or client("budgets", region="us-east-1")  # global service
    account_id = account_id or client("sts").get_caller_identity()["Account"]
    return budgets_client, account_id


def _aws_error(what: str, e: Exception) -> BackendError:
    return BackendError(f"{what} failed: {e} (does this identity have budgets:* permissions?)")


def set_budget(
    request: BudgetRequest, budgets_client: Any = None, account_id: str | None = None
) -> str:
    """Create the budget, or update it in place; returns ``"created"`` or ``"updated"``.

    An update replaces the budget's amount and filter and all of its notifications (AWS keeps
    the budget's spend history).
    """
    budgets, account = _clients(budgets_client, account_id)
    document = budget_document(request)
    name = document["BudgetName"]
    try:
        try:
            budgets.describe_budget(AccountId=account, BudgetName=name)
        except ClientError as e:
            if e.response["Error"]["Code"] != "NotFoundException":
                raise
            budgets.create_budget(
                AccountId=account,
                Budget=document,
                NotificationsWithSubscribers=notifications(request),
            )
            return "created"
        budgets.update_budget(AccountId=account, NewBudget=document)
        existing = budgets.describe_notifications_for_budget(AccountId=account, BudgetName=name)
        for old in existing.get("Notifications", []):
            budgets.delete_notification(AccountId=account, BudgetName=name, Notification=old)
        for new in notifications(request):
            budgets.create_notification(AccountId=account, BudgetName=name, **new)
        return "updated"
    except (BotoCoreError, ClientError) as e:
        raise _aws_error(f"setting budget {name!r}", e) from e


@dataclass(frozen=True)
class BudgetInfo:
    """A RECC budget as AWS reports it."""

    name: str
    scope: str
    value: str
    monthly_usd: float
    actual_usd: float
    forecasted_usd: float | None
    notifications: tuple[str, ...]


def _recc_filter(budget: dict[str, Any]) -> tuple[str, str] | None:
    for value in budget.get("CostFilters", {}).get("TagKeyValue", []):
        if value.startswith(_RECC_FILTER_PREFIX) and "$" in value:
            key, tag_value = value[len(_RECC_FILTER_PREFIX) :].split("$", 1)
            return key, tag_value
    return None


def list_budgets(budgets_client: Any = None, account_id: str | None = None) -> list[BudgetInfo]:
    """Every budget filtered on one of RECC's tags (set by RECC or by Terraform), by name."""
    budgets, account = _clients(budgets_client, account_id)
    found = []
    try:
        pages = budgets.get_paginator("describe_budgets").paginate(AccountId=account)
        for budget in (b for page in pages for b in page.get("Budgets", [])):
            scope = _recc_filter(budget)
            if scope is None:
                continue
            notes = budgets.describe_notifications_for_budget(
                AccountId=account, BudgetName=budget["BudgetName"]
            ).get("Notifications", [])
            spend = budget.get("CalculatedSpend", {})
            forecast = spend.get("ForecastedSpend")
            found.append(
                BudgetInfo(
                    name=budget["BudgetName"],
                    scope=scope[0],
                    value=scope[1],
                    monthly_usd=float(budget["BudgetLimit"]["Amount"]),
                    actual_usd=float(spend.get("ActualSpend", {}).get("Amount", 0)),
                    forecasted_usd=float(forecast["Amount"]) if forecast else None,
                    notifications=tuple(
                        f"{n['NotificationType'].lower()} > {n['Threshold']:g}%"
                        for n in sorted(
                            notes, key=lambda n: (n["NotificationType"], n["Threshold"])
                        )
                    ),
                )
            )
    except (BotoCoreError, ClientError) as e:
        raise _aws_error("listing budgets", e) from e
    return sorted(found, key=lambda b: b.name)


def activate_tags(
    ce_client: Any = None, keys: tuple[str, ...] = COST_ALLOCATION_TAGS
) -> dict[str, str]:
    """Activate RECC's tag keys as cost allocation tags; returns key -> ``"Active"`` or the error.

    AWS only knows a tag key once a tagged resource has been billed (up to a day after the
    first cluster), so an error for a key can simply mean: try again tomorrow.
    """
    if ce_client is None:
        from recc.aws import client

        ce_client = client("ce", region="us-east-1")
    try:
        answer = ce_client.update_cost_allocation_tags_status(
            CostAllocationTagsStatus=[{"TagKey": k, "Status": "Active"} for k in keys]
        )
    except (BotoCoreError, ClientError) as e:
        raise _aws_error("activating cost allocation tags", e) from e
    result = dict.fromkeys(keys, "Active")
    for error in answer.get("Errors", []):
        result[error["TagKey"]] = (
            f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
        )
    return result
