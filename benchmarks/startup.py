"""How fast a local RECC cluster comes up, beside distributed.LocalCluster(processes=True).

Both start N single-threaded workers with the same memory limit and are timed from the call
until N workers are connected; the ratio RECC/LocalCluster is the figure to watch (target
<= 1.5x). RECC does more: per-cluster CA and certificates, TLS-only listeners, detached
processes that outlive this script, a state record.

    python benchmarks/startup.py --workers 1 2 4 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import dask.config
from distributed import Client, LocalCluster

from recc import RECCCluster


def time_recc(n: int) -> float:
    start = time.perf_counter()
    with RECCCluster(n_workers=n, worker_memory="1GiB", worker_cpu=1, quiet=True) as cluster:
        elapsed = time.perf_counter() - start
        with Client(cluster) as client:
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == n
    return elapsed


def time_local_cluster(n: int) -> float:
    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            memory_limit="1GiB",
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(n)
        elapsed = time.perf_counter() - start
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state, dask.config.set({"recc.state-dir": state}):
        print(f"{'workers':>7} {'RECC s':>8} {'LocalCluster s':>15} {'ratio':>6}")
        for n in args.workers:
            recc = statistics.median(time_recc(n) for _ in range(args.repeat))
            local = statistics.median(time_local_cluster(n) for _ in range(args.repeat))
            print(f"{n:>7} {recc:>8.2f} {local:>15.2f} {recc / local:>5.2f}x")


if __name__ == "__main__":
    main()
