"""Gather the evidence the harvester decides on, per cluster, per backend.

A :class:`Site` is where one backend's clusters live, seen by the harvester: it observes them
(records, tags, labels, protection marks, and each scheduler's own answer), locks one against
other harvesters, and remembers facts between passes. :class:`LocalSite` is the local backend's;
:class:`recc.harvest.eks.EKSSite` is the EKS backend's. :func:`site_for` picks one.

Evidence that cannot be read is recorded as such (``Observation.unreadable``), never guessed:
the decision then keeps the cluster.

Example
-------
>>> import datetime as dt
>>> site = site_for("local")  # doctest: +SKIP
>>> [o.cluster for o in site.observe(dt.datetime.now(dt.timezone.utc))]  # doctest: +SKIP
['recc-alice-1a2b3c']
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from recc import config
from recc.backends.base import Backend, get_backend
from recc.harvest.evidence import Observation, SchedulerEvidence
from recc.harvest.locks import LocalMemory, cluster_lock, harvester_identity
from recc.harvest.probe import Unanswered, ask_all
from recc.harvest.protect import local_protection
from recc.state import ClusterRecord
from recc.tags import parse_rfc3339, rfc3339
from recc.units import parse_duration, seconds

# What distributed logs when a scheduler closes itself after its idle timeout.
_IDLE_SHUTDOWN = ("idle-timeout-exceeded", "Scheduler closing after being idle")


class Memory(Protocol):
    """What a harvester remembers per cluster between passes (see LocalMemory)."""

    def load(self) -> dict[str, dict[str, Any]]:
        """cluster -> entry."""

    def update(self, changes: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Merge entries in; None forgets a cluster."""


class Site(Protocol):
    """One backend's clusters as the harvester sees and handles them."""

    backend: Backend
    memory: Memory

    def observe(self, now: dt.datetime, names: Collection[str] | None = None) -> list[Observation]:
        """Every cluster (or those in ``names`` that still exist), observed now."""

    def lock(self, cluster: str) -> AbstractContextManager[str | None]:
        """Exclusive harvest lock on ``cluster``: yields None when held, else the holder."""

    def identity(self) -> dict[str, Any]:
        """Who this harvester is (user, host, pid; the AWS identity on EKS)."""

    def close(self) -> None:
        """Release what the site opened (clients, connections)."""


def site_for(backend: Backend | str | None = None) -> Site:
    """The :class:`Site` of ``backend`` (a name, an object, or None for the configured one)."""
    chosen = backend if not isinstance(backend, (str, type(None))) else get_backend(backend)
    if chosen.name == "eks":
        from recc.harvest.eks import EKSSite

        return EKSSite(chosen)
    return LocalSite(chosen)


def probe_timeout() -> float:
    """Seconds to wait for a scheduler's answer (``recc.harvest.probe-timeout``, default 10)."""
    return seconds(config.get("harvest.probe-timeout", default=10))


def expiry(
    created_at: dt.datetime | None, max_lifetime: float | None, expires_at: dt.datetime | None
) -> dt.datetime | None:
    """The earlier of creation + max lifetime and an explicit expiry time (None: never)."""
    candidates = [expires_at] if expires_at is not None else []
    if created_at is not None and max_lifetime is not None:
        candidates.append(created_at + dt.timedelta(seconds=max_lifetime))
    return min(candidates) if candidates else None


