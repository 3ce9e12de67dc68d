"""The harvester on the local backend, with real schedulers and workers.

One pass over six clusters in the states the issue names (busy, a client connected, truly
idle, protected, scheduler killed, past its max lifetime): only the right ones are reaped, each
with the right reason, and the busy one still computes afterwards. Then the schedulers' own
idle shutdown, two harvesters at once, the deletion cap, protection from the command line,
and keeping clusters whose evidence cannot be read.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dask.config
import harvest_cases as cases
import psutil
import pytest
from distributed import Client
from helpers import run_cli, wait_for
from typer.testing import CliRunner

from recc import RECCCluster, state
from recc.cli import harvest as harvest_cli
from recc.cli.main import app
from recc.clusters import delete_cluster
from recc.errors import ClusterNotFound
from recc.harvest.audit import read_reaps
from recc.harvest.locks import LocalMemory
from recc.harvest.probe import ask_all
from recc.harvest.protect import protect
from recc.harvest.reap import harvest
from recc.ledger import Ledger
from recc.state import ClusterRecord
from recc.tags import rfc3339

# A dead process needs no unreachable grace; a silent one would.
FAST = {**cases.FAST, "recc.harvest.unreachable-grace": "1h"}


def make_clusters(specs: dict[str, dict]) -> dict[str, ClusterRecord]:
    with ThreadPoolExecutor(3) as pool:
        futures = {n: pool.submit(cases.leave_running, n, **spec) for n, spec in specs.items()}
    return {name: f.result() for name, f in futures.items()}


def remove_all(names) -> None:
    for name in names:
        try:
            delete_cluster(name, "local")
        except ClusterNotFound:
            pass


def pids(record: ClusterRecord) -> list[int]:
    refs = [record.details["scheduler"], *record.details["hosts"]]
    return [ref["pid"] for ref in refs]


def processes_in(directory: Path) -> list[int]:
    """Live processes working in ``directory`` (the local backend runs a cluster's there)."""
    found = []
    for proc in psutil.process_iter(["pid", "cwd"]):
        if (proc.info.get("cwd") or "").startswith(str(directory)) and live(proc.pid):
            found.append(proc.pid)
    return found


def live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_one_pass_reaps_only_the_right_clusters_each_with_its_reason():
    specs = cases.six_states("h")
    try:
        records = make_clusters(specs)
        busy = records["h-busy"]
        security = RECCCluster.from_name("h-busy").security
        with Client(busy.scheduler_address, security=security) as client:
            cases.start_a_long_task(client)
        protect("h-protected")
        killed = records["h-killed"]
        os.kill(killed.details["scheduler"]["pid"], signal.SIGKILL)
        created = min(dt.datetime.fromisoformat(r.created_at.replace("Z", "+00:00"))
                      for r in records.values())  # fmt: skip
        # Past the 2 s max lifetime and the 1 s idle timeout.
        wait_for(lambda: dt.datetime.now(dt.timezone.utc) - created > dt.timedelta(seconds=3),
                 10, "the clusters to age")  # fmt: skip
        connected_security = RECCCluster.from_name("h-client").security
        with (
            dask.config.set(FAST),
            Client(records["h-client"].scheduler_address, security=connected_security),
        ):
            code, dry = run_cli("harvest", "--backend", "local", "--json")
            assert code == 0, dry
            planned = cases.rows_by_cluster(dry)
            assert all(state.exists(name) for name in specs)  # a dry run deletes nothing
            code, done = run_cli("harvest", "--backend", "local", "--yes", "--json")
            assert code == 0, done
            reaped = cases.rows_by_cluster(done)

        expected = cases.six_decisions(
            "h", f"unreachable: scheduler process {killed.details['scheduler']['pid']} is not"
        )
        assert set(expected) == set(specs)
        for rows in (planned, reaped):
            cases.assert_decisions(rows, expected)
        assert {n: r["outcome"] for n, r in planned.items()} == {
            n: "would reap" if d == "reap" else "kept" for n, (d, _, _) in expected.items()
        }
        assert {n: r["outcome"] for n, r in reaped.items()} == {
            n: "deleted" if d == "reap" else "kept" for n, (d, _, _) in expected.items()
        }
        assert reaped["h-idle"]["idle_seconds"] >= 1
        assert reaped["h-client"]["clients"] == 1

        gone = {"h-idle", "h-killed", "h-expired"}
        for name in gone:
            assert not state.exists(name)
            wait_for(lambda name=name: not any(live(p) for p in pids(records[name])), 15,
                     f"{name}'s processes to stop")  # fmt: skip
        for name in set(specs) - gone:
            assert state.exists(name) and all(live(p) for p in pids(records[name]))

        # The busy cluster is still working on its task, and still computes.
        [answer] = ask_all({"b": (busy.scheduler_address, security)}, timeout=10).values()
        assert answer.processing == 1 and answer.clients == 0
        with Client(busy.scheduler_address, security=security) as client:
            assert client.submit(lambda: 6 * 7, pure=False).result(timeout=30) == 42

        # The ledger says how they ended; the audit trail says who reaped them and why.
        ended = {life.record.cluster: life.how for life in Ledger().read_lives()}
        assert {n: ended[n] for n in gone} == dict.fromkeys(gone, "reaped")
        assert {n: ended[n] for n in set(specs) - gone} == dict.fromkeys(set(specs) - gone)
        audits = {a["cluster"]: a for a in read_reaps()}
        assert set(audits) == gone
        for name, audit in audits.items():
            assert audit["reason"] == reaped[name]["reason"]
            assert audit["category"] == expected[name][1]
            assert audit["outcome"] == "deleted" and audit["usd_per_hour_reclaimed"] == 0.0
            assert audit["harvester"]["pid"] == os.getpid()
            assert audit["harvester"]["user"] and audit["harvester"]["host"]

        # The next pass finds the kept ones still kept (the client left: h-client is idle now).
        with dask.config.set(FAST):
            again = harvest("local", dry_run=True)
        assert {r.decision.cluster: r.decision.category for r in again.rows} == {
            "h-busy": "busy", "h-client": "idle", "h-protected": "protected"
        }  # fmt: skip
    finally:
        remove_all(specs)


def test_the_table_shows_each_cluster_and_the_total():
    try:
        cases.leave_running("h-table")
        time.sleep(1.2)  # idle for longer than the 1 s idle timeout
        with dask.config.set(FAST):
            code, output = run_cli("harvest", "--backend", "local")
        assert code == 0
        for column in ("cluster", "owner", "age", "idle for", "decision", "reason", "$/h"):
            assert column in output
        assert "h-table" in output and "reap" in output
        assert "Would reap 1 of 1 clusters, reclaiming $0.00/h" in output
        assert state.exists("h-table")  # not a terminal and no --yes: a dry run
    finally:
        remove_all(["h-table"])


def test_a_scheduler_that_shuts_itself_down_takes_its_workers_and_the_harvester_the_rest():
    try:
        # Idle from its start, so the timeout must outlast the workers' start on a busy machine.
        record = cases.leave_running("h-self", idle_timeout="10s")
        scheduler, *workers = pids(record)
        wait_for(lambda: not live(scheduler), 60, "the scheduler's idle shutdown")
        # Its workers follow (the scheduler closes them; --death-timeout is the backstop), and
        # with them every process they started (multiprocessing's resource tracker too).
        wait_for(lambda: not any(live(p) for p in workers), 30, "the workers to exit")
        wait_for(lambda: not processes_in(state.cluster_dir("h-self")), 30, "their children")
        assert state.exists("h-self")  # the remains: record, certificates, logs
        with dask.config.set(FAST):
            report = harvest("local", dry_run=False)
        [row] = report.rows
        assert (row.decision.category, row.outcome) == ("idle", "deleted")
        assert "shut itself down after its idle timeout" in row.decision.reason
        assert not state.exists("h-self")
    finally:
        remove_all(["h-self"])


def test_the_cap_and_two_harvesters_at_once_delete_each_cluster_once():
    names = ["h-two-a", "h-two-b", "h-two-c"]
    try:
        make_clusters(dict.fromkeys(names, {}))
        time.sleep(1.2)
        with dask.config.set(FAST):
            capped = harvest("local", dry_run=False, max_deletions=1)
        outcomes = {r.decision.cluster: r.outcome for r in capped.rows}
        assert outcomes == {
            "h-two-a": "deleted",
            "h-two-b": "skipped: --max-deletions reached",
            "h-two-c": "skipped: --max-deletions reached",
        }
        env = {**os.environ, "DASK_RECC__HARVEST__IDLE_TIMEOUT": "1s",
               "DASK_RECC__HARVEST__GRACE_PERIOD": "0"}  # fmt: skip
        command = [sys.executable, "-m", "recc.cli.main", "harvest", "--yes", "--json"]
        both = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             stdin=subprocess.DEVNULL, text=True)
            for _ in range(2)
        ]  # fmt: skip
        results = [p.communicate(timeout=240) for p in both]
        assert all(p.returncode == 0 for p in both), results
        reports = [cases.rows_by_cluster(stdout) for stdout, _ in results]
        for name in ("h-two-b", "h-two-c"):
            seen = [report[name] for report in reports if name in report]
            assert [row["outcome"] for row in seen].count("deleted") == 1, seen
            # Whoever else saw it reports the same decision, and that it was already gone.
            assert all(row["outcome"] in ("deleted", "already deleted") for row in seen), seen
            assert {(row["decision"], row["category"]) for row in seen} == {("reap", "idle")}
            assert not state.exists(name)
        ends = [e for e in Ledger().events() if e["event"] == "end"]
        assert sorted(e["cluster"] for e in ends) == names  # one end each
        assert sorted(a["cluster"] for a in read_reaps()) == names  # one audit record each
    finally:
        remove_all(names)


