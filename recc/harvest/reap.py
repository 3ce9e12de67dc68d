"""One harvest pass: observe every cluster, decide, and (unless it is a dry run) reap.

Reaping one cluster, safely:

1. take the cluster's harvest lock (another harvester holding it: wait a while, then skip);
2. observe that one cluster again and decide again under the lock - it may have been deleted
   by the other harvester (``already deleted``), or have become busy meanwhile (kept);
3. remember that the reap started, so that a pass after a failure midway finishes it;
4. delete it through :func:`recc.clusters.delete_cluster` (``how="reaped"``), the same
   idempotent teardown as ``recc down``, which records the end in the ledger;
5. record the reap in the audit trail (who, what, why, $/h).

``max_deletions`` caps the reaps per pass (largest $/h first), so a wrong setting or a bug
can never take down the whole platform in one go.

Example
-------
>>> report = harvest("local", dry_run=True)  # doctest: +SKIP
>>> [(r.decision.cluster, r.decision.decision, r.decision.reason) for r in report.rows]
[('recc-alice-1a2b3c', 'reap', 'idle for 2h with no client connected (idle timeout 1h)')]
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any

from recc.backends.base import Backend
from recc.clusters import delete_cluster
from recc.errors import ClusterNotFound, RECCError
from recc.harvest.audit import AuditTrail
from recc.harvest.decide import decide
from recc.harvest.evidence import Decision, HarvestSettings, Observation
from recc.harvest.observe import Site, site_for
from recc.tags import rfc3339, utcnow

logger = logging.getLogger(__name__)

KEPT, WOULD_REAP, DELETED, ALREADY = "kept", "would reap", "deleted", "already deleted"
_LIMIT = "skipped: --max-deletions reached"


@dataclass(frozen=True)
class Row:
    """One cluster in a harvest report: what was seen, decided, and done (``outcome``)."""

    observation: Observation
    decision: Decision
    outcome: str
    at: dt.datetime

    @property
    def failed(self) -> bool:
        """True when a reap was attempted and did not finish."""
        return self.outcome.startswith("failed")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: cluster, decision, reason and the facts behind them."""
        o, d = self.observation, self.decision
        age = o.age(self.at)
        return {
            "cluster": d.cluster,
            "decision": d.decision,
            "reason": d.reason,
            "category": d.category,
            "outcome": self.outcome,
            "backend": o.backend,
            "owner": o.owner,
            "age_seconds": None if age is None else round(age, 1),
            "idle_seconds": None if o.idle_seconds is None else round(o.idle_seconds, 1),
            "clients": None if o.scheduler is None else o.scheduler.clients,
            "usd_per_hour": o.usd_per_hour,
            "usd_per_hour_reclaimed": d.usd_per_hour_reclaimed,
            "protected": o.protected,
            "created_at": rfc3339(o.created_at) if o.created_at else None,
            "expires_at": rfc3339(o.expires_at) if o.expires_at else None,
            **({"present": list(o.present), "missing": list(o.missing)} if o.missing else {}),
        }


@dataclass(frozen=True)
class HarvestReport:
    """The result of one pass."""

    backend: str
    dry_run: bool
    rows: list[Row] = field(default_factory=list)
    harvester: dict[str, Any] = field(default_factory=dict)

    @property
    def reaped(self) -> list[Row]:
        """Rows whose cluster this pass deleted."""
        return [r for r in self.rows if r.outcome == DELETED]

    @property
    def to_reap(self) -> list[Row]:
        """Rows decided ``reap`` (whatever happened to them)."""
        return [r for r in self.rows if r.decision.reap]

    @property
    def usd_per_hour_reclaimed(self) -> float:
        """$/h of the clusters reaped (in a dry run: of those that would be)."""
        rows = self.to_reap if self.dry_run else self.reaped
        return round(sum(r.decision.usd_per_hour_reclaimed for r in rows), 4)

    @property
    def failed(self) -> list[Row]:
        """Rows whose reap failed."""
        return [r for r in self.rows if r.failed]


