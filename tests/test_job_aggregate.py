"""The job on a real Dask cluster: results match pandas, failures stay in their group, and
memory restrictions reach the scheduler."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from recc.jobs import aggregate, generate, plan
from recc.jobs.aggregate import cluster_capacity

MEMORY_MIB = 1024


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=f"{MEMORY_MIB}MiB",
                      resources={"MEMORY": MEMORY_MIB}, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            yield c


def check(result, groups: dict[str, list[str]], base: str) -> None:
    for group, files in groups.items():
        r = result.groups[group]
        assert r.status == "done", r.error
        got = pd.read_parquet(r.output)
        if not files:
            assert len(got) == 0 and list(got.columns) == ["path", "Date", "value"]
            continue
        want = pd.concat(pd.read_parquet(f"{base}/{f}") for f in files)
        want = want.groupby(["path", "Date"]).value.sum()
        got = got.set_index(["path", "Date"]).value
        assert got.index.is_unique and len(got) == len(want)
        np.testing.assert_allclose(got.reindex(want.index).to_numpy(), want.to_numpy(),
                                   rtol=1e-12, atol=1e-12)


class RecordSumTasks(SchedulerPlugin):
    """Records where each of the job's summing tasks ran and its resource restrictions, as
    the scheduler holds them."""

    name = "record-sum-tasks"

    def __init__(self):
        self.tasks: dict[str, tuple[str, dict]] = {}

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "processing" and str(key).startswith("recc-sum"):
            ts = self.scheduler.tasks[key]
            self.tasks[str(key)] = (ts.processing_on.address,
                                    dict(ts.resource_restrictions or {}))


def recording_sum_tasks(client, run):
    """``run()``'s result and the summing tasks it made: {key: (worker, restrictions)}."""
    client.register_plugin(RecordSumTasks())
    try:
        result = run()
        tasks = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.plugins[RecordSumTasks.name].tasks)
    finally:
        client.unregister_scheduler_plugin(RecordSumTasks.name)
    return result, tasks


@pytest.mark.parametrize("shape", [
    dict(),
    dict(shuffle_each=True),
    dict(missing=0.15),
    dict(shuffle_each=True, missing=0.3, row_group_size=50),
])
def test_every_group_shape_matches_pandas(client, tmp_path, shape):
    # 1 file, an empty group, a few files, and a group split into lanes (max 4 files/task).
    info = generate(str(tmp_path / "in"), group_sizes=[1, 0, 3, 11], paths=25, dates=12,
                    seed=hash(tuple(shape)) % 1000, **shape)
    result = aggregate(info.output, str(tmp_path / "out"), client=client, max_files_per_task=4)
    assert result.ok, result.failed
    check(result, info.groups, info.output)
    assert result.groups["g003"].tasks == 4  # three lanes and the final
    assert sorted(os.listdir(tmp_path / "out")) == [f"g00{i}.parquet" for i in range(4)]


def test_restrictions_reach_the_scheduler(client, tmp_path):
    info = generate(str(tmp_path / "in"), group_sizes=[2, 9], paths=40, dates=12)
    result, tasks = recording_sum_tasks(client, lambda: aggregate(
        info.output, str(tmp_path / "out"), client=client, max_files_per_task=4))
    seen = {key: restrictions for key, (_, restrictions) in tasks.items()}
    assert result.ok
    sums = {k: v for k, v in seen.items()}
    assert len(sums) == result.groups["g000"].tasks + result.groups["g001"].tasks == 1 + 4
    for key, restriction in sums.items():
        assert set(restriction) == {"MEMORY"}, key
        assert 0 < restriction["MEMORY"] <= MEMORY_MIB, key
    requested = max(r["MEMORY"] for r in sums.values())
    assert requested == max(g.memory_mib for g in result.groups.values())


