"""The local backend: a real scheduler and real worker processes on this machine.

Processes are detached (own session, output to log files, no inherited terminal), so a
cluster made by ``recc up`` outlives the command. Each worker group runs as ``dask worker``
host processes, one nanny-supervised process per worker. The scheduler listens on ``tls://``
only and requires this cluster's certificates.

A local cluster must fit the machine (:func:`check_fits_machine`): at most
:data:`WORKERS_PER_CORE` workers per core, and :data:`PROCESS_MEMORY` of real memory per
worker and for the scheduler. Memory *limits* above what the machine has are not refused:
distributed caps each worker's limit at the machine's memory, so production templates
(``highmem``) run here for development.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from distributed.security import Security

from recc import config, state
from recc.backends.base import ClusterStatus, Progress
from recc.errors import BackendError, ClusterNotFound, SpecError
from recc.estimate import Estimate
from recc.procs import alive, free_port, scheduler_args, spawn, stop, tls_args
from recc.spec import ClusterSpec, WorkerGroup, build_spec
from recc.state import ClusterRecord
from recc.tls import TLSFiles, create_cluster_tls
from recc.units import GiB, MiB, format_memory

# More workers than this per core only thrash (each is a worker process and its nanny).
WORKERS_PER_CORE = 4
# What a worker (nanny and worker process) or the scheduler takes at rest, before any data.
PROCESS_MEMORY = 256 * MiB


def machine() -> tuple[int, int]:
    """This machine's cores and memory in bytes (what :func:`check_fits_machine` compares)."""
    import psutil

    return os.cpu_count() or 1, psutil.virtual_memory().total


def check_fits_machine(spec: ClusterSpec, cores: int, memory: int) -> None:
    """Refuse a local cluster whose processes a machine of ``cores`` and ``memory`` bytes
    cannot hold; :class:`SpecError` naming ``n_workers`` and the largest count that fits. Pure.

    >>> from recc.spec import resolve_spec
    >>> check_fits_machine(resolve_spec(n_workers=8), cores=2, memory=16 * GiB)
    >>> try:
    ...     check_fits_machine(resolve_spec(n_workers=1_000), cores=2, memory=16 * GiB)
    ... except SpecError as e:
    ...     print(e.example)
    n_workers=8
    """
    by_cores = cores * WORKERS_PER_CORE
    by_memory = memory // PROCESS_MEMORY - 1  # one for the scheduler
    most = min(by_cores, by_memory)
    if spec.total_workers <= most:
        return
    others = spec.total_workers - spec.n_workers  # workers of the other groups
    problem = (
        f"a local cluster of {spec.total_workers} workers does not fit this machine "
        f"({cores} cores, {memory / GiB:.1f}GiB): at most {most} do, {WORKERS_PER_CORE} per "
        f"core and {format_memory(PROCESS_MEMORY)} each at rest"
    )
    if others:
        problem += f" ({others} of them in worker_groups)"
    raise SpecError("n_workers", spec.n_workers, problem, f"n_workers={max(most - others, 1)}")


