"""The ledger: an append-only record of every cluster's life, at an fsspec URL.

Layout: ``<ledger-url>/events/<UTC timestamp>-<cluster>-<start|end>-<random>.json``, one small
JSON document per event. Object stores have no append, and two processes (or two machines
sharing an S3 prefix) may write at once, so nothing is ever rewritten: each event is a new
file with a unique name, written atomically (a single PUT on S3; write-then-rename on local
disk). Readers fold all events into :class:`Life` objects; a life without an end is still
running, and a second end for the same life is ignored, so ``record_end`` is idempotent.

``recc.cost.ledger-url`` (default ``<state-dir>/ledger``) and
``recc.cost.ledger-storage-options`` choose where it lives; ``s3://bucket/prefix`` serves a team.

Example
-------
>>> import datetime as dt, tempfile
>>> t0 = dt.datetime(2026, 11, 2, 9, tzinfo=dt.timezone.utc)
>>> ledger = Ledger(tempfile.mkdtemp())
>>> record = StartRecord("c1", "alice", "c1", None, "eks", t0, 2.0, 1, ("c5.xlarge",))
>>> _ = ledger.record_start(record)
>>> _ = ledger.record_end("c1", t0 + dt.timedelta(hours=3), "closed")
>>> [round(life.cost(), 2) for life in ledger.read_lives()]
[6.0]
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from recc import config
from recc.cost import CostEstimate
from recc.errors import BackendError, SpecError
from recc.plan import NodePlan
from recc.spend import overlap_hours
from recc.tags import Ownership, parse_rfc3339, rfc3339, utcnow

logger = logging.getLogger(__name__)

ENDINGS = ("closed", "down", "reaped", "failed")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class StartRecord:
    """What the ledger keeps about a cluster when it starts."""

    cluster: str
    user: str
    namespace: str
    job: str | None
    backend: str
    created_at: dt.datetime
    usd_per_hour: float
    instances: int = 0
    instance_types: tuple[str, ...] = ()

    @classmethod
    def for_cluster(
        cls, owner: Ownership, backend: str, estimate: CostEstimate, plan: NodePlan | None = None
    ) -> StartRecord:
        """The record of a cluster from what the lifecycle already holds.

        ``plan`` is None for the local backend (no instances).
        """
        groups = plan.groups if plan is not None else ()
        return cls(
            cluster=owner.cluster,
            user=owner.user,
            namespace=owner.namespace,
            job=owner.job,
            backend=backend,
            created_at=owner.created_at,
            usd_per_hour=estimate.usd_per_hour,
            instances=sum(g.instances for g in groups),
            instance_types=tuple(dict.fromkeys(g.instance_type for g in groups)),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain data; timestamps in RFC 3339."""
        data = asdict(self)
        data["created_at"] = rfc3339(self.created_at)
        data["instance_types"] = list(self.instance_types)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StartRecord:
        """The inverse of :meth:`to_json` (unknown keys from newer writers are ignored)."""
        return cls(
            cluster=str(data["cluster"]),
            user=str(data["user"]),
            namespace=str(data["namespace"]),
            job=data.get("job"),
            backend=str(data.get("backend", "unknown")),
            created_at=parse_rfc3339(data["created_at"]),
            usd_per_hour=float(data["usd_per_hour"]),
            instances=int(data.get("instances", 0)),
            instance_types=tuple(data.get("instance_types", ())),
        )


@dataclass(frozen=True)
class Life:
    """One cluster from start to end (``ended_at`` None: still running)."""

    record: StartRecord
    ended_at: dt.datetime | None = None
    how: str | None = None

    @property
    def running(self) -> bool:
        """True while no end has been recorded."""
        return self.ended_at is None

    def end_or(self, now: dt.datetime) -> dt.datetime:
        """When the life ended, or ``now`` for a running one."""
        return self.ended_at if self.ended_at is not None else now

    def hours(
        self,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        now: dt.datetime | None = None,
    ) -> float:
        """Hours lived inside ``[since, until)``; a running life counts up to ``now``."""
        return overlap_hours(self.record.created_at, self.end_or(now or utcnow()), since, until)

    def cost(
        self,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        now: dt.datetime | None = None,
    ) -> float:
        """Estimated USD spent inside the window (the plan's $/h x overlapping hours)."""
        return self.record.usd_per_hour * self.hours(since, until, now)