def interrupted(entry: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The interrupted reap a memory entry records, as ``Observation.interrupted``."""
    reaping = entry.get("reaping")
    if not isinstance(reaping, Mapping):
        return None
    return (str(reaping["category"]), str(reaping["reason"]), str(reaping["at"]))


def unreachable_update(
    entry: Mapping[str, Any], answer: SchedulerEvidence | Unanswered | None, now: dt.datetime
) -> tuple[dt.datetime | None, dict[str, Any] | None]:
    """(since when the scheduler has not answered, the new memory entry or None to forget).

    The first pass that finds a scheduler silent records the time; a pass that hears it
    answer forgets it again.
    """
    kept = {k: v for k, v in entry.items() if k != "unreachable_since"}
    if isinstance(answer, Unanswered) and answer.unreachable:
        try:
            since = parse_rfc3339(entry["unreachable_since"])
        except (KeyError, TypeError, ValueError):
            since = now
        return since, {**kept, "unreachable_since": rfc3339(since)}
    return None, kept or None


class LocalSite:
    """The local backend's clusters: records in the state directory, processes, and the
    schedulers' answers over TLS; locks and memory in ``<state-dir>/harvest``."""

    def __init__(self, backend: Backend | None = None):
        self.backend = backend or get_backend("local")
        self.memory: Memory = LocalMemory()

    def lock(self, cluster: str) -> AbstractContextManager[str | None]:
        """This machine's lock on ``cluster``."""
        return cluster_lock(cluster)

    def identity(self) -> dict[str, Any]:
        """User, host and pid of this harvester."""
        return harvester_identity()

    def close(self) -> None:
        """Nothing to release: records and processes need no client."""

    def observe(self, now: dt.datetime, names: Collection[str] | None = None) -> list[Observation]:
        """Observe every local cluster (or those named), asking live schedulers at once."""
        records = [r for r in self.backend.list() if names is None or r.name in names]
        memory = self.memory.load()
        facts = {r.name: self._facts(r, memory.get(r.name, {})) for r in records}
        targets = {}
        for record in records:
            if "scheduler" not in facts[record.name] and "unreachable" not in facts[record.name]:
                targets[record.name] = (
                    record.scheduler_address or "",
                    self.backend.security(record),
                )
        answers = ask_all(targets, probe_timeout())
        observations, changes = [], {}
        for record in records:
            fact = facts[record.name]
            answer = answers.get(record.name)
            if answer is None and "unreachable" in fact:
                answer = Unanswered(fact["unreachable"], unreachable=True)
            if isinstance(answer, SchedulerEvidence):
                fact["scheduler"] = answer
            elif isinstance(answer, Unanswered) and answer.unreachable:
                fact["unreachable"] = answer.why
            elif isinstance(answer, Unanswered):
                fact.setdefault("unreadable", f"the scheduler's state is unknown: {answer.why}")
            entry = memory.get(record.name, {})
            since, new_entry = unreachable_update(entry, answer, now)
            if since is not None:
                fact["unreachable_since"] = since
            if new_entry != (entry or None):
                changes[record.name] = new_entry
            observations.append(Observation(**fact))
        if names is None:  # forget clusters that no longer exist
            changes.update({c: None for c in memory if c not in facts})
        self.memory.update(changes)
        return observations

    def _facts(self, record: ClusterRecord, entry: Mapping[str, Any]) -> dict[str, Any]:
        """What the record, the protection file and the processes say (no scheduler yet)."""
        fact: dict[str, Any] = {
            "cluster": record.name,
            "backend": record.backend,
            "owner": record.owner,
            "usd_per_hour": record.usd_per_hour,
            "interrupted": interrupted(entry),
            "details": {"scheduler_address": record.scheduler_address},
        }
        try:
            created = parse_rfc3339(record.created_at)
            fact["created_at"] = created
            fact["idle_timeout"] = parse_duration(record.spec.get("idle_timeout"))
            fact["expires_at"] = expiry(
                created, parse_duration(record.spec.get("max_lifetime")), None
            )
            fact["protected"], fact["protected_until"] = local_protection(record.name)
        except (ValueError, TypeError, AttributeError) as e:
            fact["unreadable"] = f"its record could not be read: {e}"
            return fact
        status = self.backend.status(record)
        if status.state == "failed":
            pid = (record.details.get("scheduler") or {}).get("pid")
            fact["unreachable"] = (
                f"scheduler process {pid} is not running" if pid else "no scheduler was started"
            )
            fact["scheduler_gone"] = True
            scheduler_log = self.backend.logs(record).get("scheduler", "")[-8000:]
            fact["shut_down_idle"] = any(mark in scheduler_log for mark in _IDLE_SHUTDOWN)
        elif not record.scheduler_address:
            fact["unreachable"] = "the scheduler has not published its address yet"
        return fact
