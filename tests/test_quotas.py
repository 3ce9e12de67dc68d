"""Quotas: the pure check against every limit, per user and per team, with messages that show
use, limit and what would fit; limits read from config; the n_workers hint from real plans."""

from __future__ import annotations

import os
from pathlib import Path

import dask.config
import pytest

from recc.catalog import bundled_catalog
from recc.cost import estimate_cost
from recc.errors import ConfigError, QuotaExceeded
from recc.plan import plan_cluster
from recc.pricing import PriceBook
from recc.quotas import (
    QuotaLimits,
    UsageRecord,
    check_quota,
    fit_n_workers,
    limits_from_config,
    plan_vcpus,
)
from recc.spec import resolve_spec

TEAMS = {"alice": "ml", "bob": "ml", "carol": "bio"}
RUNNING = [
    UsageRecord("a1", "alice", 32, 1.5),
    UsageRecord("a2", "alice", 16, 0.75),
    UsageRecord("b1", "bob", 8, 0.5),
    UsageRecord("c1", "carol", 64, 3.0),
]


def refused(limits: QuotaLimits, vcpus: float = 4, usd: float = 0.25, user: str = "alice") -> str:
    team = limits.team_of(user)
    with pytest.raises(QuotaExceeded) as info:
        check_quota(user, team, vcpus, usd, RUNNING, limits)
    return str(info.value)


def test_no_limits_allows_anything() -> None:
    check_quota("alice", "ml", 10_000, 1_000.0, RUNNING, QuotaLimits(teams=TEAMS))


@pytest.mark.parametrize(
    "limits",
    [
        QuotaLimits(max_clusters_per_user=3),
        QuotaLimits(max_vcpus_per_user=52),
        QuotaLimits(max_usd_per_hour_per_user=2.5),
        QuotaLimits(max_clusters_per_team=4, teams=TEAMS),
        QuotaLimits(max_vcpus_per_team=60, teams=TEAMS),
        QuotaLimits(max_usd_per_hour_per_team=3.0, teams=TEAMS),
    ],
)
def test_exactly_at_the_limit_is_allowed(limits: QuotaLimits) -> None:
    # alice: 2 clusters, 48 vCPUs, $2.25/h; team ml adds bob: 3 clusters, 56 vCPUs, $2.75/h.
    check_quota("alice", limits.team_of("alice"), 4, 0.25, RUNNING, limits)


def test_max_clusters_per_user() -> None:
    message = refused(QuotaLimits(max_clusters_per_user=2))
    assert message == (
        "max-clusters-per-user=2: alice runs 2 clusters (a1, a2); stop one first (recc down NAME)"
    )


def test_max_vcpus_per_user_shows_use_need_and_room() -> None:
    message = refused(QuotaLimits(max_vcpus_per_user=64), vcpus=28)
    assert message == (
        "max-vcpus-per-user=64: alice uses 48 vCPUs in 2 clusters (a1, a2); this cluster needs "
        "28; at most 16 more would fit"
    )


def test_max_usd_per_hour_per_user() -> None:
    message = refused(QuotaLimits(max_usd_per_hour_per_user=3), usd=1.29)
    assert message == (
        "max-usd-per-hour-per-user=3: alice uses $2.25/h in 2 clusters (a1, a2); this cluster "
        "needs $1.29/h; at most $0.75/h more would fit"
    )


def test_already_over_the_limit_says_none_would_fit() -> None:
    message = refused(QuotaLimits(max_vcpus_per_user=40), vcpus=1)
    assert message.endswith("this cluster needs 1; none would fit")


def test_first_cluster_of_a_user() -> None:
    message = refused(QuotaLimits(max_vcpus_per_user=8), vcpus=16, user="dave")
    assert message == (
        "max-vcpus-per-user=8: dave uses 0 vCPUs in 0 clusters; this cluster needs 16; "
        "at most 8 more would fit"
    )
    with pytest.raises(QuotaExceeded, match="max-clusters-per-user=0: dave runs 0 clusters;"):
        check_quota("dave", None, 1, 0.1, [], QuotaLimits(max_clusters_per_user=0))


def test_team_limits_count_every_member() -> None:
    message = refused(QuotaLimits(max_vcpus_per_team=60, teams=TEAMS), vcpus=8)
    assert message == (
        "max-vcpus-per-team=60: team ml (alice, bob) uses 56 vCPUs in 3 clusters (a1, a2, b1); "
        "this cluster needs 8; at most 4 more would fit"
    )
    assert refused(QuotaLimits(max_clusters_per_team=3, teams=TEAMS)).startswith(
        "max-clusters-per-team=3: team ml (alice, bob) runs 3 clusters (a1, a2, b1)"
    )
    usd = refused(QuotaLimits(max_usd_per_hour_per_team=3, teams=TEAMS), usd=0.5)
    assert "team ml (alice, bob) uses $2.75/h" in usd and "at most $0.25/h more" in usd


def test_other_teams_do_not_count() -> None:
    limits = QuotaLimits(max_vcpus_per_team=64, teams=TEAMS)
    check_quota("carol", "bio", 0, 0.0, RUNNING, limits)  # carol's 64 are her own team's
    check_quota("alice", "ml", 8, 0.5, RUNNING, limits)  # 56 + 8: carol's 64 do not count
    message = refused(limits, vcpus=1, user="carol")
    assert "team bio (carol) uses 64 vCPUs in 1 cluster (c1)" in message


