"""Bad input from users: cluster names that are paths, patterns that a trailing newline slips
past, and numbers that are not finite or are absurdly large. Every one is a SpecError naming
the field, the value and an example; on the command line, exit code 2 and no traceback."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psutil
import pytest
from helpers import run_cli

from recc import RECCClient, RECCCluster, state
from recc.backends import local
from recc.backends.local import LocalBackend, check_fits_machine
from recc.clusters import delete_cluster, find_cluster
from recc.errors import SpecError
from recc.harvest.protect import protect, unprotect
from recc.naming import check_cluster_name
from recc.spec import resolve_spec
from recc.state import ClusterRecord
from recc.units import GiB

BAD_NAMES = [
    "../../victim",
    "/tmp/victim",
    "recc-alice-1\n",
    "recc-alice-1\n\n",
    "a/b",
    "..",
    ".",
    "",
    "Recc-Alice",
    "1abc",
    "x" * 41,
]


def assert_clean_error(code: int, output: str, *words: str) -> None:
    """Exit code 2 (1 is kept for "unknown cluster"), a one-line reason, no traceback."""
    assert code == 2, output
    assert "Traceback" not in output, output
    assert "Error:" in output and "for example" in output, output
    for word in words:
        assert word in output, output


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_check_cluster_name_refuses_paths_and_non_labels(name: str) -> None:
    with pytest.raises(SpecError) as info:
        check_cluster_name(name)
    assert info.value.field == "name" and "for example" in str(info.value)


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
@pytest.mark.parametrize("command", ["down", "logs", "protect", "unprotect"])
def test_commands_refuse_a_bad_cluster_name(command: str, name: str) -> None:
    code, output = run_cli(command, name, "--backend", "local")
    assert_clean_error(code, output, "name=")


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_library_entry_points_refuse_a_bad_cluster_name(name: str) -> None:
    for call in (
        lambda: RECCCluster.from_name(name, backend="local"),
        lambda: RECCClient(name),
        lambda: delete_cluster(name, "local"),
        lambda: find_cluster(name, "local"),
        lambda: protect(name, backend="local"),
        lambda: unprotect(name, backend="local"),
        lambda: state.cluster_dir(name),
        lambda: state.load(name),
        lambda: state.remove(name),
    ):
        with pytest.raises(SpecError):
            call()


def victim_record(directory: Path, name: str, pid: int) -> None:
    """A directory outside the state root that looks like a cluster's: a record listing a live
    process group, which `recc down` would signal and then delete the directory of."""
    directory.mkdir(parents=True, exist_ok=True)
    record = ClusterRecord(
        name=name,
        backend="local",
        owner="mallory",
        created_at="2026-01-01T00:00:00Z",
        spec={},
        details={
            "scheduler": {"pid": pid, "create_time": psutil.Process(pid).create_time()},
            "hosts": [],
        },
    )
    (directory / "record.json").write_text(json.dumps(record.to_dict()))


def test_down_of_a_path_deletes_nothing_and_signals_nothing(tmp_path: Path, recc_home: Path):
    victim = tmp_path / "victim"
    victim.mkdir()
    sleeper = subprocess.Popen(["sleep", "120"], cwd=victim, start_new_session=True)
    try:
        victim_record(victim, "victim", sleeper.pid)
        relative = "../../victim"  # from <state>/clusters
        assert (recc_home / "clusters" / relative).resolve() == victim.resolve()
        for name in (relative, str(victim), f"recc-ok-1 {victim}"):
            code, output = run_cli("down", *name.split(" "), "--backend", "local")
            assert_clean_error(code, output, "name=")
        assert (victim / "record.json").is_file()
        assert sleeper.poll() is None  # not signalled
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_record_whose_name_is_not_its_directory_is_ignored(recc_home: Path):
    forged = recc_home / "clusters" / "recc-forged-1"
    forged.mkdir(parents=True)
    record = ClusterRecord("../../victim", "local", "mallory", "2026-01-01T00:00:00Z", {})
    (forged / "record.json").write_text(json.dumps(record.to_dict()))
    assert state.load_all() == []
    code, output = run_cli("ls", "--backend", "local", "--json")
    assert code == 0 and json.loads(output) == []


# --- numbers on the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--resource", "GPU=nan"], "resources="),
        (["--resource", "GPU=inf"], "resources="),
        (["--resource", "GPU=1e400"], "resources="),
        (["--resource", "GPU\n=1"], "resources="),
        (["--worker-memory", "1e400GiB"], "worker_memory="),
        (["--worker-memory", "nan"], "worker_memory="),
        (["--scheduler-memory", "1" + "0" * 400], "scheduler_memory="),
        (["--worker-cpu", "1" + "0" * 400], "worker_cpu="),
        (["--worker-cpu", "nan"], "worker_cpu="),
        (["--idle-timeout", "1e400s"], "idle_timeout="),
        (["--max-lifetime", "nan"], "max_lifetime="),
        (["--n-workers", "99999999999999999999999"], "n_workers="),
        (["--n-workers", "10001"], "n_workers="),
        (["--name", "recc-alice-1\n"], "name="),
        (["--instance-type", "c5.xlarge\n"], "instance_type="),
        (["--env", "OMP_NUM_THREADS\n=1"], "env="),
        (["--source-git-branch", "main\n"], "source_git_branch="),
    ],
    ids=lambda v: repr(v)[:40],
)
@pytest.mark.parametrize("command", ["plan", "up"])
def test_bad_numbers_and_patterns_are_clean_errors(
    command: str, flags: list[str], field: str
) -> None:
    code, output = run_cli(command, *flags, *(["--backend", "local"] if command == "up" else []))
    assert_clean_error(code, output, field)
    assert state.load_all() == []


@pytest.mark.parametrize("since", ["1e400s", "99999d", "nan"])
def test_cost_since_an_absurd_duration_is_a_clean_error(since: str) -> None:
    code, output = run_cli("cost", "--since", since)
    assert_clean_error(code, output, "--since=")


# --- local clusters must fit the machine ----------------------------------------------------


def test_check_fits_machine_names_the_count_that_fits() -> None:
    fits = resolve_spec(n_workers=8, worker_memory="1GiB")
    check_fits_machine(fits, cores=2, memory=16 * GiB)
    with pytest.raises(SpecError) as info:  # cores: 4 workers per core
        check_fits_machine(fits.replace(n_workers=9), cores=2, memory=16 * GiB)
    assert info.value.field == "n_workers" and info.value.example == "n_workers=8"
    assert "2 cores, 16.0GiB" in str(info.value)
    with pytest.raises(SpecError) as info:  # memory: 256MiB per process, one is the scheduler
        check_fits_machine(fits.replace(n_workers=8), cores=8, memory=2 * GiB)
    assert info.value.example == "n_workers=7"
    group = {
        "name": "big",
        "instance_type": "r5.xlarge",
        "n_workers": 6,
        "worker_memory": "1GiB",
        "worker_cpu": 1,
    }
    with pytest.raises(SpecError) as info:  # the other groups count too
        check_fits_machine(fits.replace(n_workers=4, worker_groups=[group]), 2, 16 * GiB)
    assert info.value.example == "n_workers=2" and "6 of them in worker_groups" in str(info.value)


def test_memory_limits_above_the_machine_are_left_to_distributed() -> None:
    """distributed caps each worker's limit at the machine's memory, so a production template
    (highmem: 28GiB workers) still runs on a laptop for development."""
    check_fits_machine(resolve_spec("highmem", n_workers=2), cores=2, memory=8 * GiB)


@pytest.fixture
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, as the local backend sees it, has 2 cores and 8 GiB."""
    monkeypatch.setattr(local, "machine", lambda: (2, 8 * GiB))


