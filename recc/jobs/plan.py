"""Split groups into tasks and size each task's memory: pure functions, no cluster needed.

A group of up to ``files_per_task`` files is one task that writes the group's output. A
bigger group is split into lanes that each write a partial sum to scratch storage, and one
final task that sums the partials into the output. Partials go to storage, not worker memory,
so the only memory a job uses on a worker is that of its running tasks - and each task's
memory is reserved through the ``MEMORY`` worker resource before it starts.

>>> from recc.jobs.tasks import FileFacts
>>> facts = [FileFacts(f"/d/{i}.parquet", 6_000_000, 68 << 20, 19 << 20, None) for i in range(20)]
>>> plan = plan_group("g1", facts, "/out/g1.parquet", "/out/.scratch/g1", files_per_task=8)
>>> [len(u.inputs) for u in plan.lanes], len(plan.final.inputs)
([7, 7, 6], 3)
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from recc.jobs.tasks import FileFacts

MiB = 1 << 20
# Measured peak of a task per accumulator row (values, keys, key index with its dense
# table, the output table while it is written), rounded up; and a fixed allowance for
# allocator slack and Parquet/IPC writer buffers.
BYTES_PER_ROW = 112
FIXED_BYTES = 64 * MiB


@dataclass(frozen=True)
class Unit:
    """One task: sum ``inputs`` into ``output``."""

    group: str
    name: str
    inputs: tuple[str, ...]
    output: str
    final: bool
    files: int  # input files of the job this task covers (partials count as 0)
    max_rows: int  # accumulator rows the memory is reserved for
    need_bytes: int
    layout: str | None = None  # the group's key layout file (its first file)


@dataclass(frozen=True)
class GroupPlan:
    """The tasks of one group: ``lanes`` run in parallel, then ``final`` (if any) sums them."""

    group: str
    files: int
    output: str
    lanes: tuple[Unit, ...]
    final: Unit | None


def task_bytes(max_rows: int, largest_file: int, key_bytes: int) -> int:
    """Peak memory of a task whose sum holds ``max_rows`` keys.

    The input file and the group's layout file are memory-mapped (or downloaded) while it
    runs, plus the next input as it opens, hence three file sizes; a worker remembers up to
    two key layouts it has checked, hence ``key_bytes`` twice more.
    """
    return BYTES_PER_ROW * max_rows + 3 * largest_file + 2 * key_bytes + FIXED_BYTES


def reserved_rows(facts: list[FileFacts], key_growth: float) -> int:
    """Accumulator rows to reserve: the largest file's rows times ``key_growth``.

    Files of one group normally share their keys, so the sum has as many rows as the
    largest file; ``key_growth`` leaves room for keys present in some files only, without
    ever exceeding the total rows (the sum cannot have more keys than that).
    """
    largest = max((f.rows for f in facts), default=0)
    total = sum(f.rows for f in facts)
    return max(1, min(total, math.ceil(largest * key_growth)))


def _unit(group: str, name: str, facts: list[FileFacts], output: str, final: bool,
          files: int, key_growth: float, exact: bool, layout: FileFacts | None,
          rows: int | None = None) -> Unit:
    # A task's sums start from the layout's keys, so the layout counts as one of its files.
    sizing = facts if layout is None or layout in facts else [layout, *facts]
    if rows is None:
        rows = reserved_rows(sizing, key_growth) if not exact else max(
            1, sum(f.rows for f in sizing))
    need = task_bytes(rows, max((f.size for f in sizing), default=0),
                      max((f.key_bytes for f in sizing), default=0))
    return Unit(group, name, tuple(f.url for f in facts), output, final, files, rows, need,
                layout.url if layout else None)


def plan_group(
    group: str,
    facts: list[FileFacts],
    output: str,
    scratch: str,
    files_per_task: int,
    key_growth: float = 1.25,
    exact: bool = False,
) -> GroupPlan:
    """The tasks for ``group`` (see module docs); ``exact`` reserves for disjoint keys.

    Every task names one key layout, so lanes whose files share it write partial sums
    without keys, in its row order: the first file of the most common key shape (see
    :func:`layout_of`).
    """
    layout = layout_of(facts)
    if len(facts) <= files_per_task:
        final = _unit(group, "all", facts, output, True, len(facts), key_growth, exact, layout)
        return GroupPlan(group, len(facts), output, (), final)
    lanes_count = math.ceil(len(facts) / files_per_task)
    base, extra = divmod(len(facts), lanes_count)
    lanes, partials, start = [], [], 0
    for i in range(lanes_count):
        chunk = facts[start : start + base + (1 if i < extra else 0)]
        start += len(chunk)
        url = f"{scratch.rstrip('/')}/lane-{i:05d}.arrow"
        lane = _unit(group, f"lane-{i}", chunk, url, False, len(chunk), key_growth, exact,
                     layout)
        lanes.append(lane)
        # A partial holds (at most) its lane's reserved rows, as uncompressed IPC.
        partials.append(FileFacts(url, lane.max_rows, lane.max_rows * 24, 0, None))
    # The group's keys, not the partials' (already grown) reservations, bound the final sum.
    rows = min(sum(p.rows for p in partials),
               reserved_rows(facts, key_growth) if not exact else sum(f.rows for f in facts))
    final = _unit(group, "final", partials, output, True, 0, key_growth, exact, layout,
                  max(1, rows))
    return GroupPlan(group, len(facts), output, tuple(lanes), final)


def layout_of(facts: list[FileFacts]) -> FileFacts | None:
    """The group's key layout: the first file of the key shape most of its files have.

    A file in another order than the layout is aligned key by key, so the layout should be
    what most files look like, not whatever file happens to be listed first.
    """
    if not facts:
        return None
    counts = collections.Counter(f.key_shape for f in facts)
    common = max(counts.values())
    return next(f for f in facts if counts[f.key_shape] == common)


def files_per_task(total_files: int, slots: int, minimum: int = 8, maximum: int = 256) -> int:
    """Files per task: enough tasks to keep every slot busy twice over, within bounds.

    ``minimum`` keeps the cost of a partial (one write, one read) small next to the files it
    replaces; ``maximum`` keeps tasks short enough for progress and for a lost worker to
    cost little.
    """
    return max(minimum, min(maximum, math.ceil(total_files / max(1, 2 * slots))))


def memory_request(need_bytes: int, scale: float) -> int:
    """The ``MEMORY`` resource (MiB) to request for a task needing ``need_bytes``."""
    return max(1, math.ceil(need_bytes / MiB * scale))
