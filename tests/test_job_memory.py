"""A group four times the cluster's memory completes on small workers without any worker
pausing, restarting or dying, and no worker's peak memory reaches its pause threshold."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from recc.jobs import aggregate, generate

WORKER_MIB = 400
WORKERS = 2
PAUSE = 0.8
COPIES = 84


def reset_peak_rss() -> None:
    # Linux: writing 5 resets the process's peak resident set size to its current size.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_group_four_times_cluster_memory(tmp_path):
    # Eight distinct files of 250,080 rows, each listed 84 times (hard links): 168 M rows,
    # 3.4 GB decoded (path int64 + Date date32 + value float64), 4x the 800 MiB of workers.
    info = generate(str(tmp_path / "in"), files=8, paths=2_084, dates=120, seed=1)
    distinct = [f"{info.output}/{f}" for f in info.groups["g000"]]
    entries = []
    for copy in range(COPIES):
        for i, src in enumerate(distinct):
            link = tmp_path / "in" / f"copy-{copy:02d}-{i}.parquet"
            os.link(src, link)
            entries.append(str(link))
    rows = COPIES * 8 * 2_084 * 120
    decoded_mib = rows * 20 / 2**20
    assert decoded_mib >= 4 * WORKERS * WORKER_MIB

    with LocalCluster(n_workers=WORKERS, threads_per_worker=2, memory_limit=f"{WORKER_MIB}MiB",
                      resources={"MEMORY": WORKER_MIB}, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            client.wait_for_workers(WORKERS)
            before = set(client.scheduler_info()["workers"])
            client.run(reset_peak_rss)
            result = aggregate(groups={"big": entries}, output=str(tmp_path / "out"),
                               client=client)
            peaks = client.run(peak_rss_mib)
            after = set(client.scheduler_info()["workers"])
            events = client.get_events()
    assert result.ok, result.failed
    assert result.groups["big"].rows_in == rows
    assert after == before, "a worker was restarted or lost"
    status_changes = [
        msg for topic_events in events.values() for _, msg in topic_events
        if isinstance(msg, dict) and msg.get("action") == "worker-status-change"
    ]
    assert not [m for m in status_changes if m.get("status") != "running"], status_changes
    for address, peak in peaks.items():
        assert peak < WORKER_MIB * PAUSE, f"{address} peaked at {peak:.0f} MiB"

    # The sum is COPIES x the sum of the eight distinct files.
    want = pd.concat(pd.read_parquet(f) for f in distinct).groupby(["path", "Date"]).value.sum()
    got = pd.read_parquet(result.groups["big"].output).set_index(["path", "Date"]).value
    np.testing.assert_allclose(got.reindex(want.index).to_numpy(), COPIES * want.to_numpy(),
                               rtol=1e-9)
