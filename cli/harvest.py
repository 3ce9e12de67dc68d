"""``recc harvest``, ``recc protect`` and ``recc unprotect``: reap idle, expired, unreachable and
orphaned clusters, and keep chosen ones from it."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from recc.cli.output import err, errors_to_exit, fail, out
from recc.harvest.evidence import human_duration
from recc.harvest.protect import parse_until, protect, unprotect
from recc.harvest.reap import HarvestReport, harvest

BackendOpt = Annotated[
    Optional[str], typer.Option("--backend", help="local or eks (default: from config).")
]


def harvest_command(
    backend: BackendOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what would be reaped (the default).")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Reap without asking (for schedules and scripts).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    max_deletions: Annotated[
        Optional[int],
        typer.Option(
            "--max-deletions",
            min=0,
            help="Reap at most N clusters in this pass (default: recc.harvest.max-deletions).",
        ),
    ] = None,
) -> None:
    """Find idle, expired, unreachable and orphaned clusters, and reap them (with --yes).

    Without --yes this is a dry run; on a terminal it then offers to reap what it found.
    """
    if dry_run and yes:
        fail("--dry-run and --yes contradict each other; give one of them")
    with errors_to_exit():
        report = harvest(backend, dry_run=not yes, max_deletions=max_deletions)
        interactive = not dry_run and not yes and not json_output and on_terminal()
        if interactive and report.to_reap:
            _print(report)
            count = len(report.to_reap)
            if not typer.confirm(f"Reap {count} cluster{'s' * (count != 1)} now?", err=True):
                raise typer.Exit(0)
            # Decided afresh: each cluster is observed again under its lock before deletion.
            report = harvest(backend, dry_run=False, max_deletions=max_deletions)
    if json_output:
        sys.stdout.write(json.dumps([r.to_dict() for r in report.rows], indent=2) + "\n")
    else:
        _print(report)
    if report.failed:
        raise typer.Exit(1)


def on_terminal() -> bool:
    """Whether a person can answer a question (not a script, a pipe or a CronJob)."""
    return sys.stdin.isatty()


def _print(report: HarvestReport) -> None:
    columns = ["cluster", "owner", "age", "idle for", "decision", "reason", "$/h reclaimed"]
    table = Table(*columns, *([] if report.dry_run else ["outcome"]), title=_title(report))
    for row in report.rows:
        o, d = row.observation, row.decision
        style = "red" if row.failed else ("yellow" if d.reap else None)
        table.add_row(
            d.cluster,
            o.owner,
            human_duration(o.age(row.at)),
            human_duration(o.idle_seconds),
            d.decision,
            d.reason,
            f"{d.usd_per_hour_reclaimed:.2f}",
            *([] if report.dry_run else [row.outcome]),
            style=style,
        )
    out.print(table)
    if report.dry_run:
        out.print(
            f"Would reap {len(report.to_reap)} of {len(report.rows)} clusters, reclaiming "
            f"${report.usd_per_hour_reclaimed:.2f}/h (dry run: recc harvest --yes reaps them)"
        )
    else:
        out.print(
            f"Reaped {len(report.reaped)} of {len(report.rows)} clusters, reclaiming "
            f"${report.usd_per_hour_reclaimed:.2f}/h"
            + (f"; {len(report.failed)} failed" if report.failed else "")
        )


def _title(report: HarvestReport) -> str:
    mode = "dry run" if report.dry_run else "reaping"
    return f"recc harvest ({report.backend} backend, {mode})"


def protect_command(
    name: Annotated[str, typer.Argument(help="Cluster to protect.")],
    until: Annotated[
        Optional[str],
        typer.Option(
            "--until", help="Protect until this RFC 3339 time, e.g. 2026-12-01T18:00:00Z."
        ),
    ] = None,
    backend: BackendOpt = None,
) -> None:
    """Keep a cluster from the harvester (until --until, else until `recc unprotect`)."""
    with errors_to_exit():
        moment = parse_until(until) if until is not None else None
        protection = protect(name, moment, backend)
    when = f"until {protection.to_dict()['until']}" if moment else "until `recc unprotect`"
    out.print(f"{name}: protected from the harvester {when}")


def unprotect_command(
    name: Annotated[str, typer.Argument(help="Cluster to unprotect.")],
    backend: BackendOpt = None,
) -> None:
    """Let the harvester judge a protected cluster again."""
    with errors_to_exit():
        was = unprotect(name, backend)
    (out if was else err).print(f"{name}: {'unprotected' if was else 'was not protected'}")


def register(app: typer.Typer) -> None:
    """Add ``harvest``, ``protect`` and ``unprotect`` to the ``recc`` app."""
    app.command("harvest")(harvest_command)
    app.command("protect")(protect_command)
    app.command("unprotect")(unprotect_command)
