"""The cluster commands across processes, as a user runs them: up, from_name, ls, down."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil

from recc import state


def recc(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real `recc` command in its own process (state dir from the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "recc.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
    )


def test_up_from_name_ls_down_in_four_processes():
    up = recc("up", "--n-workers", "2", "--worker-memory", "512MiB", "--json")
    assert up.returncode == 0, up.stderr
    created = json.loads(up.stdout)  # stdout is exactly one JSON object
    name = created["name"]
    assert created["scheduler_address"].startswith("tls://")
    assert created["usd_per_hour"] == 0.0
    pids = _pids(name)
    try:
        # The creating command has exited; the cluster still runs and computes.
        compute = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from recc import RECCCluster, RECCClient\n"
                f"c = RECCCluster.from_name({name!r})\n"
                "with RECCClient(c) as client: print(client.submit(lambda: 6 * 7).result())\n"
                "c.close()",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ.copy(),
        )
        assert compute.stdout.strip() == "42", compute.stderr
        listed = json.loads(recc("ls", "--json").stdout)
        [row] = [r for r in listed if r["name"] == name]
        assert row["status"] == "running" and row["workers"] == 2
        assert row["cost_is_estimate"] is True
    finally:
        down = recc("down", name)
    assert down.returncode == 0, down.stderr
    assert "deleted" in down.stdout
    assert not [p for p in pids if psutil.pid_exists(p) and _is_live(p)]
    again = recc("down", name)
    assert again.returncode == 0 and "already deleted" in again.stdout


def test_down_of_an_unknown_name_fails_and_says_so():
    result = recc("down", "recc-nobody-000000")
    assert result.returncode == 1
    assert "no cluster named 'recc-nobody-000000'" in result.stderr


def test_up_with_bad_input_creates_nothing_and_prints_nothing():
    result = recc("up", "--n-workers", "-2", "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "n_workers=-2" in result.stderr and "for example" in result.stderr
    assert state.load_all() == []


def test_down_all_requires_yes_without_a_terminal_and_then_deletes():
    up = recc("up", "--n-workers", "1", "--worker-memory", "512MiB", "--json")
    name = json.loads(up.stdout)["name"]
    try:
        refused = recc("down", "--all")
        assert refused.returncode == 2 and "--yes" in refused.stderr
        assert state.exists(name)
    finally:
        done = recc("down", "--all", "--yes", "--json")
    assert json.loads(done.stdout) == {name: "deleted"}


def _pids(name: str) -> list[int]:
    record = state.load(name)
    return [record.details["scheduler"]["pid"], *(h["pid"] for h in record.details["hosts"])]


def _is_live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
