"""The harvester's decision: reap or keep one cluster, and why. A pure function.

:func:`decide` looks only at an :class:`~recc.harvest.evidence.Observation`, the time and the
settings: no AWS, no Kubernetes, no scheduler, no clock of its own. The rules, first match wins:

1. not managed by RECC -> keep (nothing without ``recc:managed-by=recc`` is ever deleted);
2. tags, labels or the record could not be read -> keep (fail closed);
3. protected (``recc.io/protect``, or ``recc:protect-until`` in the future) -> keep;
4. a reap of it started and did not finish (a failure midway) -> reap again, same reason;
5. younger than ``grace-period``, or of unknown age -> keep (it may still be starting);
6. parts missing (EKS: node group, launch template or namespace gone) -> reap as orphaned once
   older than ``orphan-grace``, else keep;
7. past its max lifetime or ``expires-at`` -> reap as expired (even while busy: a hard limit);
8. the scheduler shut itself down after its idle timeout -> reap what remains, as idle;
9. the scheduler does not answer -> reap as unreachable when its process is certainly gone or
   it has not answered for ``unreachable-grace``, else keep;
10. tasks processing, queued or unrunnable -> keep (busy);
11. a client connected -> keep (in use);
12. idle for at least its idle timeout (the cluster's own, else ``idle-timeout``) -> reap;
13. otherwise keep (active).

Example
-------
>>> import datetime as dt
>>> from recc.harvest.evidence import HarvestSettings, Observation, SchedulerEvidence
>>> t0 = dt.datetime(2026, 11, 2, 9, tzinfo=dt.timezone.utc)
>>> seen = Observation("recc-alice-1", "eks", owner="alice", created_at=t0, usd_per_hour=1.29,
...                    scheduler=SchedulerEvidence(idle_seconds=7200, clients=0))
>>> d = decide(seen, t0 + dt.timedelta(hours=3), HarvestSettings(idle_timeout=3600))
>>> d.decision, d.category, d.usd_per_hour_reclaimed
('reap', 'idle', 1.29)
>>> d.reason
'idle for 2h with no client connected (idle timeout 1h)'
"""

from __future__ import annotations

import datetime as dt

from recc.harvest.evidence import (
    ACTIVE,
    BUSY,
    EXPIRED,
    IDLE,
    IN_USE,
    KEEP,
    ORPHANED,
    PROTECTED,
    REAP,
    UNMANAGED,
    UNREACHABLE,
    UNREADABLE,
    WAITING,
    YOUNG,
    Decision,
    HarvestSettings,
    Observation,
    human_duration,
)
from recc.tags import rfc3339


def decide(observation: Observation, now: dt.datetime, settings: HarvestSettings) -> Decision:
    """Reap or keep the observed cluster at ``now``, with the reason (see the module's rules).

    ``now`` must be timezone-aware (UTC): it is compared with creation and expiry times.
    """
    category, decision, reason = _rules(observation, now, settings)
    reclaimed = observation.usd_per_hour if decision == REAP else 0.0
    return Decision(observation.cluster, decision, reason, reclaimed, category)


def _rules(o: Observation, now: dt.datetime, s: HarvestSettings) -> tuple[str, str, str]:
    if not o.managed:
        return _keep(UNMANAGED, "not managed by RECC (no recc:managed-by=recc): never deleted")
    if o.unreadable:
        return _keep(UNREADABLE, f"kept because {o.unreadable} (the harvester fails closed)")
    if o.protected and (o.protected_until is None or now < o.protected_until):
        until = f" until {rfc3339(o.protected_until)}" if o.protected_until else ""
        return _keep(PROTECTED, f"protected{until} (recc unprotect {o.cluster} lifts it)")
    if o.interrupted is not None:
        category, reason, at = o.interrupted
        return _reap(category, f"finishing the reap started at {at}: {reason}")
    age = o.age(now)
    if age is None:
        return _keep(UNREADABLE, "kept because its creation time is unknown (fails closed)")
    if age < s.grace_period:
        return _keep(
            YOUNG,
            f"created {human_duration(age)} ago, within the {human_duration(s.grace_period)} "
            "grace period for new clusters",
        )
    if o.missing:
        left = f"; {', '.join(o.present)} left" if o.present else ""
        what = f"{', '.join(o.missing)} gone{left}"
        if age >= s.orphan_grace:
            return _reap(ORPHANED, f"orphaned: {what} ({human_duration(age)} old)")
        return _keep(
            WAITING,
            f"incomplete ({what}); reaped if still incomplete at "
            f"{human_duration(s.orphan_grace)} old",
        )
    if o.expires_at is not None and now >= o.expires_at:
        return _reap(
            EXPIRED, f"expired at {rfc3339(o.expires_at)} (max lifetime; {human_duration(age)} old)"
        )
    if o.shut_down_idle:
        return _reap(
            IDLE,
            "idle: the scheduler shut itself down after its idle timeout; removing what remains",
        )
    if o.unreachable is not None:
        return _unreachable(o, now, s)
    if o.scheduler is None:
        return _keep(UNREADABLE, "kept because the scheduler's state is unknown (fails closed)")
    if o.scheduler.busy:
        return _keep(BUSY, f"busy: {o.scheduler.activity()}")
    if o.scheduler.clients:
        n = o.scheduler.clients
        return _keep(IN_USE, f"in use: {n} client{'s' if n != 1 else ''} connected")
    limit = o.idle_timeout if o.idle_timeout is not None else s.idle_timeout
    idle = o.scheduler.idle_seconds
    if idle is not None and idle >= limit:
        return _reap(
            IDLE,
            f"idle for {human_duration(idle)} with no client connected "
            f"(idle timeout {human_duration(limit)})",
        )
    if idle is None:
        return _keep(ACTIVE, "active: the scheduler just ran tasks")
    return _keep(
        ACTIVE,
        f"idle for {human_duration(idle)}, under its idle timeout of {human_duration(limit)}",
    )


def _keep(category: str, reason: str) -> tuple[str, str, str]:
    return category, KEEP, reason


def _reap(category: str, reason: str) -> tuple[str, str, str]:
    return category, REAP, reason


def _unreachable(o: Observation, now: dt.datetime, s: HarvestSettings) -> tuple[str, str, str]:
    if o.scheduler_gone:
        return _reap(UNREACHABLE, f"unreachable: {o.unreachable}")
    since = o.unreachable_since or now
    waited = max(0.0, (now - since).total_seconds())
    if waited >= s.unreachable_grace:
        return _reap(
            UNREACHABLE,
            f"unreachable: the scheduler has not answered for {human_duration(waited)} "
            f"({o.unreachable})",
        )
    return _keep(
        WAITING,
        f"the scheduler is not answering ({o.unreachable}); reaped if that lasts "
        f"{human_duration(s.unreachable_grace)}",
    )
