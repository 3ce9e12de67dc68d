"""The reference job: sum ``value`` per (path, Date) over every file of each group.

>>> from recc.jobs import aggregate
>>> result = aggregate("/data/sims", "/data/sums", client=client)  # doctest: +SKIP
>>> result.ok, result.groups["g000"].output  # doctest: +SKIP
(True, '/data/sums/g000.parquet')

How it stays fast and within memory:

- every task's peak memory is computed from the files' Parquet footers
  (:mod:`recc.jobs.plan`) and requested as the ``MEMORY`` worker resource with
  ``client.submit(..., resources=...)``, which reaches the scheduler as a task restriction (the
  published ``dask.annotate`` was dropped by graph optimisation); a worker never runs more
  tasks at once than its memory holds, and nothing else of the job lives in worker memory;
- all groups are submitted at once, largest first, and the scheduler fills every worker
  with as many tasks as its ``MEMORY`` allows: no thread pools to tune;
- a failing group (missing or corrupt file) fails alone, with the file named; outputs are
  written all or nothing, with the mode the caller's umask gives a new file.

Before any cluster or output exists, the job refuses a group that lists a file twice and an
output directory that holds inputs (:mod:`recc.jobs.locations`). Rows whose ``path`` or
``Date`` is null are not summed: each group counts them (``rows_skipped_null_key``) and the
job logs one warning naming the groups.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.config
import pyarrow as pa
from distributed import Client, Future, as_completed

from recc.datastore import DataStore
from recc.errors import RECCError
from recc.jobs.accumulate import DEFAULT_SCHEMA, KeyGrowthExceeded, Tally
from recc.jobs.locations import check_output, check_repeats, file_mode
from recc.jobs.manifest import MANIFEST_NAME, check_group_name, parse_manifest
from recc.jobs.plan import GroupPlan, Unit, files_per_task, memory_request, plan_group
from recc.jobs.tasks import FileFacts, TaskReport, scan, sum_files

MiB = 1 << 20
SCAN_BATCH = 64

logger = logging.getLogger(__name__)


@dataclass
class GroupResult:
    """How one group ended: ``done`` with its output written, or ``failed`` with the reason."""

    group: str
    files: int
    output: str
    status: str = "pending"
    error: str | None = None
    rows_in: int = 0
    rows_out: int = 0
    files_done: int = 0
    tasks: int = 0
    memory_mib: int = 0  # MEMORY requested by its largest task
    sum_seconds: float = 0.0
    sum_cpu_seconds: float = 0.0
    write_seconds: float = 0.0
    tally: Tally = field(default_factory=Tally)

    @property
    def rows_skipped_null_key(self) -> int:
        """Rows of this group's files whose ``path`` or ``Date`` is null: read, not summed."""
        return self.tally.rows_skipped_null_key


@dataclass
class AggregateResult:
    """The job's summary: one :class:`GroupResult` per group, and totals."""

    output: str
    groups: dict[str, GroupResult]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(g.status == "done" for g in self.groups.values())

    @property
    def failed(self) -> dict[str, str]:
        """Group -> error message, for the groups that failed."""
        return {g.group: g.error or "" for g in self.groups.values() if g.status == "failed"}

    @property
    def rows_in(self) -> int:
        return sum(g.rows_in for g in self.groups.values())

    @property
    def rows_skipped_null_key(self) -> int:
        """Rows not summed because their key is null, over all groups (see each group's)."""
        return sum(g.rows_skipped_null_key for g in self.groups.values())

    def raise_for_errors(self) -> None:
        """Raise :class:`JobError` listing every failed group, if any failed."""
        if not self.ok:
            lines = [f"{g}: {e}" for g, e in self.failed.items()]
            raise JobError(f"{len(lines)} group(s) failed:\n" + "\n".join(lines))


class JobError(RECCError):
    """One or more groups of a job failed; the message names each group and file."""


ProgressCallback = Callable[[GroupResult], None]


