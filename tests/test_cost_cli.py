"""``recc cost``: a ledger with hand-computed totals, grouped every way and clipped to windows;
Cost Explorer's actuals beside them (moto's queued results; Stubber to pin the request), and a
one-line note instead of a failure when Cost Explorer cannot answer."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import dask.config
import pytest
import requests
import typer
from botocore.stub import Stubber
from helpers import offline_client
from moto import mock_aws
from typer.testing import CliRunner

from recc.cli import cost as cost_cli
from recc.errors import BackendError, SpecError
from recc.ledger import Ledger, StartRecord
from recc.spend import (
    actual_spend,
    month_start,
    parse_when,
    spend_report,
    whole_days,
)

UTC = dt.timezone.utc
SINCE = dt.datetime(2026, 11, 1, tzinfo=UTC)
UNTIL = dt.datetime(2026, 11, 8, tzinfo=UTC)
NOW = dt.datetime(2026, 11, 10, tzinfo=UTC)
TEAMS = {"alice": "ml", "bob": "ml", "carol": "bio"}


def at(day: int, hour: float = 0, month: int = 11) -> dt.datetime:
    return dt.datetime(2026, month, day, tzinfo=UTC) + dt.timedelta(hours=hour)


# cluster, user, job, $/h, start, end (None: running), how. Hours inside [SINCE, UNTIL):
LIVES = [
    ("a1", "alice", "sim", 2.0, at(31, 22, month=10), at(1, 4), "closed"),  # 4 h -> 8
    ("a2", "alice", "agg", 1.0, at(2, 10), at(2, 13.5), "reaped"),  # 3.5 h -> 3.5
    ("b1", "bob", "sim", 4.0, at(7, 20), at(8, 2), "down"),  # 4 h -> 16
    ("c1", "carol", None, 0.5, at(5), None, None),  # running: 72 h -> 36
    ("d1", "dave", "old", 10.0, at(1, month=10), at(2, month=10), "closed"),  # before: out
    ("e1", "alice", "later", 3.0, at(9), None, None),  # after: out
]
EXPECTED = {
    "user": {"alice": 11.5, "bob": 16.0, "carol": 36.0},
    "team": {"ml": 27.5, "bio": 36.0},
    "job": {"sim": 24.0, "agg": 3.5, "none": 36.0},
    "cluster": {"a1": 8.0, "a2": 3.5, "b1": 16.0, "c1": 36.0},
    "namespace": {"ns-a1": 8.0, "ns-a2": 3.5, "ns-b1": 16.0, "ns-c1": 36.0},
}


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    led = Ledger(str(tmp_path_factory.mktemp("ledger")))
    for cluster, user, job, usd, start, end, how in LIVES:
        led.record_start(
            StartRecord(cluster, user, f"ns-{cluster}", job, "eks", start, usd, 2, ("c5.xlarge",))
        )
        if end is not None:
            led.record_end(cluster, end, how)
            led.record_end(cluster, end + dt.timedelta(hours=5), "reaped")  # ignored
    return led


@pytest.mark.parametrize("by", list(EXPECTED))
def test_estimates_by_every_grouping(ledger: Ledger, by: str) -> None:
    report = spend_report(by, SINCE, UNTIL, NOW, actual=False, ledger=ledger, teams=TEAMS)
    got = {r.key: round(r.estimated_usd, 6) for r in report.rows}
    assert got == EXPECTED[by]
    assert report.estimated_total == pytest.approx(63.5)
    assert [r.estimated_usd for r in report.rows] == sorted(
        (r.estimated_usd for r in report.rows), reverse=True
    )
    assert report.actual is None and report.actual_note.startswith("not queried")


def test_counts_and_hours(ledger: Ledger) -> None:
    report = spend_report("user", SINCE, UNTIL, NOW, actual=False, ledger=ledger, teams=TEAMS)
    rows = {r.key: r for r in report.rows}
    assert (rows["alice"].clusters, rows["alice"].running, rows["alice"].hours) == (2, 0, 7.5)
    assert (rows["carol"].clusters, rows["carol"].running, rows["carol"].hours) == (1, 1, 72.0)


def test_narrow_window_clips_each_life(ledger: Ledger) -> None:
    report = spend_report(
        "cluster", at(1, 2), at(2, 12), NOW, actual=False, ledger=ledger, teams=TEAMS
    )
    assert {r.key: r.estimated_usd for r in report.rows} == {"a1": 4.0, "a2": 2.0}


def test_window_up_to_now_counts_running_lives_to_now(ledger: Ledger) -> None:
    report = spend_report("cluster", SINCE, NOW, NOW, actual=False, ledger=ledger, teams=TEAMS)
    got = {r.key: r.estimated_usd for r in report.rows}
    assert got["c1"] == 0.5 * 120 and got["e1"] == 3.0 * 24


def test_team_grouping_without_membership(ledger: Ledger) -> None:
    report = spend_report("team", SINCE, UNTIL, NOW, actual=False, ledger=ledger, teams={})
    assert {r.key for r in report.rows} == {"(no team)"}


def test_bad_grouping_and_window(ledger: Ledger) -> None:
    with pytest.raises(SpecError, match="--by='owner'.*user, team, namespace, job, cluster"):
        spend_report("owner", SINCE, UNTIL, NOW, ledger=ledger)
    with pytest.raises(SpecError, match="--until.*must be after --since"):
        spend_report("user", UNTIL, SINCE, NOW, ledger=ledger)


def test_parse_when() -> None:
    now = dt.datetime(2026, 11, 22, 10, 30, tzinfo=UTC)
    assert parse_when("2026-11-01", now) == SINCE
    assert parse_when("2026-11-01T09:00:00Z", now) == at(1, 9)
    assert parse_when("2026-11-01T10:00:00+01:00", now) == at(1, 9)
    assert parse_when("7d", now) == now - dt.timedelta(days=7)
    assert parse_when("12h", now) == now - dt.timedelta(hours=12)
    assert parse_when("today", now) == dt.datetime(2026, 11, 22, tzinfo=UTC)
    assert parse_when("now", now) == now
    with pytest.raises(SpecError, match="--until='yesterday-ish'"):
        parse_when("yesterday-ish", now, "--until")
    assert month_start(now) == dt.datetime(2026, 11, 1, tzinfo=UTC)


def test_whole_days_for_cost_explorer() -> None:
    today = dt.date(2026, 11, 22)
    assert whole_days(SINCE, UNTIL, today) == (dt.date(2026, 11, 1), dt.date(2026, 11, 8))
    assert whole_days(at(1, 5), at(3, 1), today) == (dt.date(2026, 11, 1), dt.date(2026, 11, 4))
    assert whole_days(at(20), at(30), today) == (dt.date(2026, 11, 20), dt.date(2026, 11, 23))
    assert whole_days(at(22, 3), at(22, 4), today) == (dt.date(2026, 11, 22), dt.date(2026, 11, 23))


# --- Cost Explorer ---------------------------------------------------------------------------


def ce_result(tag: str, amounts: dict[str, float], token: str | None = None) -> dict:
    result = {
        "ResultsByTime": [
            {
                "TimePeriod": {"Start": "2026-11-01", "End": "2026-11-08"},
                "Total": {},
                "Groups": [
                    {
                        "Keys": [f"{tag}${value}"],
                        "Metrics": {"UnblendedCost": {"Amount": str(usd), "Unit": "USD"}},
                    }
                    for value, usd in amounts.items()
                ],
                "Estimated": True,
            }
        ],
        "DimensionValueAttributes": [],
    }
    if token:
        result["NextPageToken"] = token
    return result


@pytest.fixture
def aws(fake_aws_credentials: None) -> Iterator[None]:
    with mock_aws(), dask.config.set({"recc.eks.profile": None, "recc.eks.region": "eu-west-1"}):
        yield


def queue_ce(*results: dict) -> None:
    answer = requests.post(
        "http://motoapi.amazonaws.com/moto-api/static/ce/cost-and-usage-results",
        json={"results": list(results)},
        timeout=10,
    )
    assert answer.status_code == 201


def test_actuals_beside_estimates_on_moto(aws: None, ledger: Ledger) -> None:
    queue_ce(ce_result("recc:user", {"alice": 12.01, "bob": 15.5, "": 1.25}))
    report = spend_report("user", SINCE, UNTIL, NOW, actual=True, ledger=ledger, teams=TEAMS)
    rows = {r.key: (round(r.estimated_usd, 2), r.actual_usd) for r in report.rows}
    assert rows == {
        "alice": (11.5, 12.01),
        "bob": (16.0, 15.5),
        "carol": (36.0, 0.0),
        "(untagged)": (0.0, 1.25),
    }
    assert report.actual_total == pytest.approx(28.76)
    assert report.actual is not None and report.actual.provisional
    assert (report.actual.start, report.actual.end) == (dt.date(2026, 11, 1), dt.date(2026, 11, 8))


def test_actual_by_team_sums_members(aws: None) -> None:
    queue_ce(ce_result("recc:user", {"alice": 1.0, "bob": 2.0, "carol": 4.0, "zed": 8.0}))
    got = actual_spend("team", dt.date(2026, 11, 1), dt.date(2026, 11, 8), teams=TEAMS)
    assert got.by_key == {"ml": 3.0, "bio": 4.0, "(no team)": 8.0}


def test_actual_request_and_pagination() -> None:
    ce = offline_client("ce")
    request = {
        "TimePeriod": {"Start": "2026-11-01", "End": "2026-11-08"},
        "Granularity": "MONTHLY",
        "Metrics": ["UnblendedCost"],
        "GroupBy": [{"Type": "TAG", "Key": "recc:job"}],
        "Filter": {"Tags": {"Key": "recc:managed-by", "Values": ["recc"]}},
    }
    with Stubber(ce) as stub:
        stub.add_response("get_cost_and_usage", ce_result("recc:job", {"sim": 2.5}, "p2"), request)
        stub.add_response(
            "get_cost_and_usage",
            ce_result("recc:job", {"sim": 1.5, "agg": 1.0}),
            {**request, "NextPageToken": "p2"},
        )
        got = actual_spend("job", dt.date(2026, 11, 1), dt.date(2026, 11, 8), ce)
        stub.assert_no_pending_responses()
    assert got.by_key == {"sim": 4.0, "agg": 1.0}


def test_no_credentials_is_a_note_not_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ledger: Ledger
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask an instance for roles
    with dask.config.set({"recc.eks.cluster-name": "research", "recc.eks.profile": None}):
        report = spend_report("user", SINCE, UNTIL, NOW, ledger=ledger, teams=TEAMS)
    assert report.actual is None
    assert report.actual_note.startswith("unavailable: Cost Explorer is unavailable")
    assert "credentials" in report.actual_note
    assert report.estimated_total == pytest.approx(63.5)


def test_access_denied_is_a_backend_error() -> None:
    ce = offline_client("ce")
    with Stubber(ce) as stub:
        stub.add_client_error("get_cost_and_usage", "AccessDeniedException", "no ce:Get*")
        with pytest.raises(BackendError, match="no ce:Get"):
            actual_spend("user", dt.date(2026, 11, 1), dt.date(2026, 11, 2), ce)


# --- the command -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    app = typer.Typer()
    cost_cli.register(app)
    app.command("noop", hidden=True)(lambda: None)  # keeps "cost" a sub-command
    return app


@pytest.fixture
def configured(ledger: Ledger) -> Iterator[None]:
    settings = {
        "recc.cost.ledger-url": ledger.url,
        "recc.quotas.teams": TEAMS,
        "recc.eks.cluster-name": None,
    }
    with dask.config.set(settings):
        yield


WINDOW = ["--since", "2026-11-01", "--until", "2026-11-08"]


def test_cli_json(configured: None, cli: typer.Typer) -> None:
    done = CliRunner().invoke(cli, ["cost", "--by", "job", *WINDOW, "--json"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert {row["job"]: row["estimated_usd"] for row in data["rows"]} == EXPECTED["job"]
    assert data["estimated_total_usd"] == 63.5 and data["estimate"] is True
    assert data["actual"] is None and data["actual_note"].startswith("not queried")
    assert data["since"] == "2026-11-01T00:00:00+00:00"


def test_cli_table(configured: None, cli: typer.Typer) -> None:
    done = CliRunner().invoke(cli, ["cost", "--by", "team", *WINDOW], env={"COLUMNS": "160"})
    assert done.exit_code == 0, done.output
    out = done.output
    assert "Spend by team, 2026-11-01 00:00Z to 2026-11-08 00:00Z" in out
    assert "~$36.00" in out and "~$27.50" in out and "~$63.50" in out
    assert "estimated: the plan's $/h x hours inside the window" in out
    assert "actual: not queried" in out


def test_cli_table_with_actuals(configured: None, aws: None, cli: typer.Typer) -> None:
    queue_ce(ce_result("recc:user", {"alice": 12.01, "bob": 15.5}))
    done = CliRunner().invoke(cli, ["cost", *WINDOW, "--actual"], env={"COLUMNS": "160"})
    assert done.exit_code == 0, done.output
    assert "$12.01" in done.output and "$27.51" in done.output
    assert "actual: Cost Explorer, unblended cost" in done.output
    assert "whole days 2026-11-01 to 2026-11-07; recent days are provisional" in done.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "owner"], "--by='owner'"),
        (["--since", "last tuesday"], "--since='last tuesday'"),
        (["--since", "2026-11-08", "--until", "2026-11-01"], "must be after --since"),
    ],
)
def test_cli_bad_input(configured: None, cli: typer.Typer, args: list[str], message: str) -> None:
    done = CliRunner().invoke(cli, ["cost", *args])
    assert done.exit_code == 2 and message in done.output


def test_cli_empty_ledger(tmp_path: Path, cli: typer.Typer) -> None:
    with dask.config.set({"recc.cost.ledger-url": str(tmp_path / "fresh")}):
        done = CliRunner().invoke(cli, ["cost", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["rows"] == []
