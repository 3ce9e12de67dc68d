"""Quotas per user and per team: clusters, vCPUs and $/h, checked before anything is created.

Limits live in config (``recc.quotas.*``; null means no limit), team membership in
``recc.quotas.teams`` (user -> team). :func:`check_quota` is pure: the caller hands it what is
running now, so the same check serves the local backend, EKS and tests.

Example
-------
>>> limits = QuotaLimits(max_vcpus_per_user=64)
>>> running = [UsageRecord("a", "alice", 32, 1.0), UsageRecord("b", "alice", 16, 0.6)]
>>> check_quota("alice", None, 28, 1.2, running, limits)
Traceback (most recent call last):
...
recc.errors.QuotaExceeded: max-vcpus-per-user=64: alice uses 48 vCPUs in 2 clusters (a, b); \
this cluster needs 28; at most 16 more would fit
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recc import config
from recc.catalog import Catalog
from recc.cost import estimate_cost
from recc.errors import ConfigError, PlanError, QuotaExceeded
from recc.plan import NodePlan, plan_cluster
from recc.pricing import PriceBook
from recc.spec import ClusterSpec
from recc.spend import format_usd

# (vCPUs room, $/h room) -> the largest n_workers that fits both, or None if none does.
FitHint = Callable[[float, float], "int | None"]


@dataclass(frozen=True)
class UsageRecord:
    """What one running cluster uses, as counted against quotas."""

    cluster: str
    user: str
    vcpus: float
    usd_per_hour: float


@dataclass(frozen=True)
class QuotaLimits:
    """Limits per user and per team; None means unlimited."""

    max_clusters_per_user: int | None = None
    max_vcpus_per_user: float | None = None
    max_usd_per_hour_per_user: float | None = None
    max_clusters_per_team: int | None = None
    max_vcpus_per_team: float | None = None
    max_usd_per_hour_per_team: float | None = None
    teams: Mapping[str, str] = field(default_factory=dict)

    def team_of(self, user: str) -> str | None:
        """The team ``user`` belongs to, if any."""
        return self.teams.get(user)


_LIMIT_KEYS = (
    "max-clusters-per-user",
    "max-vcpus-per-user",
    "max-usd-per-hour-per-user",
    "max-clusters-per-team",
    "max-vcpus-per-team",
    "max-usd-per-hour-per-team",
)


def limits_from_config() -> QuotaLimits:
    """The limits under ``recc.quotas``; a :class:`ConfigError` names a bad key."""
    values: dict[str, Any] = {}
    for key in _LIMIT_KEYS:
        raw = config.get(f"quotas.{key}")
        if raw is None:
            values[key.replace("-", "_")] = None
            continue
        try:
            number = float(raw)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(raw, bool) or not math.isfinite(number) or number < 0:
            raise ConfigError(
                f"recc.quotas.{key}={raw!r}: must be a non-negative number or null "
                f"(for example: recc.quotas.{key}: 10)"
            )
        values[key.replace("-", "_")] = int(number) if key.startswith("max-clusters") else number
    teams = config.get("quotas.teams") or {}
    if not isinstance(teams, Mapping):
        raise ConfigError(
            f"recc.quotas.teams={teams!r}: must map user to team (for example: "
            "recc.quotas.teams: {alice: ml, bob: ml})"
        )
    return QuotaLimits(**values, teams={str(u): str(t) for u, t in teams.items()})


def _num(value: float) -> str:
    return f"{value:g}"


def _check(
    *,
    scope: str,
    who: str,
    records: Sequence[UsageRecord],
    new_vcpus: float,
    new_usd: float,
    max_clusters: int | None,
    max_vcpus: float | None,
    max_usd: float | None,
) -> tuple[list[str], float, float]:
    """Violations of one scope's limits, and the vCPU and $/h room left in it."""
    names = ", ".join(r.cluster for r in records)
    where = f"in {len(records)} cluster{'s' if len(records) != 1 else ''}" + (
        f" ({names})" if names else ""
    )
    used_vcpus = sum(r.vcpus for r in records)
    used_usd = sum(r.usd_per_hour for r in records)
    problems = []
    if max_clusters is not None and len(records) + 1 > max_clusters:
        problems.append(
            f"max-clusters-per-{scope}={max_clusters}: {who} runs {len(records)} "
            f"cluster{'s' if len(records) != 1 else ''}"
            + (f" ({names})" if names else "")
            + "; stop one first (recc down NAME)"
        )
    vcpu_room = math.inf if max_vcpus is None else max_vcpus - used_vcpus
    if new_vcpus > vcpu_room:
        problems.append(
            f"max-vcpus-per-{scope}={_num(max_vcpus)}: {who} uses {_num(used_vcpus)} vCPUs "
            f"{where}; this cluster needs {_num(new_vcpus)}; "
            + (f"at most {_num(vcpu_room)} more would fit" if vcpu_room > 0 else "none would fit")
        )
    usd_room = math.inf if max_usd is None else max_usd - used_usd
    if new_usd > usd_room:
        problems.append(
            f"max-usd-per-hour-per-{scope}={_num(max_usd)}: {who} uses "
            f"{format_usd(used_usd)}/h {where}; this cluster needs {format_usd(new_usd)}/h; "
            + (
                f"at most {format_usd(usd_room)}/h more would fit"
                if usd_room > 0
                else "none would fit"
            )
        )
    return problems, vcpu_room, usd_room