def test_protect_and_unprotect_from_the_command_line(tmp_path: Path):
    record = dead_record("h-prot")
    code, output = run_cli("protect", "h-prot", "--until", "2999-01-01T00:00:00Z")
    assert code == 0 and "protected from the harvester until 2999-01-01T00:00:00Z" in output
    with dask.config.set(FAST):
        [row] = harvest("local", dry_run=False).rows
    assert row.decision.category == "protected" and row.outcome == "kept"
    assert "until 2999-01-01T00:00:00Z" in row.decision.reason
    code, output = run_cli("unprotect", "h-prot")
    assert code == 0 and "unprotected" in output
    code, output = run_cli("unprotect", "h-prot")
    assert code == 0 and "was not protected" in output
    with dask.config.set(FAST):
        [row] = harvest("local", dry_run=False).rows
    assert (row.decision.category, row.outcome) == ("unreachable", "deleted")
    assert not state.exists(record.name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "tomorrow"], "until='tomorrow': is not an RFC 3339 time"),
        (["--until", "2999-01-01T00:00:00"], "needs a UTC offset"),
        (["--until", "2001-01-01T00:00:00Z"], "is not in the future"),
    ],
)
def test_protect_refuses_bad_times_with_an_example(args, message):
    dead_record("h-bad")
    code, output = run_cli("protect", "h-bad", *args)
    assert code == 2
    assert message in output and "for example: --until 2026-12-01T18:00:00Z" in output
    assert not (state.cluster_dir("h-bad") / "protect.json").exists()


