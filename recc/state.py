"""Per-user records of clusters, kept in the state directory.

One directory per cluster: ``record.json`` (written atomically), ``tls/`` and ``logs/``.
For the local backend these records are the truth; for EKS they are only a cache (tags and
labels decide). A lock file makes two ``recc`` commands at once safe.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recc import config
from recc.errors import ClusterNotFound
from recc.naming import check_cluster_name


@dataclass
class ClusterRecord:
    """What is known about one cluster: enough to find, connect to and delete it."""

    name: str
    backend: str
    owner: str
    created_at: str
    spec: dict[str, Any]
    usd_per_hour: float = 0.0
    vcpus: float = 0.0  # what quotas count: instance vCPUs on EKS, requested cores on local
    scheduler_address: str | None = None
    dashboard_link: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return asdict(self)


def clusters_dir() -> Path:
    """Where cluster directories live."""
    return config.state_dir() / "clusters"


def cluster_dir(name: str) -> Path:
    """The directory of cluster ``name`` (record, TLS files, logs).

    Raises :class:`~recc.errors.SpecError` for a name that is not a cluster name: only a valid
    one is a single path component, so no name can lead outside :func:`clusters_dir`
    (``../../victim``, ``/home/alice``) and be read, written or deleted there.
    """
    return clusters_dir() / check_cluster_name(name)


@contextmanager
def locked() -> Iterator[None]:
    """An exclusive lock over the state directory, for read-modify-write sequences."""
    clusters_dir().mkdir(parents=True, exist_ok=True)
    with open(clusters_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save(record: ClusterRecord) -> None:
    """Write ``record`` atomically (readers see the old or the new file, never half)."""
    directory = cluster_dir(record.name)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f".record.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record.to_dict(), indent=2))
    os.replace(tmp, directory / "record.json")


def load(name: str) -> ClusterRecord:
    """The record of cluster ``name``; :class:`ClusterNotFound` if there is none."""
    path = cluster_dir(name) / "record.json"
    try:
        return ClusterRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise ClusterNotFound(f"no cluster named {name!r} (see `recc ls`)") from None


def load_all(backend: str | None = None) -> list[ClusterRecord]:
    """Every recorded cluster (of ``backend``), oldest first."""
    records = []
    for path in clusters_dir().glob("*/record.json"):
        try:
            record = ClusterRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # a directory being deleted right now
        if record.name != path.parent.name:
            continue  # not a record RECC wrote: acting on its name would touch another place
        if backend is None or record.backend == backend:
            records.append(record)
    return sorted(records, key=lambda r: r.created_at)


def remove(name: str) -> None:
    """Forget cluster ``name`` (idempotent)."""
    shutil.rmtree(cluster_dir(name), ignore_errors=True)


def exists(name: str) -> bool:
    """Whether a record of ``name`` exists."""
    return (cluster_dir(name) / "record.json").is_file()
