"""Operations on clusters by name, shared by RECCCluster, the CLI and the harvester.

Every way a cluster ends (close, ``recc down``, the harvester) goes through
:func:`delete_cluster`, so the teardown and the ledger entry are the same whoever ends it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from recc import ledger
from recc.backends.base import Backend, get_backend
from recc.errors import ClusterNotFound
from recc.estimate import Estimate
from recc.spend import cost_so_far
from recc.state import ClusterRecord
from recc.tags import Ownership, parse_rfc3339


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


def record_created(record: ClusterRecord, estimate: Estimate) -> None:
    """Write the start of ``record``'s life into the ledger."""
    start = ledger.StartRecord.for_cluster(
        ownership(record), record.backend, estimate.cost, estimate.plan
    )
    ledger.record_start(start)


def delete_cluster(name: str, backend: Backend | str | None = None, how: str = "down") -> str:
    """Tear down cluster ``name`` and record how it ended.

    Returns ``"deleted"``, or ``"already deleted"`` when the ledger shows it ended before.
    Raises :class:`ClusterNotFound` for a name RECC never knew.
    """
    chosen = backend if not isinstance(backend, (str, type(None))) else get_backend(backend)
    if chosen.delete(name):
        ledger.record_end(name, how=how)
        return "deleted"
    lives = [life for life in ledger.read_lives() if life.record.cluster == name]
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
    """The record of ``name`` on ``backend`` (raises ClusterNotFound)."""
    return get_backend(backend).find(name)
