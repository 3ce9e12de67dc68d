"""The README's quick start: generate data, aggregate it on a fresh local cluster, check it.

>>> report = run_demo()  # doctest: +SKIP
>>> report.max_abs_error < 1e-9  # doctest: +SKIP
True
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recc.datastore import DataStore
from recc.jobs.aggregate import AggregateResult, ProgressCallback, aggregate
from recc.jobs.generate import generate

# One file alone, an empty group, a few files, and a group big enough to be split into lanes.
DEMO_GROUP_SIZES = (1, 0, 3, 12)


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured."""

    directory: str
    result: AggregateResult
    rows: int
    seconds: float
    groups_checked: int
    max_abs_error: float


def check_against_pandas(result: AggregateResult, groups: dict[str, list[str]], base: str) -> float:
    """Largest |RECC - pandas group-by| over every key of every group (small data only)."""
    worst = 0.0
    for group, files in groups.items():
        got = pd.read_parquet(result.groups[group].output)
        if not files:
            if len(got):
                raise AssertionError(f"group {group} has no files but {len(got)} output rows")
            continue
        frames = [pd.read_parquet(f"{base}/{f}") for f in files]
        want = pd.concat(frames).groupby(["path", "Date"]).value.sum()
        got = got.set_index(["path", "Date"]).value
        if len(got) != len(want) or not got.index.is_unique:
            raise AssertionError(f"group {group}: {len(got)} output rows, pandas has {len(want)}")
        diff = got.reindex(want.index).to_numpy() - want.to_numpy()
        worst = max(worst, float(np.abs(diff).max()))
    return worst


def run_demo(
    n_workers: int = 2,
    paths: int = 2_000,
    dates: int = 120,
    worker_memory: str = "1GiB",
    progress: ProgressCallback | None = None,
    log: Callable[[str], Any] = print,
    **spec: Any,
) -> DemoReport:
    """Generate, start a local RECC cluster, aggregate, compare with pandas, tear down."""
    from recc import RECCClient, RECCCluster

    store = DataStore()
    with tempfile.TemporaryDirectory(prefix="recc-demo-") as work:
        data, sums = f"{work}/sims", f"{work}/sums"
        generated = generate(data, group_sizes=list(DEMO_GROUP_SIZES), paths=paths, dates=dates,
                             datastore=store)
        log(f"generated {sum(DEMO_GROUP_SIZES)} files, {generated.rows:,} rows, in {data}")
        spec = {"n_workers": n_workers, "worker_memory": worker_memory, "worker_cpu": 1, **spec}
        with RECCCluster(backend="local", **spec) as cluster, RECCClient(cluster) as client:
            client.wait_for_workers(n_workers)
            log(f"cluster {getattr(cluster, 'name', '')} up with {n_workers} workers")
            start = time.perf_counter()
            result = aggregate(data, sums, client=client, datastore=store, progress=progress)
            seconds = time.perf_counter() - start
        result.raise_for_errors()
        error = check_against_pandas(result, generated.groups, data)
        return DemoReport(work, result, generated.rows, seconds, len(generated.groups), error)