@pytest.mark.usefixtures("small_machine")
def test_a_local_cluster_larger_than_the_machine_is_refused_before_anything_starts() -> None:
    with pytest.raises(SpecError, match="n_workers=9.*for example: n_workers=8"):
        RECCCluster(backend="local", n_workers=9, worker_memory="512MiB")
    with pytest.raises(SpecError, match="n_workers=1000000.*from 1 to 10000"):
        RECCCluster(backend="local", n_workers=1_000_000)
    code, output = run_cli("up", "--backend", "local", "--n-workers", "100", "--yes")
    assert_clean_error(code, output, "n_workers=100", "n_workers=")
    assert state.load_all() == []


@pytest.mark.usefixtures("small_machine")
def test_scaling_a_local_cluster_beyond_the_machine_is_refused_before_any_worker_starts() -> None:
    spec = resolve_spec(name="recc-scale-1", n_workers=1, worker_memory="512MiB")
    record = ClusterRecord(
        "recc-scale-1",
        "local",
        "alice",
        "2026-01-01T00:00:00Z",
        spec.to_dict(),
        scheduler_address="tls://127.0.0.1:1",
    )
    for n, words in ((9, "for example: n_workers=8"), (10**6, "from 1 to 10000")):
        with pytest.raises(SpecError, match=words):
            LocalBackend().scale(record, n)
    assert record.details == {}  # no worker was started, nothing recorded
