"""Synthetic simulation files shaped like the bank's: ``path``, ``Date``, ``value``.

Each file holds one value per (path, Date): ``paths`` simulation paths (int64) times ``dates``
non-sequential future dates (date32), values float64. Rows are in a shuffled order, shared by
every file by default (as a simulator writes them) or different in each file
(``shuffle_each``); ``missing`` drops a random share of rows from each file so key sets differ.
The output is deterministic for a given seed.

>>> info = generate("/tmp/recc-sims", files=4, groups=2, paths=100, dates=12)  # doctest: +SKIP
>>> info.manifest  # doctest: +SKIP
'/tmp/recc-sims/manifest.csv'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recc.datastore import DataStore
from recc.errors import SpecError
from recc.jobs.locations import atomic_output, file_mode
from recc.jobs.manifest import MANIFEST_NAME, format_manifest

# The first simulated date; the rest follow at irregular gaps over thirty years.
_FIRST_DATE = np.datetime64("2027-01-01", "D")
_HORIZON_DAYS = 30 * 365


@dataclass(frozen=True)
class Generated:
    """What :func:`generate` wrote."""

    output: str
    manifest: str
    groups: dict[str, list[str]]
    rows: int
    bytes: int


def group_sizes_for(
    files: int | None, groups: int | None, sizes: Sequence[int] | None
) -> list[int]:
    """Files per group from ``--groups`` (even split) or ``--group-sizes`` (explicit)."""
    if sizes is not None:
        if groups is not None:
            raise SpecError("groups", groups, "give --groups or --group-sizes, not both",
                            "--group-sizes 3,0,5")
        sizes = [int(s) for s in sizes]
        if not sizes or any(s < 0 for s in sizes):
            raise SpecError("group_sizes", sizes, "sizes must be whole numbers >= 0",
                            "--group-sizes 3,0,5")
        if files is not None and files != sum(sizes):
            raise SpecError("files", files, f"--group-sizes add up to {sum(sizes)} files",
                            f"--files {sum(sizes)} --group-sizes {','.join(map(str, sizes))}")
        if sum(sizes) < 1:
            raise SpecError("group_sizes", sizes, "needs at least one file", "--group-sizes 2,0")
        return sizes
    if files is None or files < 1:
        raise SpecError("files", files, "must be a whole number >= 1", "--files 16")
    groups = 1 if groups is None else groups
    if groups < 1 or groups > files:
        raise SpecError("groups", groups, f"must be between 1 and --files ({files})", "--groups 2")
    base, extra = divmod(files, groups)
    return [base + (1 if g < extra else 0) for g in range(groups)]


def simulation_dates(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct future dates at irregular gaps, sorted (datetime64[D])."""
    offsets = np.sort(rng.choice(_HORIZON_DAYS, size=count, replace=False))
    return _FIRST_DATE + offsets.astype("timedelta64[D]")


def generate(
    output: str,
    files: int | None = None,
    groups: int | None = None,
    group_sizes: Sequence[int] | None = None,
    paths: int = 50_000,
    dates: int = 120,
    seed: int = 0,
    shuffle_each: bool = False,
    missing: float = 0.0,
    row_group_size: int | None = None,
    datastore: DataStore | None = None,
) -> Generated:
    """Write simulation Parquet files and ``manifest.csv`` under ``output``.

    Parameters
    ----------
    output
        Directory or URL (``/data/sims``, ``s3://bucket/sims``, ``recc://sims``).
    files, groups, group_sizes
        How many files and how they split into groups: ``groups`` splits evenly,
        ``group_sizes`` gives each group's file count (0 makes an empty group).
    paths, dates
        Rows per file are ``paths * dates`` (50,000 x 120 = 6,000,000 in production).
    seed
        Same seed, same bytes.
    shuffle_each
        Give every file its own row order instead of one shared order.
    missing
        Share of rows (0..1) dropped at random from each file, so key sets differ.

    Examples
    --------
    >>> generate("/tmp/sims", files=6, group_sizes=[1, 0, 5], paths=50, dates=12)  # doctest: +SKIP
    """
    sizes = group_sizes_for(files, groups, group_sizes)
    if paths < 1:
        raise SpecError("paths", paths, "must be >= 1", "--paths 50000")
    if dates < 1 or dates > _HORIZON_DAYS:
        raise SpecError("dates", dates, f"must be between 1 and {_HORIZON_DAYS}", "--dates 120")
    if not 0.0 <= missing < 1.0:
        raise SpecError("missing", missing, "must be a share in [0, 1)", "--missing 0.01")
    store = datastore or DataStore.from_config()
    mode = file_mode()
    rng = np.random.default_rng(seed)
    rows = paths * dates
    # Keys in a shuffled (not sorted) order, like the simulator's output.
    order = rng.permutation(rows)
    path_col = pa.array((order // dates).astype(np.int64))
    date_col = pa.array(simulation_dates(dates, rng)[order % dates], pa.date32())
    width = max(5, len(str(sum(sizes) - 1)))
    gwidth = max(3, len(str(len(sizes) - 1)))
    manifest: dict[str, list[str]] = {}
    total_rows = total_bytes = 0
    index = 0
    for g, size in enumerate(sizes):
        names = manifest.setdefault(f"g{g:0{gwidth}d}", [])
        for _ in range(size):
            file_rng = np.random.default_rng([seed, index])
            table = pa.table({"path": path_col, "Date": date_col,
                              "value": file_rng.standard_normal(rows)})
            if shuffle_each:
                table = table.take(file_rng.permutation(rows))
            if missing:
                table = table.filter(pa.array(file_rng.random(rows) >= missing))
            name = f"part-{index:0{width}d}.parquet"
            total_bytes += _write_parquet(store, store.join(output, name), table, row_group_size,
                                          mode)
            total_rows += table.num_rows
            names.append(name)
            index += 1
    manifest_url = store.join(output, MANIFEST_NAME)
    with atomic_output(store, manifest_url, mode) as f:
        f.write(format_manifest(manifest).encode())
    return Generated(output, manifest_url, manifest, total_rows, total_bytes)


def _write_parquet(store: DataStore, url: str, table: pa.Table, row_group_size: int | None,
                   mode: int) -> int:
    with atomic_output(store, url, mode) as f:
        # Dictionary-encode the keys only: random float64 values gain nothing from it.
        pq.write_table(table, f, row_group_size=row_group_size, use_dictionary=["path", "Date"])
        return f.tell()
