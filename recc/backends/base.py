"""What every backend offers, so RECCCluster, the CLI and the harvester treat them alike.

Backend methods are synchronous (they wrap subprocesses and HTTP APIs); RECCCluster runs them
in a thread so the cluster object works with ``asynchronous=True`` too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from distributed.security import Security

from recc.estimate import Estimate
from recc.state import ClusterRecord

# Reports progress of long waits: (phase, done, total). The CLI draws bars from it.
Progress = Callable[[str, int, int], None]


def no_progress(phase: str, done: int, total: int) -> None:
    """A progress callback that reports nothing."""


@dataclass(frozen=True)
class ClusterStatus:
    """What a backend can see of a cluster right now."""

    state: str  # running | starting | failed | stopped
    workers_running: int
    detail: str = ""


class Backend(Protocol):
    """The operations a backend implements (see recc.backends.local for the reference)."""

    name: str

    def create(
        self, record: ClusterRecord, estimate: Estimate, progress: Progress
    ) -> ClusterRecord:
        """Create everything ``record`` describes; on failure remove what was made, then raise."""

    def scale(self, record: ClusterRecord, n_workers: int) -> ClusterRecord:
        """Run ``n_workers`` workers in the default group."""

    def delete(self, name: str) -> bool:
        """Remove every trace of cluster ``name``; False when there was nothing left."""

    def find(self, name: str) -> ClusterRecord:
        """The record of ``name`` (raises ClusterNotFound)."""

    def list(self) -> list[ClusterRecord]:
        """Every cluster of this backend."""

    def status(self, record: ClusterRecord) -> ClusterStatus:
        """Whether the cluster's processes are alive."""

    def security(self, record: ClusterRecord) -> Security:
        """The TLS settings a client needs to reach the scheduler."""

    def logs(self, record: ClusterRecord, worker: str | None = None) -> dict[str, str]:
        """Log text per process (scheduler, each worker host), optionally for one worker."""


def get_backend(name: str | None = None) -> Backend:
    """The backend called ``name``, else ``recc.backend``, else eks when an EKS platform is
    configured, else local."""
    from recc import config
    from recc.errors import ConfigError

    chosen = name or config.get("backend") or ("eks" if config.get("eks.cluster-name") else "local")
    if chosen == "local":
        from recc.backends.local import LocalBackend

        return LocalBackend()
    if chosen == "eks":
        from recc.backends.eks import EKSBackend

        return EKSBackend()
    raise ConfigError(
        f"backend={chosen!r}: unknown backend (for example: backend='local' or 'eks')"
    )