def test_a_bad_file_fails_its_group_only(client, tmp_path):
    info = generate(str(tmp_path / "in"), group_sizes=[3, 6, 2], paths=40, dates=12)
    corrupt = f"{info.output}/{info.groups['g001'][4]}"
    data = bytearray(open(corrupt, "rb").read())
    data[100:3000] = b"\xff" * 2900
    open(corrupt, "wb").write(bytes(data))
    os.remove(f"{info.output}/{info.groups['g002'][1]}")
    out = tmp_path / "out"
    result = aggregate(info.output, str(out), client=client, max_files_per_task=2)
    assert result.groups["g000"].status == "done"
    assert result.failed.keys() == {"g001", "g002"}
    assert info.groups["g001"][4] in result.failed["g001"]
    assert info.groups["g002"][1] in result.failed["g002"]
    assert "not found" in result.failed["g002"]
    # Nothing half-written: only the good group's output, no scratch, no temporary files.
    assert sorted(os.listdir(out)) == ["g000.parquet"]
    check(result, {"g000": info.groups["g000"]}, info.output)


@pytest.mark.parametrize("per_task", [None, 2], ids=["one-task", "lanes"])
def test_the_layout_is_the_most_common_key_order_not_the_first_file(client, tmp_path, per_task):
    """An odd file listed first (some keys missing, its own row order) is aligned on its own;
    the files that share a key order are still added by byte compare."""
    generate(str(tmp_path / "odd"), files=1, paths=30, dates=10, seed=32, missing=0.2,
             shuffle_each=True)
    alike = generate(str(tmp_path / "alike"), files=5, paths=30, dates=10, seed=32)
    names = ["odd/part-00000.parquet", *(f"alike/{f}" for f in alike.groups["g000"])]
    result = aggregate(groups={"g": [str(tmp_path / n) for n in names]},
                       output=str(tmp_path / "out"), client=client, max_files_per_task=per_task)
    assert result.ok, result.failed
    tally = result.groups["g"].tally
    assert (tally.same_bytes, tally.aligned) == (5, 1)
    check(result, {"g": names}, str(tmp_path))


@pytest.mark.parametrize("per_task", [None, 1], ids=["one-task", "lanes"])
def test_keys_beyond_the_reservation_rerun_exactly(client, tmp_path, per_task):
    """Files with disjoint keys outgrow the default reservation; the group re-runs sized for
    all of its rows and still matches pandas. In lanes, each lane's sums also hold the
    layout's keys, which its reservation must count."""
    parts = []
    for i in range(3):
        info = generate(str(tmp_path / f"in{i}"), files=1, paths=30, dates=10, seed=i)
        frame = pd.read_parquet(f"{info.output}/part-00000.parquet")
        frame["path"] += 1000 * i  # a different set of paths in every file
        name = tmp_path / f"disjoint-{i}.parquet"
        frame.to_parquet(name)
        parts.append(str(name))
    result = aggregate(groups={"d": parts}, output=str(tmp_path / "out"), client=client,
                       max_files_per_task=per_task)
    assert result.ok, result.failed
    check(result, {"d": [os.path.basename(p) for p in parts]}, str(tmp_path))
    assert result.groups["d"].rows_out == 900


def test_a_task_larger_than_any_worker_fails_before_running(client, tmp_path, monkeypatch):
    # Pretend each task needs 4 GiB beyond its rows: more than these 1 GiB workers hold.
    monkeypatch.setattr(plan, "FIXED_BYTES", 4 << 30)
    info = generate(str(tmp_path / "in"), group_sizes=[1, 1], paths=20, dates=5)
    result = aggregate(info.output, str(tmp_path / "out"), client=client)
    assert result.failed.keys() == {"g000", "g001"}
    assert not os.path.exists(tmp_path / "out" / "g000.parquet")
    assert "largest worker offers" in result.failed["g000"]
    assert "--worker-memory" in result.failed["g000"]


