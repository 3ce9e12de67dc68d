"""What the harvester knows about one cluster, its settings, and what it decided. Pure data.

The observers (:mod:`recc.harvest.observe`, :mod:`recc.harvest.eks`) fill an
:class:`Observation` per cluster from records, tags, labels and the scheduler itself;
:func:`recc.harvest.decide.decide` turns it into a :class:`Decision` with no I/O and no clock
of its own.

Example
-------
>>> import datetime as dt
>>> t0 = dt.datetime(2026, 11, 2, 9, tzinfo=dt.timezone.utc)
>>> seen = Observation("recc-alice-1", "local", owner="alice", created_at=t0,
...                    scheduler=SchedulerEvidence(idle_seconds=7200, clients=0))
>>> seen.age(t0 + dt.timedelta(hours=3))
10800.0
>>> seen.scheduler.busy
False
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from recc import config
from recc.errors import ConfigError
from recc.units import parse_duration

REAP, KEEP = "reap", "keep"

# Why a cluster is reaped ...
IDLE, EXPIRED, UNREACHABLE, ORPHANED = "idle", "expired", "unreachable", "orphaned"
# ... or kept.
UNMANAGED, UNREADABLE, PROTECTED, YOUNG = "unmanaged", "unreadable", "protected", "young"
BUSY, IN_USE, ACTIVE, WAITING = "busy", "in-use", "active", "waiting"


@dataclass(frozen=True)
class SchedulerEvidence:
    """What a cluster's scheduler said about itself when the harvester asked it.

    ``idle_seconds`` is how long the scheduler has had nothing processing, queued or
    unrunnable (its own ``idle_since``), measured on the scheduler's clock; None while it
    works. ``clients`` counts connected clients; the harvester's question is not one.
    """

    idle_seconds: float | None
    clients: int
    processing: int = 0
    queued: int = 0
    unrunnable: int = 0
    graph_updates: int = 0
    workers: int = 0

    @property
    def busy(self) -> bool:
        """True while any task is processing, queued, unrunnable or being submitted."""
        return bool(self.processing or self.queued or self.unrunnable or self.graph_updates)

    def activity(self) -> str:
        """The work in progress, for people: ``"3 tasks processing, 10 queued"``."""
        parts = [
            f"{n} {one if n == 1 else many}"
            for n, one, many in (
                (self.processing, "task processing", "tasks processing"),
                (self.queued, "queued", "queued"),
                (self.unrunnable, "unrunnable", "unrunnable"),
                (self.graph_updates, "graph being submitted", "graphs being submitted"),
            )
            if n
        ]
        return ", ".join(parts) or "no tasks"


@dataclass(frozen=True)
class Observation:
    """Everything observed about one cluster at one moment; the input of ``decide``.

    Fields the observer could not establish stay at their defaults; ``unreadable`` says why
    when that matters (tags, labels or the record could not be read), and the cluster is then
    kept: the harvester fails closed.
    """

    cluster: str
    backend: str
    managed: bool = True
    owner: str = "unknown"
    created_at: dt.datetime | None = None
    usd_per_hour: float = 0.0
    # The cluster's own idle timeout (spec, tag); None: recc.harvest.idle-timeout applies.
    idle_timeout: float | None = None
    # When its max lifetime runs out, or its recc:expires-at tag (the earlier of the two).
    expires_at: dt.datetime | None = None
    protected: bool = False
    # With ``protected``: protection lasts until then (None: until `recc unprotect`).
    protected_until: dt.datetime | None = None
    scheduler: SchedulerEvidence | None = None
    # Why the scheduler gave no answer (None when it answered).
    unreachable: str | None = None
    # The first harvest pass that found it not answering (remembered between passes).
    unreachable_since: dt.datetime | None = None
    # The scheduler certainly no longer exists (its process is gone): no grace period needed.
    scheduler_gone: bool = False
    # The scheduler closed itself after its idle timeout (distributed's own idle shutdown).
    shut_down_idle: bool = False
    # EKS: which parts of the cluster exist, and which a complete cluster has but this lacks.
    present: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unreadable: str | None = None
    # A reap that started and did not finish (a failure midway): (category, reason, at).
    interrupted: tuple[str, str, str] | None = None
    # Free-form facts for the JSON output (scheduler address, node groups ...).
    details: dict[str, Any] = field(default_factory=dict, compare=False)

    def age(self, now: dt.datetime) -> float | None:
        """Seconds since the cluster was created (None when unknown)."""
        if self.created_at is None:
            return None
        return (now - self.created_at).total_seconds()

    @property
    def idle_seconds(self) -> float | None:
        """How long the scheduler has been idle (None: working, or not answering)."""
        return self.scheduler.idle_seconds if self.scheduler is not None else None


@dataclass(frozen=True)
class Decision:
    """What the harvester decided about one cluster, and why, in words a person can check.

    ``decision`` is ``"reap"`` or ``"keep"``; ``category`` names the rule that decided
    (``idle``, ``expired``, ``unreachable``, ``orphaned``; ``busy``, ``in-use``, ``active``,
    ``waiting``, ``protected``, ``young``, ``unmanaged``, ``unreadable``).
    ``usd_per_hour_reclaimed`` is the cluster's estimated $/h when reaped, else 0.
    """

    cluster: str
    decision: str
    reason: str
    usd_per_hour_reclaimed: float
    category: str

    @property
    def reap(self) -> bool:
        """True when the cluster is to be deleted."""
        return self.decision == REAP


@dataclass(frozen=True)
class HarvestSettings:
    """The ``recc.harvest.*`` settings, in seconds.

    Example
    -------
    >>> HarvestSettings.from_config(idle_timeout="30m").idle_timeout
    1800.0
    """

    idle_timeout: float = 3600.0
    grace_period: float = 900.0
    unreachable_grace: float = 600.0
    orphan_grace: float = 1800.0
    max_deletions: int | None = 20

    @classmethod
    def from_config(cls, **overrides: Any) -> HarvestSettings:
        """Read ``recc.harvest.*``; keyword arguments (field names) win when not None."""
        values: dict[str, Any] = {}
        for name in ("idle_timeout", "grace_period", "unreachable_grace", "orphan_grace"):
            key = "harvest." + name.replace("_", "-")
            values[name] = _seconds(key, config.get(key, override=overrides.get(name)))
        key = "harvest.max-deletions"
        values["max_deletions"] = _count(
            key, config.get(key, override=overrides.get("max_deletions"))
        )
        return cls(**values)


def _seconds(key: str, value: Any) -> float:
    """A duration setting in seconds; 0 is allowed (no grace), "never" is not."""
    if value in (0, "0", "0s"):
        return 0.0
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"recc.{key}={value!r}: {e} (for example: 30m, 1h or 0)") from e
    if seconds is None or not math.isfinite(seconds):
        raise ConfigError(f"recc.{key}={value!r}: must be a finite duration (for example: 30m)")
    return seconds


def _count(key: str, value: Any) -> int | None:
    """A non-negative count; None (or "none") means unlimited."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if isinstance(value, bool) or count < 0 or str(count) != str(value).strip():
        raise ConfigError(
            f"recc.{key}={value!r}: must be a whole number >= 0, or null for no limit "
            "(for example: 20)"
        )
    return count


def human_duration(seconds: float | None) -> str:
    """``"2h 5m"``, ``"3m 20s"``, ``"4s"``, ``"2d 3h"``; ``"-"`` for None.

    >>> human_duration(7500), human_duration(200), human_duration(4.2), human_duration(None)
    ('2h 5m', '3m 20s', '4s', '-')
    """
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    units = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    parts = []
    for unit, size in units:
        if total >= size or (unit == "s" and not parts):
            parts.append(f"{total // size}{unit}")
            total %= size
        if len(parts) == 2:
            break
    return " ".join(parts)