def test_protecting_an_unknown_cluster_fails():
    code, output = run_cli("protect", "h-nobody")
    assert code == 1 and "no cluster named 'h-nobody'" in output


def test_unreadable_evidence_keeps_the_cluster():
    dead_record("h-garbled-protect")
    (state.cluster_dir("h-garbled-protect") / "protect.json").write_text("{not json")
    bad_time = dead_record("h-garbled-record")
    bad_time.created_at = "yesterday-ish"
    state.save(bad_time)
    with dask.config.set(FAST):
        report = harvest("local", dry_run=False)
    rows = {r.decision.cluster: r for r in report.rows}
    assert {n: (r.decision.category, r.outcome) for n, r in rows.items()} == {
        "h-garbled-protect": ("unreadable", "kept"),
        "h-garbled-record": ("unreadable", "kept"),
    }
    assert "protection file" in rows["h-garbled-protect"].decision.reason
    assert "record could not be read" in rows["h-garbled-record"].decision.reason
    assert state.exists("h-garbled-protect") and state.exists("h-garbled-record")


def test_a_reap_interrupted_midway_is_finished_by_the_next_pass():
    dead_record("h-interrupted")
    started = {"category": "idle", "reason": "idle for 2h", "at": "2026-01-01T00:00:00Z"}
    LocalMemory().update({"h-interrupted": {"reaping": started}})
    # A long grace period: only the memory of the started reap makes this one go now.
    with dask.config.set({**FAST, "recc.harvest.grace-period": "1h"}):
        [row] = harvest("local", dry_run=False).rows
    assert (row.decision.category, row.outcome) == ("idle", "deleted")
    assert row.decision.reason == "finishing the reap started at 2026-01-01T00:00:00Z: idle for 2h"
    assert LocalMemory().load() == {}


def dead_record(name: str) -> ClusterRecord:
    """A recorded cluster whose scheduler process has exited (no processes to clean up)."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    record = ClusterRecord(
        name=name,
        backend="local",
        owner="alice",
        created_at=rfc3339(dt.datetime.now(dt.timezone.utc)),
        spec={"idle_timeout": "never", "max_lifetime": "never"},
        details={"scheduler": {"pid": finished.pid, "create_time": 0.0}, "hosts": []},
    )
    state.save(record)
    return record


def test_on_a_terminal_it_shows_the_plan_then_asks(monkeypatch: pytest.MonkeyPatch):
    dead_record("h-ask")
    monkeypatch.setattr(harvest_cli, "on_terminal", lambda: True)
    with dask.config.set(FAST):
        result = CliRunner().invoke(app, ["harvest", "--backend", "local"], input="n\n")
        assert result.exit_code == 0
        assert (
            "Would reap 1 of 1 clusters" in result.output and "Reap 1 cluster now?" in result.output
        )
        assert state.exists("h-ask")  # answered no
        result = CliRunner().invoke(app, ["harvest", "--backend", "local"], input="y\n")
    assert result.exit_code == 0, result.output
    assert "Reaped 1 of 1 clusters" in result.output and "deleted" in result.output
    assert not state.exists("h-ask")


def test_dry_run_and_yes_contradict():
    code, output = run_cli("harvest", "--dry-run", "--yes")
    assert code == 2 and "--dry-run and --yes contradict each other" in output