def test_user_without_a_team_skips_team_limits() -> None:
    limits = QuotaLimits(max_clusters_per_team=0, teams=TEAMS)
    check_quota("dave", limits.team_of("dave"), 1, 0.1, RUNNING, limits)


def test_every_broken_limit_is_reported() -> None:
    limits = QuotaLimits(
        max_clusters_per_user=2, max_vcpus_per_user=50, max_usd_per_hour_per_team=2, teams=TEAMS
    )
    message = refused(limits, vcpus=4)
    assert message.count("; stop one first") == 1
    for key in ("max-clusters-per-user=2", "max-vcpus-per-user=50", "max-usd-per-hour-per-team=2"):
        assert key in message


def test_fit_hint_gets_the_tighter_room() -> None:
    seen = []

    def fit(vcpu_room: float, usd_room: float) -> int:
        seen.append((vcpu_room, usd_room))
        return 3

    limits = QuotaLimits(max_vcpus_per_user=64, max_usd_per_hour_per_team=4, teams=TEAMS)
    with pytest.raises(QuotaExceeded, match=r"at most 16 more would fit \(e.g. n_workers=3\)$"):
        check_quota("alice", "ml", 28, 0.5, RUNNING, limits, fit=fit)
    assert seen == [(16, 1.25)]


def test_fit_hint_is_not_asked_when_nothing_fits() -> None:
    def fit(vcpu_room: float, usd_room: float) -> int:
        raise AssertionError("no room: no hint")

    for limits in (QuotaLimits(max_vcpus_per_user=48), QuotaLimits(max_clusters_per_user=1)):
        with pytest.raises(QuotaExceeded):
            check_quota("alice", None, 4, 0.1, RUNNING, limits, fit=fit)


def test_limits_from_config() -> None:
    settings = {
        "recc.quotas.max-clusters-per-user": 3,
        "recc.quotas.max-vcpus-per-team": "128",
        "recc.quotas.max-usd-per-hour-per-user": 7.5,
        "recc.quotas.teams": {"alice": "ml"},
    }
    with dask.config.set(settings):
        limits = limits_from_config()
    assert limits == QuotaLimits(
        max_clusters_per_user=3,
        max_vcpus_per_team=128.0,
        max_usd_per_hour_per_user=7.5,
        teams={"alice": "ml"},
    )
    assert limits_from_config() == QuotaLimits()  # packaged defaults: no limits


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max-vcpus-per-user", -1),
        ("max-clusters-per-team", "lots"),
        ("max-usd-per-hour-per-team", True),
        ("teams", ["alice", "ml"]),
    ],
)
def test_bad_config_names_the_key(key: str, value: object) -> None:
    with dask.config.set({f"recc.quotas.{key}": value}):
        with pytest.raises(ConfigError, match=f"recc.quotas.{key}=.*for example"):
            limits_from_config()


# --- the n_workers hint, from real plans and the bundled price table -------------------------


@pytest.fixture(scope="module")
def prices() -> PriceBook:
    return PriceBook(cache_file=Path(os.devnull))


def test_plan_vcpus_counts_instances() -> None:
    catalog = bundled_catalog()
    plan = plan_cluster(resolve_spec(n_workers=20), catalog)
    assert plan_vcpus(plan, catalog) == plan.instances * 4  # c5.xlarge: 4 vCPUs


def test_fit_n_workers_finds_the_largest_that_fits(prices: PriceBook) -> None:
    catalog = bundled_catalog()
    spec = resolve_spec(n_workers=20)
    hint = fit_n_workers(spec, catalog, prices)
    # 3 workers per c5.xlarge node, the scheduler shares the last one when it has room.
    for n in (1, 5, 9, 19):
        plan = plan_cluster(spec.replace(n_workers=n), catalog)
        room = plan_vcpus(plan, catalog)
        fitted = hint(room, 1_000)
        assert fitted is not None and n <= fitted <= spec.n_workers
        if fitted == spec.n_workers:
            continue
        bigger = plan_cluster(spec.replace(n_workers=fitted + 1), catalog)
        assert plan_vcpus(bigger, catalog) > room
    usd_of_one = estimate_cost(plan_cluster(spec.replace(n_workers=1), catalog), prices)
    assert hint(1_000, usd_of_one.usd_per_hour - 0.01) is None


def test_quota_message_with_real_hint(prices: PriceBook) -> None:
    catalog = bundled_catalog()
    spec = resolve_spec(n_workers=20)
    plan = plan_cluster(spec, catalog)
    need = plan_vcpus(plan, catalog)
    limits = QuotaLimits(max_vcpus_per_user=64)
    with pytest.raises(QuotaExceeded) as info:
        check_quota(
            "alice",
            None,
            need,
            estimate_cost(plan, prices).usd_per_hour,
            RUNNING,
            limits,
            fit=fit_n_workers(spec, catalog, prices),
        )
    suggested = int(str(info.value).rsplit("n_workers=", 1)[1].rstrip(")"))
    smaller = plan_cluster(spec.replace(n_workers=suggested), catalog)
    assert (
        plan_vcpus(smaller, catalog)
        <= 16
        < plan_vcpus(plan_cluster(spec.replace(n_workers=suggested + 1), catalog), catalog)
    )
