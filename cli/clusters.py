"""``recc up / ls / down / logs``: create, list, delete and inspect clusters."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from recc.backends.base import get_backend
from recc.cli.options import spec_options, to_overrides
from recc.cli.output import err, errors_to_exit, fail, out
from recc.cli.plan import Template
from recc.clusters import delete_cluster, describe_clusters, find_cluster
from recc.errors import ClusterNotFound
from recc.naming import check_cluster_name
from recc.spec import resolve_spec
from recc.units import format_duration

BackendOpt = Annotated[
    Optional[str], typer.Option("--backend", help="local or eks (default: from config).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class PhaseProgress:
    """Draws one progress bar per phase of a long wait, on stderr."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)


@spec_options
def up_command(
    template: Template = None,
    *,
    spec_flags: dict[str, Any],
    backend: BackendOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Create a cluster that keeps running after this command; print how to reach it."""
    from recc.cluster import RECCCluster
    from recc.spend import needs_confirmation

    with errors_to_exit():
        spec = resolve_spec(template, **to_overrides(spec_flags))
        chosen = get_backend(backend)
        from recc.cluster import cluster_estimate

        usd = cluster_estimate(spec, chosen.name).cost.usd_per_hour
        if needs_confirmation(usd) and not yes:
            if not sys.stdin.isatty():
                fail(
                    f"this cluster is estimated at ${usd:.2f}/h, above the confirmation "
                    "threshold (recc.cost.confirm-above-usd-per-hour); pass --yes to create it"
                )
            typer.confirm(f"Estimated ${usd:.2f}/h. Create it?", abort=True, err=True)
        columns = (
            TextColumn("{task.description:>10}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=err, transient=True) as bars:
            cluster = RECCCluster(
                spec=spec,
                backend=chosen.name,
                shutdown_on_close=False,
                quiet=True,
                progress=PhaseProgress(bars),
            )
        cluster.close()
    record = cluster.record
    assert record is not None
    result = {
        "name": record.name,
        "backend": record.backend,
        "scheduler_address": record.scheduler_address,
        "dashboard_link": record.dashboard_link,
        "workers": spec.total_workers,
        "usd_per_hour": record.usd_per_hour,
    }
    if json_output:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    out.print(
        f"[bold green]Created[/] {record.name} ({record.backend}, {spec.total_workers} workers)"
    )
    out.print(f"  scheduler: {record.scheduler_address}")
    out.print(f"  dashboard: {record.dashboard_link}")
    out.print(f"  estimated: ${record.usd_per_hour:.2f}/h")
    out.print(f"  connect:   RECCCluster.from_name({record.name!r}) or RECCClient({record.name!r})")
    out.print(f"  delete:    recc down {record.name}")


def ls_command(backend: BackendOpt = None, json_output: JsonOpt = False) -> None:
    """List clusters with status, workers, age, $/h and estimated cost so far."""
    with errors_to_exit():
        views = describe_clusters(backend)
    if json_output:
        sys.stdout.write(json.dumps([v.to_dict() for v in views], indent=2) + "\n")
        return
    table = Table("name", "status", "workers", "age", "$/h", "cost so far*", "dashboard")
    for v in views:
        style = "red" if v.status == "failed" else None
        table.add_row(
            v.name,
            v.status,
            f"{v.workers}/{v.workers_requested}",
            format_duration(max(1, int(v.age_seconds))),
            f"{v.usd_per_hour:.2f}",
            f"{v.cost_so_far_usd:.2f}",
            v.dashboard_link or "-",
            style=style,
        )
    out.print(table)
    out.print("* estimated from the plan and the cluster's age")


def down_command(
    names: Annotated[Optional[list[str]], typer.Argument(help="Clusters to delete.")] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Delete every cluster of the backend.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (with --all).")] = False,
    backend: BackendOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Delete clusters: every process and resource they had. Safe to repeat."""
    with errors_to_exit():
        if all_:
            names = [v.name for v in describe_clusters(backend)]
            if names and not yes:
                if not sys.stdin.isatty():
                    fail("--all deletes " + ", ".join(names) + "; pass --yes to confirm")
                typer.confirm(
                    f"Delete {len(names)} clusters: {', '.join(names)}?", abort=True, err=True
                )
        if not names:
            fail("name at least one cluster, or --all (see `recc ls`)")
        for name in names:  # every name is checked before any cluster is deleted
            check_cluster_name(name)
    results: dict[str, str] = {}
    for name in names or []:
        try:
            results[name] = delete_cluster(name, backend, how="down")
        except ClusterNotFound as e:
            results[name] = f"unknown: {e}"
    if json_output:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        for name, outcome in results.items():
            (err if outcome.startswith("unknown") else out).print(f"{name}: {outcome}")
    if any(outcome.startswith("unknown") for outcome in results.values()):
        raise typer.Exit(1)


def logs_command(
    name: Annotated[str, typer.Argument(help="Cluster name.")],
    worker: Annotated[Optional[str], typer.Option("--worker", help="Only this worker.")] = None,
    backend: BackendOpt = None,
) -> None:
    """Print the logs of a cluster's scheduler and workers."""
    with errors_to_exit():
        chosen = get_backend(backend)
        logs = chosen.logs(find_cluster(name, backend), worker=worker)
        if worker is not None and not logs:
            raise ClusterNotFound(f"no worker {worker!r} in cluster {name!r}")
    for source, text in logs.items():
        out.rule(source)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


def register(app: typer.Typer) -> None:
    """Add ``up``, ``ls``, ``down`` and ``logs`` to the ``recc`` app."""
    app.command("up")(up_command)
    app.command("ls")(ls_command)
    app.command("down")(down_command)
    app.command("logs")(logs_command)