@dataclass(frozen=True)
class Capacity:
    """What the cluster offers the job, read from the scheduler and the workers."""

    slots: int  # threads over all workers
    scale: float  # MEMORY units (MiB) to request per MiB a task needs
    largest: float  # the largest MEMORY any worker offers
    resource: str
    usable_mib: float = 0.0  # the most memory one task may use on the roomiest worker
    overhead_mib: float = 0.0  # what that worker's process already uses
    pause: float = 0.8

    def worker_memory_for(self, need_mib: float) -> int:
        """Worker memory (MiB, rounded up to 256) at which a task of ``need_mib`` fits."""
        return math.ceil((need_mib + self.overhead_mib) / self.pause / 256) * 256


def cluster_capacity(client: Client, resource: str = "MEMORY") -> Capacity:
    """Read worker memory limits, current use, pause threshold and ``resource`` amounts.

    A worker pauses when its process memory reaches ``pause`` x its limit, and part of that
    is already taken by the worker itself. A task that needs N MiB therefore requests
    N x MEMORY / (limit x pause - in use) units of ``resource``, so the tasks a worker runs
    at once fit below its pause threshold.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        raise RECCError("the cluster has no workers; start some (e.g. recc up --n-workers 2)")
    pause = client.run(lambda: dask.config.get("distributed.worker.memory.pause"))
    slots, scale, largest = 0, 0.0, 0.0
    roomiest = (0.0, 0.0, 0.8)
    for addr, info in workers.items():
        slots += int(info.get("nthreads", 1))
        offered = (info.get("resources") or {}).get(resource)
        if offered is None:
            continue
        largest = max(largest, float(offered))
        limit = (info.get("memory_limit") or 0) / MiB
        if not limit:  # no memory limit: trust the resource as it is
            scale = max(scale, 1.0)
            continue
        fraction = pause.get(addr) or 0.95  # pausing off: stay below the terminate threshold
        in_use = (info.get("metrics") or {}).get("memory", 0) / MiB
        usable = limit * float(fraction) - in_use
        if usable <= 0:
            continue
        scale = max(scale, float(offered) / usable)
        if usable > roomiest[0]:
            roomiest = (usable, in_use, float(fraction))
    if not largest or not scale:
        raise RECCError(
            f"no worker offers the {resource!r} resource with memory to spare, so the job "
            "cannot bound its memory; RECC workers offer it by default, others need it "
            f"declared, e.g. dask worker --resources '{resource}=1536'"
        )
    return Capacity(slots, scale, largest, resource, *roomiest)


def manifest_location(store: DataStore, input: str | None, manifest: str | None) -> str:
    """``manifest``, or by default ``INPUT/manifest.csv``."""
    if manifest is not None:
        return manifest
    if input is None:
        raise RECCError("give the input directory or the manifest (for example --input "
                        "/data/sims, which reads /data/sims/manifest.csv)")
    return store.join(input, MANIFEST_NAME)


def read_groups(store: DataStore, manifest: str) -> dict[str, list[str]]:
    """Groups and file URLs from the manifest at ``manifest``."""
    try:
        text = store.read_bytes(manifest).decode()
    except (FileNotFoundError, OSError) as e:
        raise RECCError(f"manifest {manifest}: cannot read it ({e}); write one with columns "
                        "file,group or generate data with: recc job generate") from e
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    return parse_manifest(text, base, source=manifest)


@contextlib.contextmanager
def job_client(client: Client | None, cluster: Any, spec: Mapping[str, Any]) -> Iterator[Client]:
    """The client to run on: given, connected to a named cluster, or a cluster made for the job.

    A cluster created here is deleted when the job ends, whether it succeeded or not; a
    cluster given by name or object is left running.
    """
    if client is not None:
        yield client
        return
    from recc import RECCClient, RECCCluster  # the cluster layer, only when the job needs one

    if cluster is not None:
        handle = RECCCluster.from_name(cluster) if isinstance(cluster, str) else cluster
        with RECCClient(handle) as own:
            yield own
        return
    with RECCCluster(**spec) as made, RECCClient(made) as own:
        own.wait_for_workers(max(1, int(spec.get("n_workers") or 1)))
        yield own


def aggregate(
    input: str | None = None,
    output: str = "",
    *,
    manifest: str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    client: Client | None = None,
    cluster: Any = None,
    datastore: DataStore | None = None,
    progress: ProgressCallback | None = None,
    key_growth: float | None = None,
    max_files_per_task: int | None = None,
    resource: str = "MEMORY",
    **spec: Any,
) -> AggregateResult:
    """Sum ``value`` per (path, Date) over each group's files into ``OUTPUT/<group>.parquet``.

    Parameters
    ----------
    input
        Directory or URL holding the files and (by default) ``manifest.csv``.
    output
        Directory or URL for the results (``/data/sums``, ``s3://bucket/sums``).
    manifest
        Manifest location, if not ``INPUT/manifest.csv``.
    groups
        Instead of a manifest: ``{group: [file URLs]}``.
    client, cluster
        Run on this client, or on this RECC cluster (object or name). With neither, a
        RECC cluster is created from ``**spec`` (e.g. ``n_workers=4``) and deleted after.
    datastore
        Where locations resolve (default: from dask config, see :mod:`recc.datastore`).
    progress
        Called with a :class:`GroupResult` whenever a group advances.
    key_growth
        Room reserved for keys present in some files only (default 1.25, config
        ``recc.jobs.aggregate.key-growth``); a group that outgrows it is re-run once with
        room for all its rows.

    Returns
    -------
    AggregateResult
        Per-group status; failed groups carry an error naming the file. Call
        ``raise_for_errors()`` to turn failures into an exception. Each group counts the rows
        it did not sum because their key is null (``rows_skipped_null_key``).

    Raises
    ------
    ManifestError
        A group lists one file twice (also as ``x.parquet`` and ``./x.parquet``).
    SpecError
        ``output`` is an input file, the input directory, or a directory an input lives in.

    Examples
    --------
    >>> result = aggregate("s3://sims/run1", "s3://sums/run1", cluster="c1")  # doctest: +SKIP
    >>> result.raise_for_errors()  # doctest: +SKIP
    """
    if not output:
        raise RECCError("output is required, for example output='/data/sums' or --output "
                        "s3://bucket/sums")
    store = datastore or DataStore.from_config()
    if groups is None:
        manifest = manifest_location(store, input, manifest)
        group_files = read_groups(store, manifest)
        check_repeats(group_files, source=manifest)
    else:
        group_files = {check_group_name(g): list(f) for g, f in groups.items()}
        check_repeats(group_files)
    check_output(store, output, group_files, read=[manifest] if manifest else [],
                 input_dir=input)
    growth = float(key_growth or dask.config.get("recc.jobs.aggregate.key-growth", 1.25))
    mode = file_mode()  # the caller's umask, whichever process writes
    with job_client(client, cluster, spec) as c:
        result = _Job(c, store, output, group_files, growth, max_files_per_task, resource,
                      progress, mode).run()
    _warn_null_keys(result)
    return result


def _warn_null_keys(result: AggregateResult, shown: int = 5) -> None:
    """One warning for the whole job if any group had rows with a null key."""
    counts = {g: r.rows_skipped_null_key for g, r in result.groups.items()
              if r.rows_skipped_null_key}
    if not counts:
        return
    listed = ", ".join(f"{g}: {n:,}" for g, n in list(counts.items())[:shown])
    more = f" and {len(counts) - shown} more group(s)" if len(counts) > shown else ""
    logger.warning(
        "%s row(s) with a null path or Date were not summed (%s%s); each group reports its "
        "count as rows_skipped_null_key", f"{result.rows_skipped_null_key:,}", listed, more)


class _Job:
    """One run of the job on a client: scan, plan, submit, follow, clean up."""

    def __init__(self, client: Client, store: DataStore, output: str,
                 group_files: dict[str, list[str]], key_growth: float,
                 max_files_per_task: int | None, resource: str,
                 progress: ProgressCallback | None, mode: int | None = None):
        self.client = client
        self.store = store
        self.output = output.rstrip("/")
        self.group_files = group_files
        self.key_growth = key_growth
        self.max_files = max_files_per_task
        self.resource = resource
        self.progress = progress or (lambda result: None)
        self.mode = mode
        self.token = uuid.uuid4().hex[:8]
        self.scratch = f"{self.output}/.recc-scratch-{self.token}"
        self.results = {
            g: GroupResult(g, len(files), f"{self.output}/{g}.parquet")
            for g, files in group_files.items()
        }
        self.plans: dict[str, GroupPlan] = {}
        self.exact: set[str] = set()
        self.futures: dict[Future, Unit] = {}
        self.pending = as_completed()

    def run(self) -> AggregateResult:
        start = time.perf_counter()
        try:
            batches, scans = self._start_scan()
            # Asked of the scheduler while the workers read the footers.
            capacity = cluster_capacity(self.client, self.resource)
            facts = self._scanned(batches, scans)
            per_task = self.max_files or files_per_task(
                sum(len(f) for f in facts.values()), capacity.slots)
            schema = next((f[0].schema for f in facts.values() if f), None)
            self.schema = _output_schema(schema)
            self.capacity, self.per_task = capacity, per_task
            ranked = sorted(facts, key=lambda g: -sum(f.rows for f in facts[g]))
            self.priority = {g: len(ranked) - i for i, g in enumerate(ranked)}
            self.facts = facts
            for group in ranked:
                self._submit_group(group)
            self._follow()
        finally:
            with contextlib.suppress(OSError):
                self.store.remove(self.scratch, recursive=True)
        return AggregateResult(self.output, self.results, time.perf_counter() - start)

    # -- phases ------------------------------------------------------------------------

    def _start_scan(self) -> tuple[list[list[str]], list[Future]]:
        """Start reading every file's footer on the workers, in batches."""
        urls = list(dict.fromkeys(u for files in self.group_files.values() for u in files))
        batches = [urls[i : i + SCAN_BATCH] for i in range(0, len(urls), SCAN_BATCH)]
        futures = [self.client.submit(scan, self.store, b, key=f"recc-scan-{self.token}-{i}",
                                      pure=False) for i, b in enumerate(batches)]
        return batches, futures

    def _scanned(self, batches: list[list[str]], futures: list[Future]
                 ) -> dict[str, list[FileFacts]]:
        """Footer facts by group; a group with a failing file fails, naming the file."""
        found: dict[str, FileFacts | str] = {}
        for batch, future in zip(batches, futures, strict=True):
            found.update(zip(batch, future.result(), strict=True))
        facts: dict[str, list[FileFacts]] = {}
        for group, files in self.group_files.items():
            problems = [found[u] for u in files if isinstance(found[u], str)]
            if problems:
                self._fail(group, "; ".join(dict.fromkeys(problems)))
                continue
            facts[group] = [found[u] for u in files]  # type: ignore[misc]
        return facts

    def _submit_group(self, group: str) -> None:
        result = self.results[group]
        plan = plan_group(group, self.facts[group], result.output, f"{self.scratch}/{group}",
                          self.per_task, self.key_growth, exact=group in self.exact)
        units = list(plan.lanes) or [plan.final]
        biggest = max(units + ([plan.final] if plan.final else []), key=lambda u: u.need_bytes)
        request = memory_request(biggest.need_bytes, self.capacity.scale)
        if request > self.capacity.largest:
            need_mib = math.ceil(biggest.need_bytes / MiB)
            self._fail(group, (
                f"a task of this group needs {need_mib} MiB ({biggest.max_rows:,} rows to sum) "
                f"but the largest worker offers {self.capacity.largest:g} {self.resource}, "
                f"enough for {self.capacity.usable_mib:.0f} MiB below its pause threshold; use "
                f"workers with more memory, e.g. --worker-memory "
                f"{self.capacity.worker_memory_for(need_mib)}MiB"))
            return
        self.plans[group] = plan
        result.memory_mib = request
        result.status = "running"
        lanes = [self._submit(unit) for unit in units]
        if plan.lanes and plan.final is not None:
            # Submitted now, after its lanes: the scheduler starts it the moment the last lane
            # ends, with no round trip through this client.
            self._submit(plan.final, after=lanes)
        self.progress(result)

    def _submit(self, unit: Unit, after: list[Future] | None = None) -> Future:
        # Finals first: they free scratch storage and finish groups; then larger groups.
        priority = self.priority[unit.group] + (10**6 if unit.final and unit.files == 0 else 0)
        future = self.client.submit(
            sum_files, self.store, unit.group, list(unit.inputs), unit.output, unit.final,
            unit.max_rows, self.schema, unit.files, unit.layout, after or [], self.mode,
            key=f"recc-sum-{self.token}-{unit.group}-{unit.name}-{len(self.exact)}",
            resources={self.resource: memory_request(unit.need_bytes, self.capacity.scale)},
            priority=priority, pure=False,
        )
        self.futures[future] = unit
        self.pending.add(future)
        return future

    def _follow(self) -> None:
        for future in self.pending:
            unit = self.futures.pop(future, None)
            if unit is None or self.results[unit.group].status != "running":
                continue  # cancelled, or its group already failed or was re-planned
            if future.status == "finished":
                self._finished(unit, future.result())
                continue
            error = future.exception() if future.status == "error" else None
            if isinstance(error, KeyGrowthExceeded) and unit.group not in self.exact:
                self._replan(unit.group)
            else:
                self._fail(unit.group, str(error) if error else f"task {future.status}")

    def _finished(self, unit: Unit, report: TaskReport) -> None:
        result = self.results[unit.group]
        result.tasks += 1
        result.files_done += report.files
        result.rows_in += report.rows_in if unit.files else 0
        result.sum_seconds += report.sum_seconds
        result.sum_cpu_seconds += report.sum_cpu_seconds
        result.write_seconds += report.write_seconds
        if unit.files:  # a final over partials adds no input files
            for f in dataclasses.fields(Tally):
                total = getattr(result.tally, f.name) + getattr(report.tally, f.name)
                setattr(result.tally, f.name, total)
        if unit.final:
            result.rows_out = report.rows_out
            result.status = "done"
            self._clean(unit.group)
        self.progress(result)

    def _replan(self, group: str) -> None:
        """Re-run a group whose keys differ more than reserved, reserving for all its rows."""
        self._cancel(group)
        self.exact.add(group)
        result = self.results[group]
        result.files_done = result.rows_in = result.tasks = 0
        result.tally = Tally()
        self._clean(group)
        self._submit_group(group)

    def _fail(self, group: str, error: str) -> None:
        result = self.results[group]
        result.status, result.error = "failed", error
        self._cancel(group)
        self._clean(group)
        self.progress(result)

    def _cancel(self, group: str) -> None:
        mine = [f for f, u in self.futures.items() if u.group == group]
        for future in mine:
            del self.futures[future]
        if mine:
            self.client.cancel(mine)

    def _clean(self, group: str) -> None:
        if group in self.plans and self.plans[group].lanes:
            with contextlib.suppress(OSError):
                self.store.remove(f"{self.scratch}/{group}", recursive=True)


def _output_schema(schema: pa.Schema | None) -> pa.Schema:
    """The output schema: the inputs' key types, value float64 (for empty groups too)."""
    if schema is None:
        return DEFAULT_SCHEMA
    return pa.schema([schema.field("path"), schema.field("Date"), ("value", pa.float64())])
