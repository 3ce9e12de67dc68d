"""``recc job``: the reference job - generate simulation files, aggregate them, or run the demo."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recc.cli.options import spec_options, to_overrides
from recc.cli.output import err, errors_to_exit, fail, out
from recc.errors import SpecError
from recc.jobs.aggregate import AggregateResult, GroupResult

app = typer.Typer(help="The reference job: group-wise sums of simulation Parquet files.",
                  no_args_is_help=True)

# Above this many groups, one bar per group is noise: show the job's total only.
_MAX_GROUP_BARS = 20


def _sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError as e:
        raise SpecError("group_sizes", text, "expected whole numbers separated by commas",
                        "--group-sizes 3,0,5") from e


@app.command()
def generate(
    output: Annotated[str, typer.Option("--output", "-o", help="Directory or URL (s3://...).")],
    files: Annotated[Optional[int], typer.Option(help="Number of files.")] = None,
    groups: Annotated[Optional[int], typer.Option(help="Split the files evenly into G groups.")] = None,  # noqa: E501
    group_sizes: Annotated[Optional[str], typer.Option("--group-sizes", help="Files per group, e.g. 3,0,5 (0: empty group).")] = None,  # noqa: E501
    paths: Annotated[int, typer.Option(help="Simulation paths per file.")] = 50_000,
    dates: Annotated[int, typer.Option(help="Dates per path.")] = 120,
    seed: Annotated[int, typer.Option(help="Same seed, same files.")] = 0,
    shuffle_each: Annotated[bool, typer.Option("--shuffle-each", help="Give every file its own row order.")] = False,  # noqa: E501
    missing: Annotated[float, typer.Option(help="Share of rows dropped from each file (differing key sets).")] = 0.0,  # noqa: E501
) -> None:
    """Write simulation Parquet files (path, Date, value) and manifest.csv."""
    from recc.jobs.generate import generate as run

    with errors_to_exit():
        info = run(output, files=files, groups=groups, group_sizes=_sizes(group_sizes),
                   paths=paths, dates=dates, seed=seed, shuffle_each=shuffle_each,
                   missing=missing)
    out.print(f"wrote {sum(len(f) for f in info.groups.values())} files in {len(info.groups)} "
              f"groups, {info.rows:,} rows, {info.bytes / 2**20:,.1f} MiB; manifest "
              f"{info.manifest}")


class _Bars:
    """Rich progress: one bar per group (or one for the job when there are many groups)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.total: Any = None
        self.done: set[str] = set()

    def __call__(self, g: GroupResult) -> None:
        if self.total is not None or len(self.tasks) >= _MAX_GROUP_BARS:
            if self.total is None:
                self.total = self.progress.add_task("groups", total=None)
            if g.status in ("done", "failed"):
                self.done.add(g.group)
            self.progress.update(self.total, completed=len(self.done))
            return
        if g.group not in self.tasks:
            self.tasks[g.group] = self.progress.add_task(g.group, total=max(g.files, 1))
        label = {"failed": "[red]failed[/]", "done": "[green]done[/]"}.get(g.status, "")
        self.progress.update(self.tasks[g.group], completed=g.files_done if g.files else
                             int(g.status == "done"), description=f"{g.group} {label}")


def _summary(result: AggregateResult) -> None:
    table = Table(title=f"Results in {result.output}", title_justify="left")
    for col in ("group", "files", "status", "rows out", "null keys", "MEMORY/task",
                "fast/aligned"):
        table.add_column(col)
    for g in result.groups.values():
        table.add_row(g.group, str(g.files),
                      "[green]done[/]" if g.status == "done" else f"[red]{g.status}[/]",
                      f"{g.rows_out:,}", f"{g.rows_skipped_null_key:,}", f"{g.memory_mib} MiB",
                      f"{g.tally.same_bytes + g.tally.same_keys}/{g.tally.aligned}")
    out.print(table)
    rate = result.rows_in / result.seconds if result.seconds else 0.0
    out.print(f"{result.rows_in:,} rows in {result.seconds:.2f}s ({rate / 1e6:,.1f} M rows/s)")
    if result.rows_skipped_null_key:
        out.print(f"[yellow]{result.rows_skipped_null_key:,} rows with a null path or Date "
                  "were not summed[/]", highlight=False)
    for group, error in result.failed.items():
        err.print(f"[bold red]{group} failed:[/] {error}", highlight=False)


def _as_dict(result: AggregateResult) -> dict[str, Any]:
    return {
        "output": result.output, "ok": result.ok, "seconds": result.seconds,
        "rows_in": result.rows_in, "rows_skipped_null_key": result.rows_skipped_null_key,
        "groups": {g.group: {"status": g.status, "error": g.error, "files": g.files,
                             "output": g.output, "rows_in": g.rows_in, "rows_out": g.rows_out,
                             "rows_skipped_null_key": g.rows_skipped_null_key,
                             "memory_mib": g.memory_mib} for g in result.groups.values()},
    }


@app.command()
@spec_options
def aggregate(
    output: Annotated[str, typer.Option("--output", "-o", help="Directory or URL for <group>.parquet.")],  # noqa: E501
    input: Annotated[Optional[str], typer.Option("--input", "-i", help="Directory or URL of the files.")] = None,  # noqa: E501
    manifest: Annotated[Optional[str], typer.Option(help="Manifest (default: INPUT/manifest.csv).")] = None,  # noqa: E501
    cluster: Annotated[Optional[str], typer.Option(help="Run on this existing RECC cluster.")] = None,  # noqa: E501
    key_growth: Annotated[Optional[float], typer.Option(help="Room for keys found in some files only (default 1.25).")] = None,  # noqa: E501
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    *,
    spec_flags: dict[str, Any],
) -> None:
    """Sum value per (path, Date) over each group's files into OUTPUT/<group>.parquet.

    Without --cluster, a RECC cluster is created from the spec flags and deleted afterwards.
    """
    from recc.jobs.aggregate import aggregate as run

    with errors_to_exit():
        spec = {k: v for k, v in to_overrides(spec_flags).items() if v is not None}
        if cluster and spec:
            fail(f"--cluster {cluster} runs on an existing cluster; drop the spec flags "
                 f"({', '.join('--' + k.replace('_', '-') for k in spec)}) or --cluster")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        with Progress(*columns, console=err, transient=as_json) as progress:
            result = run(input, output, manifest=manifest, cluster=cluster,
                         progress=_Bars(progress), key_growth=key_growth, **spec)
    if as_json:
        sys.stdout.write(json.dumps(_as_dict(result), indent=2) + "\n")
    else:
        _summary(result)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def demo(
    n_workers: Annotated[int, typer.Option("--n-workers", help="Local workers.")] = 2,
    paths: Annotated[int, typer.Option(help="Simulation paths per file.")] = 2_000,
) -> None:
    """Generate data, aggregate it on a new local RECC cluster, check it against pandas."""
    from recc.jobs.demo import run_demo

    with errors_to_exit():
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=err) as progress:
            report = run_demo(n_workers=n_workers, paths=paths, progress=_Bars(progress),
                              log=lambda m: err.print(m, highlight=False))
    _summary(report.result)
    out.print(f"checked {report.groups_checked} groups against pandas: largest difference "
              f"{report.max_abs_error:.2e}; the cluster is gone")
