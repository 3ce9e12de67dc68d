"""The harvest scenarios both backends run (tests/test_harvest_local.py and
tests/test_harvest_eks.py): the six cluster states the harvest issue names, built the same
way, and the decisions the harvester must make about them."""

from __future__ import annotations

import json
import time
from typing import Any

from distributed import Client, fire_and_forget
from helpers import wait_for

from recc import RECCCluster
from recc.errors import BackendError
from recc.state import ClusterRecord

# What every scenario sets so that the harvester decides at once (each adds its own graces).
FAST = {
    "recc.harvest.idle-timeout": "1s",
    "recc.harvest.grace-period": 0,
    "recc.harvest.orphan-grace": 0,
}


def leave_running(name: str, attempts: int = 1, **spec: Any) -> ClusterRecord:
    """A cluster left running (as `recc up` leaves it): 1 worker of 512 MiB, no idle shutdown
    of its own unless asked, so the harvester is what ends it. Up to ``attempts`` tries: a
    failed start has rolled itself back, so trying again is safe."""
    spec = {"n_workers": 1, "worker_memory": "512MiB", "idle_timeout": "never", **spec}
    for attempt in range(1, attempts + 1):
        try:
            cluster = RECCCluster(name=name, shutdown_on_close=False, quiet=True, **spec)
            cluster.close()
            break
        except BackendError:
            if attempt == attempts:
                raise
    assert cluster.record is not None
    return cluster.record


def six_states(prefix: str) -> dict[str, dict[str, Any]]:
    """Specs of the six clusters the harvest issue names, ``<prefix>-busy`` and so on: busy,
    a client connected, truly idle, protected, scheduler killed, past its max lifetime. The
    test puts each in its state; :func:`six_decisions` says what must be decided."""
    return {
        f"{prefix}-busy": {"worker_cpu": 2},  # one thread sleeps, the other computes afterwards
        f"{prefix}-client": {},
        f"{prefix}-idle": {},
        f"{prefix}-protected": {},
        f"{prefix}-killed": {},
        f"{prefix}-expired": {"max_lifetime": "2s"},
    }


def six_decisions(prefix: str, unreachable: str) -> dict[str, tuple[str, str, str]]:
    """What the harvester decides for :func:`six_states` (decision, category, start of the
    reason); ``unreachable`` is how the backend words the killed scheduler."""
    return {
        f"{prefix}-busy": ("keep", "busy", "busy: 1 task processing"),
        f"{prefix}-client": ("keep", "in-use", "in use: 1 client connected"),
        f"{prefix}-idle": ("reap", "idle", "idle for "),
        f"{prefix}-protected": (
            "keep",
            "protected",
            f"protected (recc unprotect {prefix}-protected",
        ),
        f"{prefix}-killed": ("reap", "unreachable", unreachable),
        f"{prefix}-expired": ("reap", "expired", "expired at "),
    }


def start_a_long_task(client: Client) -> None:
    """Make ``client``'s cluster busy: a 300 s task, already running when this returns."""
    fire_and_forget(client.submit(time.sleep, 300, pure=False))
    wait_for(lambda: any(client.processing().values()), 30, "the long task to start")


def rows_by_cluster(output: str) -> dict[str, dict]:
    """The rows of ``recc harvest --json``, by cluster name."""
    return {row["cluster"]: row for row in json.loads(output)}


def assert_decisions(rows: dict[str, dict], expected: dict[str, tuple[str, str, str]]) -> None:
    """Exactly the ``expected`` clusters are in ``rows``, each with its decision, category and
    a reason that starts as expected: ``{"c": ("reap", "idle", "idle for ")}``."""
    assert set(rows) == set(expected)
    for name, (decision, category, reason) in expected.items():
        row = rows[name]
        assert (row["decision"], row["category"]) == (decision, category), row
        assert row["reason"].startswith(reason), row
