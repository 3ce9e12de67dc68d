"""What runs on the workers: scan file metadata, and sum a list of files into one output.

Both are plain functions of plain arguments (a :class:`~recc.datastore.DataStore` and URLs),
so they run the same in a test, in a local cluster and on EKS.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from recc.datastore import DataStore
from recc.jobs.accumulate import (
    COLUMNS,
    KEYS,
    LAYOUT_OF,
    UNIQUE_FLAG,
    VALUE,
    Accumulator,
    InputError,
    Tally,
    open_source,
)
from recc.jobs.locations import atomic_output
from recc.jobs.splice import SpliceError, splice_parquet


@dataclass(frozen=True)
class FileFacts:
    """What a file's Parquet footer says, enough to size the memory of a task that reads it."""

    url: str
    rows: int
    size: int
    key_bytes: int  # encoded key columns: what the fast path keeps a copy of
    schema: pa.Schema
    # Rows and encoded key sizes per row group: files alike here very likely share their
    # encoded keys byte for byte (the group's layout is chosen among the most common).
    key_shape: tuple = ()


def scan(store: DataStore, urls: list[str]) -> list[FileFacts | str]:
    """Facts for each of ``urls`` from its footer, or the error message naming the file."""
    out: list[FileFacts | str] = []
    for url in urls:
        try:
            fs, path = store.locate(url)
            with fs.open(path, "rb") as f:
                size = f.size if hasattr(f, "size") and f.size is not None else fs.size(path)
                md = pq.read_metadata(f)
            schema = md.schema.to_arrow_schema()
            missing = [c for c in COLUMNS if c not in schema.names]
            if missing:
                raise InputError(f"{url}: missing column(s) {', '.join(missing)}; each file "
                                 f"needs columns {', '.join(COLUMNS)}")
            names = [md.schema.column(i).name for i in range(md.num_columns)]
            shape = tuple(
                (md.row_group(r).num_rows, *(
                    md.row_group(r).column(names.index(k)).total_compressed_size for k in KEYS))
                for r in range(md.num_row_groups)
            )
            key_bytes = sum(sum(sizes) for _, *sizes in shape)
            out.append(FileFacts(url, md.num_rows, int(size), key_bytes,
                                 schema.remove_metadata(), shape))
        except InputError as e:
            out.append(str(e))
        except FileNotFoundError as e:
            out.append(f"{url}: file not found ({e})")
        except (OSError, pa.ArrowException) as e:
            out.append(f"{url}: not a readable Parquet file: {e}")
    return out


@dataclass
class TaskReport:
    """What one task did; the driver turns these into progress and the job summary."""

    group: str
    output: str
    files: int
    rows_in: int
    rows_out: int
    sum_seconds: float
    # CPU time of the summing thread: what the work cost, whatever else shares the machine.
    sum_cpu_seconds: float
    write_seconds: float
    tally: Tally = field(default_factory=Tally)


def sum_files(
    store: DataStore,
    group: str,
    inputs: list[str],
    output: str,
    final: bool,
    max_rows: int | None,
    schema: pa.Schema | None,
    files: int,
    layout: str | None = None,
    after: Sequence[TaskReport] = (),
    mode: int | None = None,
) -> TaskReport:
    """Sum ``inputs`` and write the result to ``output`` all or nothing.

    ``final`` writes the group's Parquet output; otherwise an uncompressed Arrow IPC partial
    sum that a final task reads back without decoding. ``layout`` is the group's key layout
    file (see :mod:`recc.jobs.accumulate`); every task of a group names the same one, so
    partial sums in its order carry no keys. Repeated keys are merged in the output.
    ``files`` is how many of the job's input files this covers (for progress). ``after``
    takes the reports of the tasks that write ``inputs`` (as Dask futures, it makes this task
    wait for them); they are not needed otherwise. ``mode`` is the output's file mode (default:
    what this process's umask gives a new file; the job passes its caller's).
    """
    start, cpu = time.perf_counter(), time.thread_time()
    acc = _sum(store, inputs, layout, max_rows, skip_nan=False)
    if acc.has_nan():  # rare: redo exactly, counting NaN as zero like pandas does
        acc = _sum(store, inputs, layout, max_rows, skip_nan=True)
    summed, cpu = time.perf_counter(), time.thread_time() - cpu
    with atomic_output(store, output, mode) as f:
        rows_out = write_output(acc, f, schema) if final else write_partial(acc, f)
    return TaskReport(
        group=group, output=output, files=files, rows_in=acc.tally.rows,
        rows_out=rows_out, sum_seconds=summed - start, sum_cpu_seconds=cpu,
        write_seconds=time.perf_counter() - summed, tally=acc.tally,
    )


def write_output(acc: Accumulator, f: BinaryIO, schema: pa.Schema | None) -> int:
    """Write the sums as the group's Parquet output; returns its rows.

    Sums still in the layout file's row order, with no key repeated, copy the layout's
    encoded key columns instead of encoding keys again (several times cheaper).
    """
    layout = acc.in_layout_order()
    if layout is not None and acc.unique_keys():
        assert acc.values is not None
        try:
            splice_parquet(f, layout.buffer, acc.values)
            return layout.num_rows
        except SpliceError:  # raised before writing anything: write the ordinary way
            pass
    table = acc.table(unique=True, schema=schema)
    pq.write_table(table, f, use_dictionary=list(KEYS))
    return table.num_rows


def write_partial(acc: Accumulator, f: BinaryIO) -> int:
    """Write a partial sum as uncompressed Arrow IPC; returns its rows.

    In the layout's row order it is ``value`` alone; otherwise keys and values with repeats
    merged (cheap, in parallel, once per key layout per worker), flagged so that a final
    task over it need not check again.
    """
    layout = acc.in_layout_order()
    if layout is not None:
        table = pa.table({VALUE: acc.values}).replace_schema_metadata(
            {LAYOUT_OF: layout.layout_id()})
    else:
        table = acc.table(unique=True).replace_schema_metadata({UNIQUE_FLAG: b"1"})
    with ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    return table.num_rows


def _sum(store: DataStore, inputs: list[str], layout: str | None, max_rows: int | None,
         skip_nan: bool) -> Accumulator:
    start = open_source(store, layout) if layout else None
    acc = Accumulator(max_rows=max_rows, skip_nan=skip_nan, layout=start)
    for url in inputs:
        acc.add(start if start is not None and url == layout else open_source(store, url))
    return acc