def test_capacity_scales_requests_to_memory_below_the_pause_threshold(client):
    capacity = cluster_capacity(client)
    assert capacity.slots == 2 and capacity.largest == MEMORY_MIB
    # 1024 MiB limit x 0.8 pause, minus what each worker already uses: scale above 1/0.8.
    assert capacity.scale > 1.25


def test_a_cluster_without_the_resource_is_refused(tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster) as c:
            info = generate(str(tmp_path / "in"), files=1, paths=5, dates=5)
            with pytest.raises(Exception, match="MEMORY"):
                aggregate(info.output, str(tmp_path / "out"), client=c)


def test_many_groups_of_very_different_sizes_at_once(client, tmp_path):
    sizes = [1] * 12 + [0, 2, 5, 17, 30]
    info = generate(str(tmp_path / "in"), group_sizes=sizes, paths=15, dates=8, seed=3,
                    missing=0.05)
    result, tasks = recording_sum_tasks(client, lambda: aggregate(
        info.output, str(tmp_path / "out"), client=client, max_files_per_task=6))
    ran_on = {key: worker for key, (worker, _) in tasks.items()}
    assert result.ok, result.failed
    check(result, info.groups, info.output)
    # 15 single-task groups (one is empty), then lanes + final for 17 files (3+1) and 30 (5+1).
    assert len(ran_on) == sum(g.tasks for g in result.groups.values()) == 15 + 4 + 6
    assert len(set(ran_on.values())) == 2  # both workers took work


def with_null_keys(src: str, dest, rows: list[int]) -> str:
    """``src`` with the path of ``rows`` set to null, written to ``dest``."""
    frame = pd.read_parquet(src)
    frame["path"] = frame["path"].astype("Int64")
    frame.loc[rows, "path"] = pd.NA
    frame.to_parquet(dest)
    return str(dest)


@pytest.mark.parametrize("per_task", [None, 1], ids=["one-task", "lanes"])
def test_rows_with_null_keys_are_counted_per_group_and_warned_once(client, tmp_path, caplog,
                                                                  per_task):
    info = generate(str(tmp_path / "in"), group_sizes=[3, 2, 1], paths=20, dates=6, seed=4)
    files = {g: [f"{info.output}/{f}" for f in fs] for g, fs in info.groups.items()}
    files["g000"][0] = with_null_keys(files["g000"][0], tmp_path / "n0.parquet", [0, 5])
    files["g000"][2] = with_null_keys(files["g000"][2], tmp_path / "n2.parquet", [1])
    files["g001"][1] = with_null_keys(files["g001"][1], tmp_path / "n1.parquet", [2, 3, 4, 9])
    with caplog.at_level("WARNING", logger="recc.jobs.aggregate"):
        result = aggregate(groups=files, output=str(tmp_path / "out"), client=client,
                           max_files_per_task=per_task)
    assert result.ok, result.failed
    check(result, files, "")
    skipped = {g: r.rows_skipped_null_key for g, r in result.groups.items()}
    assert skipped == {"g000": 3, "g001": 4, "g002": 0}
    assert result.rows_skipped_null_key == 7
    assert result.groups["g000"].rows_in == 3 * 120  # read, including the skipped rows
    warnings = [r for r in caplog.records if r.name == "recc.jobs.aggregate"]
    assert len(warnings) == 1
    assert "7 row(s) with a null path or Date" in warnings[0].getMessage()
    assert "g000: 3, g001: 4" in warnings[0].getMessage()


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_outputs_on_a_cluster_follow_the_callers_umask(client, tmp_path, mask):
    info = generate(str(tmp_path / "in"), group_sizes=[1, 5], paths=10, dates=4)
    old = os.umask(mask)
    try:
        result = aggregate(info.output, str(tmp_path / "out"), client=client,
                           max_files_per_task=2)
    finally:
        os.umask(old)
    assert result.ok, result.failed
    for group in result.groups.values():
        assert os.stat(group.output).st_mode & 0o777 == 0o666 & ~mask, group.group