def _check_how(how: str) -> None:
    if how not in ENDINGS:
        raise SpecError("how", how, f"must be one of {', '.join(ENDINGS)}", "how='closed'")


def pair(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Each start event with the end event that closed it (None: still running). Pure.

    An end closes the latest open life of its cluster that started at or before it (cluster
    names can be reused after deletion); an end with no open life - a repeated end, or one
    whose start was never recorded - is ignored.
    """
    # Starts before ends at the same instant, so a life that ends the second it began folds.
    ordered = sorted(events, key=lambda e: (e["at"], e["event"] != "start"))
    pairs: list[list[Any]] = []
    open_index: dict[str, int] = {}
    for event in ordered:
        cluster = event["cluster"]
        if event["event"] == "start":
            open_index[cluster] = len(pairs)
            pairs.append([event, None])
        elif event["event"] == "end" and cluster in open_index:
            pairs[open_index.pop(cluster)][1] = event
    return [(start, end) for start, end in pairs]


def fold(events: list[dict[str, Any]]) -> list[Life]:
    """Lives from ledger events (paired as :func:`pair` says), in start order. Pure."""
    return [
        Life(
            StartRecord.from_json(start),
            parse_rfc3339(end["at"]) if end else None,
            end["how"] if end else None,
        )
        for start, end in pair(events)
    ]


_EVENT_NAME = re.compile(r"(\d{8}T\d{6}Z)-(.+)-(start|end)-[0-9a-f]+\.json")


def _event_from_name(path: str) -> dict[str, Any] | None:
    found = _EVENT_NAME.fullmatch(path.rsplit("/", 1)[-1])
    if found is None:
        return None
    at = dt.datetime.strptime(found[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    return {"at": rfc3339(at), "event": found[3], "cluster": found[2], "path": path}


def relevant_paths(
    paths: list[str],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    cluster: str | None = None,
) -> list[str]:
    """The event files worth fetching for lives overlapping ``[since, until)``. Pure.

    File names carry the time, cluster and kind of each event, so lives are paired from the
    listing alone and only the files of lives that can overlap the window (or of ``cluster``)
    are read: ``recc cost`` for this month does not fetch last year's events.
    """
    named = [e for e in map(_event_from_name, paths) if e is not None]
    if cluster is not None:
        named = [e for e in named if e["cluster"] == cluster]
    keep = []
    for start, end in pair(named):
        if until is not None and parse_rfc3339(start["at"]) >= until:
            continue
        if since is not None and end is not None and parse_rfc3339(end["at"]) <= since:
            continue
        keep += [start["path"]] + ([end["path"]] if end else [])
    return keep


def in_window(
    lives: list[Life],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> list[Life]:
    """The lives that overlap ``[since, until)`` at all. Pure."""
    now = now or utcnow()
    return [
        life
        for life in lives
        if (until is None or life.record.created_at < until)
        and (since is None or life.end_or(now) > since)
    ]


def default_url() -> str:
    """``recc.cost.ledger-url``, or ``<state-dir>/ledger``."""
    return str(config.get("cost.ledger-url") or config.state_dir() / "ledger")


class Ledger:
    """The ledger at ``url`` (default :func:`default_url`).

    Writes raise :class:`~recc.errors.BackendError` naming the URL; callers in the cluster
    lifecycle should warn rather than fail a cluster over its bookkeeping.
    """

    def __init__(self, url: str | None = None, storage_options: dict[str, Any] | None = None):
        self.url = (url or default_url()).rstrip("/")
        options = storage_options
        if options is None:
            options = dict(config.get("cost.ledger-storage-options") or {})
        self._fs, root = fsspec.core.url_to_fs(self.url, **options)
        self._events = f"{root.rstrip('/')}/events"

    def record_start(self, record: StartRecord) -> str:
        """Append the start of a life; returns the path of the event written."""
        event = {"event": "start", "at": rfc3339(record.created_at), **record.to_json()}
        return self._append(record.cluster, event)

    def record_end(
        self, cluster: str, ended_at: dt.datetime | None = None, how: str = "closed"
    ) -> str:
        """Append the end of ``cluster``'s current life (``how``: closed, down, reaped, failed).

        Safe to call twice: readers ignore an end for a life that already ended.
        """
        _check_how(how)
        at = rfc3339(ended_at or utcnow())
        event = {"event": "end", "at": at, "cluster": cluster, "how": how}
        return self._append(cluster, event)

    def events(
        self,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        cluster: str | None = None,
    ) -> list[dict[str, Any]]:
        """The events of lives that can overlap ``[since, until)`` (of ``cluster`` only, when
        given); with no arguments, every event. Unreadable files are logged and skipped."""
        try:
            # Other processes append all the time: never trust a cached listing (s3fs keeps one).
            self._fs.invalidate_cache(self._events)
            paths = relevant_paths(self._fs.find(self._events), since, until, cluster)
            blobs = self._fs.cat(paths) if paths else {}
        except OSError as e:
            raise BackendError(f"cannot read the ledger at {self.url}: {e}") from e
        events = []
        for path, blob in sorted(blobs.items()):
            try:
                event = json.loads(blob)
                if event.get("event") in ("start", "end") and "cluster" in event and "at" in event:
                    events.append(event)
                    continue
            except ValueError:
                pass
            logger.warning("skipping unreadable ledger event %s", path)
        return events

    def read_lives(
        self,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        now: dt.datetime | None = None,
        cluster: str | None = None,
    ) -> list[Life]:
        """Lives overlapping ``[since, until)`` (None: unbounded), in start order; only
        ``cluster``'s lives when given."""
        return in_window(fold(self.events(since, until, cluster)), since, until, now)

    def _append(self, cluster: str, event: dict[str, Any]) -> str:
        stamp = parse_rfc3339(event["at"]).strftime("%Y%m%dT%H%M%SZ")
        name = f"{stamp}-{cluster}-{event['event']}-{secrets.token_hex(4)}.json"
        path = f"{self._events}/{name}"
        data = json.dumps({"v": _FORMAT_VERSION, **event}, sort_keys=True).encode()
        try:
            if isinstance(self._fs, LocalFileSystem):
                # Readers only see *.json, and rename is atomic: never half an event.
                self._fs.makedirs(self._events, exist_ok=True)
                tmp = f"{path}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            else:
                self._fs.pipe_file(path, data)  # one PUT: atomic on object stores
        except OSError as e:
            raise BackendError(f"cannot write to the ledger at {self.url}: {e}") from e
        return path


def record_start(record: StartRecord, ledger: Ledger | None = None) -> str:
    """Record that a cluster started, in the configured ledger (see :class:`Ledger`)."""
    return (ledger or Ledger()).record_start(record)


def record_end(
    cluster: str,
    ended_at: dt.datetime | None = None,
    how: str = "closed",
    ledger: Ledger | None = None,
) -> str:
    """Record that ``cluster`` ended (``how``: closed, down, reaped, failed); idempotent."""
    return (ledger or Ledger()).record_end(cluster, ended_at, how)


def read_lives(
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    now: dt.datetime | None = None,
    ledger: Ledger | None = None,
    cluster: str | None = None,
) -> list[Life]:
    """Lives in the configured ledger overlapping ``[since, until)`` (of ``cluster`` only,
    when given: e.g. to tell whether it already ended)."""
    return (ledger or Ledger()).read_lives(since, until, now, cluster)
