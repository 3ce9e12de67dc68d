"""Budgets on RECC's tags, created and updated on moto and read back through boto3, through the
library and through ``recc budget``; cost allocation tag activation (botocore Stubber: moto has
no UpdateCostAllocationTagsStatus)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import dask.config
import pytest
import typer
from botocore.stub import Stubber
from helpers import offline_client
from moto import mock_aws
from moto.budgets.exceptions import NotFoundException
from moto.budgets.models import budgets_backends
from moto.budgets.responses import BudgetsResponse
from moto.core import DEFAULT_ACCOUNT_ID as ACCOUNT
from typer.testing import CliRunner

from recc import budgets
from recc.budgets import BudgetRequest, activate_tags, list_budgets, set_budget
from recc.cli import budget as budget_cli
from recc.errors import BackendError, SpecError


def _update_budget(self: BudgetsResponse) -> str:
    """UpdateBudget, which moto lacks: replace the budget's definition, keep its notifications
    (what AWS does)."""
    account, new = self._get_param("AccountId"), self._get_param("NewBudget")
    stored = self.backend.budgets[account].get(new["BudgetName"])
    if stored is None:
        raise NotFoundException(f"Unable to update budget: {new['BudgetName']}")
    stored.budget = {**stored.budget, **new}
    return json.dumps({})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, fake_aws_credentials: None) -> Iterator[None]:
    """moto for every AWS call, with fake credentials and no EKS platform configured."""
    monkeypatch.setattr(BudgetsResponse, "update_budget", _update_budget, raising=False)
    with mock_aws(), dask.config.set({"recc.eks.cluster-name": None, "recc.eks.profile": None}):
        yield


def client() -> boto3.client:
    return boto3.client("budgets", region_name="us-east-1")


def notifications_of(name: str) -> list[dict]:
    answer = client().describe_notifications_for_budget(AccountId=ACCOUNT, BudgetName=name)
    return sorted(answer["Notifications"], key=lambda n: n["Threshold"])


def subscribers_of(name: str) -> list[list[str]]:
    # moto does not implement DescribeSubscribersForNotification: read its store instead.
    stored = budgets_backends[ACCOUNT]["aws"].budgets[ACCOUNT][name]
    return [sorted(s["Address"] for s in n.subscribers) for n in stored.notifications]


ALICE = BudgetRequest("user", "alice", 200, alert_at=(80, 100), emails=("alice@example.org",))


# --- pure parts ------------------------------------------------------------------------------


def test_budget_document_filters_on_recc_tag() -> None:
    document = budgets.budget_document(ALICE, prefix="")
    assert document == {
        "BudgetName": "recc-user-alice",
        "BudgetLimit": {"Amount": "200.00", "Unit": "USD"},
        "CostFilters": {"TagKeyValue": ["user:recc:user$alice"]},
        "TimeUnit": "MONTHLY",
        "BudgetType": "COST",
    }
    ns = BudgetRequest("namespace", "team-a", 50.5, emails=("x@example.org",))
    assert budgets.budget_document(ns, prefix="research-")["BudgetName"] == (
        "research-recc-namespace-team-a"
    )
    assert budgets.tag_filter("namespace", "team-a") == "user:recc:namespace$team-a"


def test_budget_name_avoids_forbidden_characters() -> None:
    assert budgets.budget_name("user", "dom\\ain:bob", prefix="") == "recc-user-dom_ain_bob"


def test_notifications_one_per_threshold() -> None:
    request = BudgetRequest(
        "user", "a", 10, alert_at=(100, 50, 100), forecasted=True, emails=("a@x.org", "b@x.org")
    )
    made = budgets.notifications(request)
    assert [n["Notification"]["Threshold"] for n in made] == [50.0, 100.0]
    assert {n["Notification"]["NotificationType"] for n in made} == {"FORECASTED"}
    assert made[0]["Subscribers"] == [
        {"SubscriptionType": "EMAIL", "Address": "a@x.org"},
        {"SubscriptionType": "EMAIL", "Address": "b@x.org"},
    ]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scope": "job"}, "scope"),
        ({"value": " "}, "user"),
        ({"monthly_usd": 0}, "monthly-usd"),
        ({"monthly_usd": float("nan")}, "monthly-usd"),
        ({"alert_at": ()}, "alert-at"),
        ({"alert_at": (10, 20, 30, 40, 50, 60)}, "alert-at"),
        ({"alert_at": (0,)}, "alert-at"),
        ({"alert_at": (1001,)}, "alert-at"),
        ({"emails": ()}, "email"),
        ({"emails": ("not-an-address",)}, "email"),
        ({"emails": ("a@x.org\n",)}, "email"),
        ({"monthly_usd": float("inf")}, "monthly-usd"),
        ({"emails": tuple(f"u{i}@x.org" for i in range(11))}, "email"),
    ],
)
def test_bad_requests_name_the_field(changes: dict, field: str) -> None:
    values = {
        "scope": "user",
        "value": "alice",
        "monthly_usd": 100,
        "alert_at": (80,),
        "emails": ("a@x.org",),
        **changes,
    }
    with pytest.raises(SpecError) as info:
        BudgetRequest(**values)
    assert info.value.field == field and "for example" in str(info.value)


# --- against moto ----------------------------------------------------------------------------


def test_create_then_update(aws: None) -> None:
    assert set_budget(ALICE) == "created"
    budget = client().describe_budget(AccountId=ACCOUNT, BudgetName="recc-user-alice")["Budget"]
    assert budget["BudgetLimit"] == {"Amount": "200.00", "Unit": "USD"}
    assert budget["CostFilters"] == {"TagKeyValue": ["user:recc:user$alice"]}
    assert (budget["TimeUnit"], budget["BudgetType"]) == ("MONTHLY", "COST")
    assert [
        (n["NotificationType"], n["Threshold"], n["ComparisonOperator"], n["ThresholdType"])
        for n in notifications_of("recc-user-alice")
    ] == [
        ("ACTUAL", 80.0, "GREATER_THAN", "PERCENTAGE"),
        ("ACTUAL", 100.0, "GREATER_THAN", "PERCENTAGE"),
    ]
    assert subscribers_of("recc-user-alice") == [["alice@example.org"]] * 2

    again = BudgetRequest(
        "user", "alice", 350, alert_at=(90,), forecasted=True, emails=("a@x.org", "lead@x.org")
    )
    assert set_budget(again) == "updated"
    budget = client().describe_budget(AccountId=ACCOUNT, BudgetName="recc-user-alice")["Budget"]
    assert budget["BudgetLimit"]["Amount"] == "350.00"
    assert [
        (n["NotificationType"], n["Threshold"]) for n in notifications_of("recc-user-alice")
    ] == [("FORECASTED", 90.0)]
    assert subscribers_of("recc-user-alice") == [["a@x.org", "lead@x.org"]]
    assert len(client().describe_budgets(AccountId=ACCOUNT)["Budgets"]) == 1


def test_name_follows_the_platform(aws: None) -> None:
    with dask.config.set({"recc.eks.cluster-name": "research"}):
        set_budget(BudgetRequest("namespace", "team-a", 75, emails=("t@x.org",)))
    names = [b["BudgetName"] for b in client().describe_budgets(AccountId=ACCOUNT)["Budgets"]]
    assert names == ["research-recc-namespace-team-a"]


def test_list_shows_recc_budgets_only(aws: None) -> None:
    set_budget(ALICE)
    set_budget(BudgetRequest("namespace", "team-a", 75, emails=("t@x.org",)))
    # What Terraform makes (the whole-platform budget) is listed too; other budgets are not.
    for name, tag_filter in (
        ("research-recc-clusters", "user:recc:managed-by$recc"),
        ("marketing", "user:department$marketing"),
    ):
        client().create_budget(
            AccountId=ACCOUNT,
            Budget={
                "BudgetName": name,
                "BudgetLimit": {"Amount": "1000", "Unit": "USD"},
                "CostFilters": {"TagKeyValue": [tag_filter]},
                "TimeUnit": "MONTHLY",
                "BudgetType": "COST",
            },
        )
    client().create_budget(
        AccountId=ACCOUNT,
        Budget={
            "BudgetName": "no-filter",
            "BudgetLimit": {"Amount": "5", "Unit": "USD"},
            "TimeUnit": "MONTHLY",
            "BudgetType": "COST",
        },
    )
    found = list_budgets()
    assert [(b.name, b.scope, b.value, b.monthly_usd) for b in found] == [
        ("recc-namespace-team-a", "namespace", "team-a", 75.0),
        ("recc-user-alice", "user", "alice", 200.0),
        ("research-recc-clusters", "managed-by", "recc", 1000.0),
    ]
    assert found[1].notifications == ("actual > 80%", "actual > 100%")
    assert found[1].actual_usd == 0.0


def test_aws_failure_is_a_backend_error(aws: None) -> None:
    stub_client = boto3.client("budgets", region_name="us-east-1")
    with Stubber(stub_client) as stub:
        stub.add_client_error("describe_budget", "AccessDeniedException", "not allowed")
        with pytest.raises(BackendError, match="setting budget 'recc-user-alice'.*not allowed"):
            set_budget(ALICE, budgets_client=stub_client, account_id=ACCOUNT)


def test_activate_tags_sends_recc_keys_and_reports_errors() -> None:
    ce = offline_client("ce")
    expected = {
        "CostAllocationTagsStatus": [
            {"TagKey": k, "Status": "Active"}
            for k in ("recc:cluster", "recc:user", "recc:namespace", "recc:job")
        ]
    }
    with Stubber(ce) as stub:
        stub.add_response("update_cost_allocation_tags_status", {"Errors": []}, expected)
        assert set(activate_tags(ce).values()) == {"Active"}
        stub.add_response(
            "update_cost_allocation_tags_status",
            {"Errors": [{"TagKey": "recc:job", "Code": "TagKeysNotFound", "Message": "unknown"}]},
            expected,
        )
        result = activate_tags(ce)
        stub.add_client_error("update_cost_allocation_tags_status", "AccessDeniedException")
        with pytest.raises(BackendError, match="activating cost allocation tags"):
            activate_tags(ce)
        stub.assert_no_pending_responses()
    assert result["recc:job"] == "TagKeysNotFound: unknown"
    assert result["recc:user"] == "Active"


# --- recc budget -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(budget_cli.app, name="budget")
    app.command("noop", hidden=True)(lambda: None)  # keeps "budget" a sub-command
    return app


def test_cli_set_and_ls(aws: None, cli: typer.Typer) -> None:
    runner = CliRunner()
    args = ["budget", "set", "--user", "bob", "--monthly-usd", "120", "--alert-at", "50"]
    done = runner.invoke(cli, [*args, "--alert-at", "100", "--email", "bob@example.org"])
    assert done.exit_code == 0, done.output
    assert "Created budget recc-user-bob: $120.00/month on recc:user=bob" in done.output
    assert "actual spend passes 50%, 100% -> bob@example.org" in done.output
    assert [n["Threshold"] for n in notifications_of("recc-user-bob")] == [50.0, 100.0]

    done = runner.invoke(
        cli, [*args, "--forecasted", "--email", "bob@example.org", "--monthly-usd", "150"]
    )
    assert done.exit_code == 0 and done.output.startswith("Updated budget"), done.output

    listed = runner.invoke(cli, ["budget", "ls", "--json"])
    assert listed.exit_code == 0, listed.output
    [only] = json.loads(listed.output)
    assert (only["name"], only["monthly_usd"], only["notifications"]) == (
        "recc-user-bob",
        150.0,
        ["forecasted > 50%"],
    )
    table = runner.invoke(cli, ["budget", "ls"])
    assert "recc-user-bob" in table.output and "recc:user=bob" in table.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--monthly-usd", "10", "--email", "a@x.org"], "exactly one of --user or --namespace"),
        (
            ["--user", "a", "--namespace", "b", "--monthly-usd", "10", "--email", "a@x.org"],
            "exactly one of --user or --namespace",
        ),
        (["--user", "a", "--monthly-usd", "-5", "--email", "a@x.org"], "monthly-usd=-5.0"),
        (["--user", "a", "--monthly-usd", "5", "--email", "nobody"], "email='nobody'"),
    ],
)
def test_cli_rejects_bad_input_before_calling_aws(
    aws: None, cli: typer.Typer, args: list[str], message: str
) -> None:
    done = CliRunner().invoke(cli, ["budget", "set", *args])
    assert done.exit_code == 2
    assert message in done.output
    assert client().describe_budgets(AccountId=ACCOUNT).get("Budgets", []) == []


def test_cli_ls_empty(aws: None, cli: typer.Typer) -> None:
    done = CliRunner().invoke(cli, ["budget", "ls"])
    assert done.exit_code == 0 and "No budgets on RECC's tags" in done.output


def test_cli_activate_tags(monkeypatch: pytest.MonkeyPatch, cli: typer.Typer) -> None:
    ce = offline_client("ce")
    monkeypatch.setattr("recc.aws.client", lambda service, **kw: ce if service == "ce" else None)
    with Stubber(ce) as stub:
        stub.add_response("update_cost_allocation_tags_status", {"Errors": []})
        stub.add_response(
            "update_cost_allocation_tags_status",
            {"Errors": [{"TagKey": "recc:job", "Code": "TagKeysNotFound", "Message": "unknown"}]},
        )
        done = CliRunner().invoke(cli, ["budget", "activate-tags", "--json"])
        assert done.exit_code == 0, done.output
        assert json.loads(done.output)["recc:namespace"] == "Active"
        done = CliRunner().invoke(cli, ["budget", "activate-tags"])
        assert done.exit_code == 1
        assert "TagKeysNotFound" in done.output and "try again then" in done.output
