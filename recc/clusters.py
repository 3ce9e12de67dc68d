"""Operations on clusters by name, shared by RECCCluster, the CLI and the harvester.

Every way a cluster ends (close, ``recc down``, the harvester) goes through
:func:`delete_cluster`, so the teardown and the ledger entry are the same whoever ends it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass
from typing import Any

from recc import ledger
from recc.backends.base import Backend, get_backend
from recc.catalog import get_catalog
from recc.errors import ClusterNotFound, RECCError
from recc.estimate import Estimate
from recc.naming import check_cluster_name
from recc.quotas import UsageRecord, check_quota, fit_n_workers, limits_from_config, plan_vcpus
from recc.spend import cost_so_far
from recc.state import ClusterRecord
from recc.tags import Ownership, parse_rfc3339

logger = logging.getLogger("recc")


def ownership(record: ClusterRecord) -> Ownership:
    """Who and what ``record`` belongs to (for tags, labels and the ledger)."""
    spec = record.spec
    from recc.units import parse_duration

    return Ownership(
        cluster=record.name,
        user=record.owner,
        namespace=record.name,
        created_at=parse_rfc3339(record.created_at),
        job=spec.get("job"),
        idle_timeout=parse_duration(spec.get("idle_timeout")),
        max_lifetime=parse_duration(spec.get("max_lifetime")),
    )


def estimate_vcpus(estimate: Estimate) -> float:
    """vCPUs a cluster counts against quotas: its instances' vCPUs on EKS (what AWS bills),
    the cores its pods request on the local backend (no instances there)."""
    if estimate.plan is None:
        spec = estimate.spec
        return spec.scheduler_cpu + sum(g.n_workers * g.worker_cpu for g in spec.groups())
    return float(plan_vcpus(estimate.plan, get_catalog()))


def check_quotas(estimate: Estimate, backend: Backend, user: str) -> None:
    """Refuse a new cluster that would break ``user``'s or their team's quotas
    (``recc.quotas.*``), counting the clusters ``backend`` runs now. Raises QuotaExceeded."""
    limits = limits_from_config()
    running = [UsageRecord(r.name, r.owner, r.vcpus, r.usd_per_hour) for r in backend.list()]
    fit = fit_n_workers(estimate.spec, get_catalog()) if estimate.plan is not None else None
    check_quota(
        user,
        limits.team_of(user),
        estimate_vcpus(estimate),
        estimate.cost.usd_per_hour,
        running,
        limits,
        fit,
    )


def record_created(record: ClusterRecord, estimate: Estimate) -> None:
    """Write the start of ``record``'s life into the ledger."""
    start = ledger.StartRecord.for_cluster(
        ownership(record), record.backend, estimate.cost, estimate.plan
    )
    try:
        ledger.record_start(start)
    except RECCError as e:  # bookkeeping must not take the researcher's cluster down
        logger.warning("could not record %s in the ledger: %s", record.name, e)


def delete_cluster(name: str, backend: Backend | str | None = None, how: str = "down") -> str:
    """Tear down cluster ``name`` and record how it ended.

    Returns ``"deleted"``, or ``"already deleted"`` when the ledger shows it ended before.
    Raises :class:`ClusterNotFound` for a name RECC never knew, :class:`SpecError` for one that
    cannot be a cluster name (before anything is looked up).
    """
    check_cluster_name(name)
    chosen = backend if not isinstance(backend, (str, type(None))) else get_backend(backend)
    if chosen.delete(name):
        try:
            ledger.record_end(name, how=how)
        except RECCError as e:
            logger.warning("could not record the end of %s in the ledger: %s", name, e)
        return "deleted"
    lives = ledger.read_lives(cluster=name)
    if lives and not any(life.running for life in lives):
        return "already deleted"
    if lives:  # started, never recorded as ended, and nothing left: it ended unrecorded
        ledger.record_end(name, how="failed")
        return "already deleted"
    raise ClusterNotFound(f"no cluster named {name!r} (see `recc ls`)")


@dataclass(frozen=True)
class ClusterView:
    """One row of ``recc ls``."""

    name: str
    backend: str
    owner: str
    status: str
    workers: int
    workers_requested: int
    created_at: str
    age_seconds: float
    usd_per_hour: float
    cost_so_far_usd: float
    scheduler_address: str | None
    dashboard_link: str | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready); costs are estimates."""
        return {**asdict(self), "cost_is_estimate": True}


def describe_clusters(
    backend: str | None = None, now: dt.datetime | None = None
) -> list[ClusterView]:
    """Every cluster of ``backend`` with its live status, age and estimated cost so far."""
    chosen = get_backend(backend)
    now = now or dt.datetime.now(dt.timezone.utc)
    views = []
    for record in chosen.list():
        status = chosen.status(record)
        created = parse_rfc3339(record.created_at)
        views.append(
            ClusterView(
                name=record.name,
                backend=record.backend,
                owner=record.owner,
                status=status.state,
                workers=status.workers_running,
                workers_requested=_requested(record),
                created_at=record.created_at,
                age_seconds=round((now - created).total_seconds(), 1),
                usd_per_hour=record.usd_per_hour,
                cost_so_far_usd=round(cost_so_far(record.usd_per_hour, created, now), 4),
                scheduler_address=record.scheduler_address,
                dashboard_link=record.dashboard_link,
                detail=status.detail,
            )
        )
    return views


def _requested(record: ClusterRecord) -> int:
    spec = record.spec
    return int(spec.get("n_workers", 0)) + sum(
        int(g.get("n_workers", 0)) for g in spec.get("worker_groups", [])
    )


def find_cluster(name: str, backend: str | None = None) -> ClusterRecord:
    """The record of ``name`` on ``backend`` (raises ClusterNotFound, or SpecError for a name
    that cannot be a cluster name)."""
    return get_backend(backend).find(check_cluster_name(name))
