"""The harvester's bookkeeping on this machine: per-cluster locks and what it remembers
between passes (since when a scheduler has not answered; which reaps were interrupted).

Locks are ``fcntl`` locks on files in ``<state-dir>/harvest/locks``: two harvesters on one
machine never delete the same cluster at once, and a lock dies with its process, so a crashed
harvester blocks nobody. The memory is one JSON file, rewritten atomically under its own lock.
The EKS backend keeps the same two things in Kubernetes instead (:mod:`recc.harvest.eks`).

Example
-------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with file_lock(root / "c1.lock", wait=0, holder="alice@laptop pid 1") as other:
...     print(other)
...     with file_lock(root / "c1.lock", wait=0, holder="bob@ci pid 2") as second:
...         print(second)
None
alice@laptop pid 1
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recc import config
from recc.naming import current_user
from recc.units import seconds


def harvest_dir() -> Path:
    """``<state-dir>/harvest``: the local harvester's locks and memory."""
    return config.state_dir() / "harvest"


def harvester_identity() -> dict[str, Any]:
    """Who is harvesting: user, host and process (for locks and the audit trail)."""
    return {"user": current_user(), "host": socket.gethostname(), "pid": os.getpid()}


def holder_name(identity: Mapping[str, Any]) -> str:
    """``alice@laptop pid 4242``: a lock holder as people read it."""
    return f"{identity['user']}@{identity['host']} pid {identity['pid']}"


def lock_wait() -> float:
    """Seconds to wait for another harvester's lock (``recc.harvest.lock-wait``, default 120)."""
    return seconds(config.get("harvest.lock-wait", default=120))


@contextmanager
def file_lock(path: Path, wait: float, holder: str) -> Iterator[str | None]:
    """Hold an exclusive lock on ``path``; yields None when held, else who holds it.

    Waits up to ``wait`` seconds for another holder to finish, then gives up (yielding the
    holder's name, which it writes into the file while it holds the lock).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.seek(0)
                    yield f.read().strip() or "another harvester"
                    return
                time.sleep(0.05)
        try:
            f.seek(0)
            f.truncate()
            f.write(holder)
            f.flush()
            yield None
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def cluster_lock(cluster: str, wait: float | None = None) -> Iterator[str | None]:
    """This machine's harvest lock on ``cluster`` (see :func:`file_lock`)."""
    holder = holder_name(harvester_identity())
    path = harvest_dir() / "locks" / f"{cluster}.lock"
    with file_lock(path, lock_wait() if wait is None else wait, holder) as other:
        yield other


class LocalMemory:
    """What the harvester remembers about clusters between passes, in one JSON file:
    cluster -> {"unreachable_since": RFC 3339, "reaping": {...}}."""

    def __init__(self, path: Path | None = None):
        self.path = path or harvest_dir() / "memory.json"

    def load(self) -> dict[str, dict[str, Any]]:
        """Everything remembered (empty when nothing is, or the file is unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update(self, changes: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Merge ``changes`` (cluster -> entry; None forgets the cluster) into the memory."""
        if not changes:
            return
        with file_lock(self.path.with_suffix(".lock"), wait=60, holder="memory") as other:
            if other is not None:
                return  # another pass is writing; what it writes is as recent as ours
            data = self.load()
            for cluster, entry in changes.items():
                if entry:
                    data[cluster] = dict(entry)
                else:
                    data.pop(cluster, None)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