def check_quota(
    user: str,
    team: str | None,
    new_plan_vcpus: float,
    new_usd_per_hour: float,
    running: Sequence[UsageRecord],
    limits: QuotaLimits,
    fit: FitHint | None = None,
) -> None:
    """Raise :class:`QuotaExceeded` if a new cluster would break ``user``'s or ``team``'s limits.

    ``running`` is every cluster running now (any user: team limits count the team's members
    per ``limits.teams``). The message lists every limit broken with current use, the limit and
    what would fit; ``fit`` (see :func:`fit_n_workers`) turns the room left into an
    ``n_workers`` suggestion. Pure.
    """
    mine = [r for r in running if r.user == user]
    problems, vcpu_room, usd_room = _check(
        scope="user",
        who=user,
        records=mine,
        new_vcpus=new_plan_vcpus,
        new_usd=new_usd_per_hour,
        max_clusters=limits.max_clusters_per_user,
        max_vcpus=limits.max_vcpus_per_user,
        max_usd=limits.max_usd_per_hour_per_user,
    )
    if team is not None:
        theirs = [r for r in running if limits.team_of(r.user) == team or r.user == user]
        members = sorted({r.user for r in theirs} | {user})
        team_problems, team_vcpus, team_usd = _check(
            scope="team",
            who=f"team {team} ({', '.join(members)})",
            records=theirs,
            new_vcpus=new_plan_vcpus,
            new_usd=new_usd_per_hour,
            max_clusters=limits.max_clusters_per_team,
            max_vcpus=limits.max_vcpus_per_team,
            max_usd=limits.max_usd_per_hour_per_team,
        )
        problems += team_problems
        vcpu_room, usd_room = min(vcpu_room, team_vcpus), min(usd_room, team_usd)
    if not problems:
        return
    message = "; ".join(problems)
    resource_only = not any(p.startswith("max-clusters") for p in problems)
    if fit is not None and resource_only and vcpu_room > 0 and usd_room > 0:
        n_workers = fit(vcpu_room, usd_room)
        message += (
            f" (e.g. n_workers={n_workers})"
            if n_workers
            else " (not even one worker of this spec fits)"
        )
    raise QuotaExceeded(message)


def plan_vcpus(plan: NodePlan, catalog: Catalog) -> int:
    """vCPUs of every instance the plan starts: what AWS bills and what quotas count."""
    return sum(g.instances * catalog.get(g.instance_type).vcpus for g in plan.groups)


def fit_n_workers(spec: ClusterSpec, catalog: Catalog, prices: PriceBook | None = None) -> FitHint:
    """A :data:`FitHint` that replans ``spec`` with fewer workers (default group only).

    Instances and cost never shrink as workers grow, so a bisection finds the largest
    ``n_workers`` whose plan fits both rooms.
    """
    prices = prices or PriceBook()

    def fits(n: int, vcpu_room: float, usd_room: float) -> bool:
        try:
            plan = plan_cluster(spec.replace(n_workers=n), catalog)
        except PlanError:
            return False
        usd = estimate_cost(plan, prices).usd_per_hour
        return plan_vcpus(plan, catalog) <= vcpu_room and usd <= usd_room

    def hint(vcpu_room: float, usd_room: float) -> int | None:
        # Invariant: lo fits (0 = nothing), hi and above do not (never suggest more than asked).
        lo, hi = 0, spec.n_workers + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid, vcpu_room, usd_room) else (lo, mid)
        return lo or None

    return hint