def worker_resources(group: WorkerGroup) -> dict[str, float]:
    """The group's Dask resources; every worker advertises MEMORY (MiB) unless given."""
    return {"MEMORY": group.worker_memory // MiB, **group.resources}


class LocalBackend:
    """Clusters made of processes on this machine; records in the state directory."""

    name = "local"

    def __init__(self) -> None:
        self.start_timeout = float(config.get("local.start-timeout"))

    # -- create -------------------------------------------------------------------------

    def create(
        self, record: ClusterRecord, estimate: Estimate, progress: Progress
    ) -> ClusterRecord:
        """Start the scheduler, then every worker group; roll back on any failure."""
        directory = state.cluster_dir(record.name)
        if state.exists(record.name):
            raise BackendError(f"a cluster named {record.name!r} exists already (`recc ls`)")
        try:
            (directory / "logs").mkdir(parents=True, exist_ok=True)
            tls = create_cluster_tls(record.name, directory / "tls")
            record.details = {"scheduler": None, "hosts": [], "batches": 0}
            state.save(record)  # recorded before anything runs, so `recc down` finds it
            # Workers start beside the scheduler and find it through its file: both pay their
            # interpreter start-up at the same time instead of one after the other.
            self._spawn_scheduler(record, estimate.spec, tls)
            for group in estimate.spec.groups():
                self._start_workers(record, estimate.spec, group, group.n_workers, tls)
            state.save(record)
            self._await_scheduler(record, progress)
            state.save(record)
            self._wait_for_workers(record, estimate.spec.total_workers, progress)
            return record
        except BaseException:
            self.delete(record.name)
            raise

    def _command_env(self, spec: ClusterSpec) -> dict[str, str]:
        env = {**os.environ, **spec.env}
        source_root = config.get("local.source-root")
        if spec.source_git_branch and source_root:
            branch_dir = Path(source_root).expanduser() / spec.source_git_branch
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(branch_dir), env.get("PYTHONPATH")])
            )
        return env

    def _spawn(
        self, record: ClusterRecord, args: list[str], log_name: str, env: dict[str, str]
    ) -> dict[str, Any]:
        directory = state.cluster_dir(record.name)
        return {**spawn(args, directory / "logs" / log_name, env, directory), "log": log_name}

    @staticmethod
    def _scheduler_file(record: ClusterRecord) -> Path:
        return state.cluster_dir(record.name) / "scheduler.json"

    def _spawn_scheduler(self, record: ClusterRecord, spec: ClusterSpec, tls: TLSFiles) -> None:
        scheduler_file = self._scheduler_file(record)
        # The port is chosen here so workers know the address at once: their start-up then
        # overlaps the scheduler's instead of following it (they retry until it listens).
        port = free_port()
        record.scheduler_address = f"tls://127.0.0.1:{port}"
        args = scheduler_args(scheduler_file, tls, port)
        if spec.idle_timeout:
            args += ["--idle-timeout", f"{spec.idle_timeout:g}s"]
        ref = self._spawn(record, args, "scheduler.log", self._command_env(spec))
        record.details["scheduler"] = ref
        state.save(record)

    def _await_scheduler(self, record: ClusterRecord, progress: Progress) -> None:
        scheduler_file = self._scheduler_file(record)
        ref = record.details["scheduler"]
        progress("scheduler", 0, 1)
        deadline = time.monotonic() + self.start_timeout
        while not scheduler_file.is_file():
            if not alive(ref):
                raise BackendError(
                    f"the scheduler exited at start; see {self._log(record, 'scheduler.log')}"
                )
            if time.monotonic() > deadline:
                raise BackendError(f"the scheduler did not start within {self.start_timeout:g}s")
            time.sleep(0.05)
        info = self._read_json(scheduler_file)
        record.scheduler_address = info["address"]
        port = info.get("services", {}).get("dashboard")
        record.dashboard_link = f"http://127.0.0.1:{port}/status" if port else None
        progress("scheduler", 1, 1)

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        for _ in range(100):  # the scheduler may still be writing the file
            try:
                return json.loads(path.read_text())
            except ValueError:
                time.sleep(0.05)
        raise BackendError(f"unreadable scheduler file {path}")

    def _start_workers(
        self,
        record: ClusterRecord,
        spec: ClusterSpec,
        group: WorkerGroup,
        count: int,
        tls: TLSFiles,
    ) -> None:
        batch = record.details["batches"]
        record.details["batches"] = batch + 1
        resources = " ".join(f"{k}={v:g}" for k, v in worker_resources(group).items())
        prefix = f"{record.name}-{group.name}-{batch}"
        # Before the scheduler is up its address is unknown: workers then read its file.
        where = (
            [record.scheduler_address]
            if record.scheduler_address
            else ["--scheduler-file", str(self._scheduler_file(record))]
        )
        args = [
            "distributed.cli.dask_worker",
            *where,
            "--nworkers",
            str(count),
            "--nthreads",
            str(max(1, int(group.worker_cpu))),
            "--memory-limit",
            str(group.worker_memory),
            "--resources",
            resources,
            "--name",
            prefix if count > 1 else f"{prefix}-0",
            "--nanny",
            "--host",
            "127.0.0.1",
            # The scheduler's dashboard shows every worker; per-worker dashboards would make each
            # worker import bokeh at start (about 0.8 s each on this kind of machine).
            "--no-dashboard",
            "--death-timeout",
            "60",
            "--local-directory",
            str(state.cluster_dir(record.name) / "work"),
            *tls_args(tls),
        ]
        ref = self._spawn(
            record, args, f"workers-{group.name}-{batch}.log", self._command_env(spec)
        )
        record.details["hosts"].append(
            {**ref, "group": group.name, "count": count, "prefix": prefix}
        )

    def _wait_for_workers(self, record: ClusterRecord, n: int, progress: Progress) -> None:
        from distributed import Client

        deadline = time.monotonic() + self.start_timeout
        with Client(record.scheduler_address, security=self.security(record), timeout=30) as client:
            while True:
                workers = client.scheduler_info(n_workers=-1).get("workers")
                if workers is None:  # the scheduler is gone: its idle timeout, or a crash
                    raise BackendError(
                        f"the scheduler closed before {n} workers joined (an idle_timeout "
                        f"shorter than the start?); see {self._log(record, 'scheduler.log')}"
                    )
                joined = len(workers)
                progress("workers", min(joined, n), n)
                if joined >= n:
                    return
                dead = [h for h in record.details["hosts"] if not alive(h)]
                if dead:
                    raise BackendError(
                        f"worker processes exited at start; see {self._log(record, dead[0]['log'])}"
                    )
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"only {joined} of {n} workers joined within {self.start_timeout:g}s"
                    )
                time.sleep(0.1)

    def _log(self, record: ClusterRecord, log_name: str) -> Path:
        return state.cluster_dir(record.name) / "logs" / log_name

    # -- scale --------------------------------------------------------------------------

    def scale(self, record: ClusterRecord, n_workers: int) -> ClusterRecord:
        """Start more workers, or retire the newest ones gracefully (their data moves)."""
        from distributed import Client

        spec = build_spec(record.spec)
        group = spec.groups()[0]
        # Validated (at most MAX_WORKERS, and what this machine holds) before any worker starts.
        scaled = spec.replace(n_workers=max(n_workers, 1))
        check_fits_machine(scaled, *machine())
        with (
            state.locked(),
            Client(record.scheduler_address, security=self.security(record), timeout=30) as client,
        ):
            workers = client.scheduler_info(n_workers=-1)["workers"]
            mine = sorted(
                (
                    w["name"]
                    for w in workers.values()
                    if str(w["name"]).startswith(f"{record.name}-default-")
                ),
                key=lambda n: [int(p) if p.isdigit() else p for p in str(n).split("-")],
            )
            if n_workers > len(mine):
                tls = TLSFiles.in_dir(state.cluster_dir(record.name) / "tls")
                self._start_workers(record, spec, group, n_workers - len(mine), tls)
            elif n_workers < len(mine):
                client.retire_workers(names=mine[n_workers:], close_workers=True)
            record.spec = scaled.to_dict()
            record.details["hosts"] = [h for h in record.details["hosts"] if alive(h)]
            state.save(record)
        if n_workers > len(mine):
            self._wait_for_workers(
                record, n_workers + sum(g.n_workers for g in spec.worker_groups), lambda *a: None
            )
        return record

    # -- find, inspect, delete ----------------------------------------------------------

    def find(self, name: str) -> ClusterRecord:
        """The record of ``name`` (raises ClusterNotFound)."""
        record = state.load(name)
        if record.backend != self.name:
            raise ClusterNotFound(f"cluster {name!r} belongs to the {record.backend} backend")
        return record

    def list(self) -> list[ClusterRecord]:
        """Every local cluster recorded for this user."""
        return state.load_all(self.name)

    def status(self, record: ClusterRecord) -> ClusterStatus:
        """running while the scheduler lives; failed when it died (idle shutdown included)."""
        scheduler = record.details.get("scheduler")
        if not scheduler or not alive(scheduler):
            return ClusterStatus("failed", 0, "scheduler process is not running")
        hosts = [h for h in record.details.get("hosts", []) if alive(h)]
        return ClusterStatus("running", sum(h["count"] for h in hosts))

    def security(self, record: ClusterRecord) -> Security:
        """TLS with this cluster's certificates."""
        return TLSFiles.in_dir(state.cluster_dir(record.name) / "tls").security()

    def logs(self, record: ClusterRecord, worker: str | None = None) -> dict[str, str]:
        """Log text of the scheduler and of each worker host (``worker``: that host only)."""
        logs_dir = state.cluster_dir(record.name) / "logs"
        out = {}
        for path in sorted(logs_dir.glob("*.log")):
            text = path.read_text(errors="replace")
            if worker is not None:
                if worker not in text:
                    continue
                text = "\n".join(line for line in text.splitlines() if worker in line) or text
            out[path.stem] = text
        return out

    def delete(self, name: str) -> bool:
        """Stop every process of ``name`` and forget it; False if nothing was there."""
        try:
            record = state.load(name)
        except ClusterNotFound:
            return False
        refs = [*record.details.get("hosts", [])]
        if record.details.get("scheduler"):
            refs.append(record.details["scheduler"])
        stop(refs)
        state.remove(name)
        return True