def harvest(
    backend: Backend | str | None = None,
    *,
    dry_run: bool = True,
    max_deletions: int | None = None,
    settings: HarvestSettings | None = None,
    clock: Callable[[], dt.datetime] = utcnow,
    site: Site | None = None,
    audit: AuditTrail | None = None,
) -> HarvestReport:
    """Observe every cluster of ``backend``, decide, and reap unless ``dry_run``.

    ``max_deletions`` (default ``recc.harvest.max-deletions``) caps reaps in this pass.
    Returns a :class:`HarvestReport`; a failed reap is reported in its row, not raised.
    """
    settings = settings or HarvestSettings.from_config(max_deletions=max_deletions)
    if site is None:
        with closing(site_for(backend)) as own:
            return harvest(dry_run=dry_run, settings=settings, clock=clock, site=own, audit=audit)
    now = clock()
    seen = site.observe(now)
    rows = {o.cluster: Row(o, decide(o, now, settings), KEPT, now) for o in seen}
    budget = settings.max_deletions
    # Reaps in order of $/h: with a cap, the most expensive go first.
    for row in sorted(
        rows.values(), key=lambda r: (-r.decision.usd_per_hour_reclaimed, r.decision.cluster)
    ):
        name = row.decision.cluster
        if not row.decision.reap:
            continue
        if dry_run:
            rows[name] = replace(row, outcome=WOULD_REAP)
        elif budget is not None and budget <= 0:
            rows[name] = replace(row, outcome=_LIMIT)
        else:
            rows[name], attempted = _reap_one(site, row, settings, clock, audit)
            if attempted and budget is not None:
                budget -= 1
    ordered = [rows[name] for name in sorted(rows)]
    return HarvestReport(site.backend.name, dry_run, ordered, site.identity())


def _reap_one(
    site: Site,
    row: Row,
    settings: HarvestSettings,
    clock: Callable[[], dt.datetime],
    audit: AuditTrail | None,
) -> tuple[Row, bool]:
    """Reap ``row``'s cluster under its lock; (its row now, whether a deletion was attempted).

    The row then shows what was seen and decided under the lock: what the reap acted on.
    """
    try:
        return _reap_locked(site, row, settings, clock, audit)
    except RECCError as e:  # the lock, or the second look, failed: nothing was deleted
        logger.warning("could not reap %s: %s", row.decision.cluster, e)
        return replace(row, outcome=f"failed: {e}"), False


def _reap_locked(
    site: Site,
    row: Row,
    settings: HarvestSettings,
    clock: Callable[[], dt.datetime],
    audit: AuditTrail | None,
) -> tuple[Row, bool]:
    name = row.decision.cluster
    with site.lock(name) as holder:
        if holder is not None:
            return replace(row, outcome=f"skipped: {holder} is reaping it"), False
        now = clock()
        fresh = site.observe(now, names=[name])
        if not fresh:
            return replace(row, outcome=ALREADY), False
        decision = decide(fresh[0], now, settings)
        row = Row(fresh[0], decision, KEPT if not decision.reap else "", now)
        if not decision.reap:
            return replace(row, outcome=f"kept: {decision.reason}"), False
        started = {"category": decision.category, "reason": decision.reason, "at": rfc3339(now)}
        site.memory.update({name: {"reaping": started}})
        try:
            outcome = delete_cluster(name, site.backend, how="reaped")
        except ClusterNotFound:
            site.memory.update({name: None})
            return replace(row, outcome=ALREADY), True
        except RECCError as e:
            logger.warning("reaping %s failed: %s", name, e)
            row = replace(row, outcome=f"failed: {e}")
            _audit(audit, site, row)
            return row, True
        site.memory.update({name: None})
        row = replace(row, outcome=outcome)
        if outcome == DELETED:
            _audit(audit, site, row)
        return row, True


def _audit(audit: AuditTrail | None, site: Site, row: Row) -> None:
    entry = {**row.to_dict(), "harvester": site.identity()}
    try:
        (audit or AuditTrail()).record(entry, at=row.at)
    except RECCError as e:  # the reap happened; losing its audit line must not hide that
        logger.warning(
            "could not record the reap of %s in the audit trail: %s", row.decision.cluster, e
        )
