"""``recc cost``: who spent what, estimated from the ledger, with Cost Explorer's actuals beside.

Parses, calls :func:`recc.spend.spend_report`, prints.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Optional

import typer
from rich.table import Table

from recc.cli.output import emit, errors_to_exit, out
from recc.spend import GROUPINGS, SpendReport, format_usd, month_start, parse_when, spend_report


def _when(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%MZ")


def print_report(report: SpendReport) -> None:
    """The human view: one row per group, totals, and what each column means."""
    with_actual = report.actual is not None
    table = Table(
        title=f"Spend by {report.by}, {_when(report.since)} to {_when(report.until)}",
        title_justify="left",
        show_footer=True,
    )
    table.add_column(report.by, footer="total")
    table.add_column("clusters", justify="right", footer=str(sum(r.clusters for r in report.rows)))
    table.add_column("running", justify="right", footer=str(sum(r.running for r in report.rows)))
    table.add_column("hours", justify="right", footer=f"{sum(r.hours for r in report.rows):,.1f}")
    table.add_column("estimated", justify="right", footer=f"~{format_usd(report.estimated_total)}")
    if with_actual:
        table.add_column("actual", justify="right", footer=format_usd(report.actual_total or 0))
    for r in report.rows:
        cells = [r.key, str(r.clusters), str(r.running), f"{r.hours:,.1f}"]
        cells.append(f"~{format_usd(r.estimated_usd)}")
        if with_actual:
            cells.append(format_usd(r.actual_usd or 0))
        table.add_row(*cells)
    out.print(table)
    out.print(
        f"estimated: the plan's $/h x hours inside the window, from the ledger at "
        f"{report.ledger_url} (running clusters count up to now)",
        highlight=False,
    )
    if report.actual is not None:
        a = report.actual
        last_day = a.end - dt.timedelta(days=1)
        provisional = "; recent days are provisional" if a.provisional else ""
        out.print(
            f"actual: Cost Explorer, unblended cost of resources tagged recc:managed-by=recc, "
            f"whole days {a.start} to {last_day}{provisional}",
            highlight=False,
        )
    else:
        out.print(f"actual: {report.actual_note}", style="dim", highlight=False)


def cost_command(
    by: Annotated[str, typer.Option("--by", help=f"Group by {', '.join(GROUPINGS)}.")] = "user",
    since: Annotated[
        Optional[str],
        typer.Option(
            "--since",
            help="Window start: 2026-11-01, an RFC 3339 time, or a duration ago (7d). "
            "Default: the start of this month (UTC).",
        ),
    ] = None,
    until: Annotated[
        Optional[str], typer.Option("--until", help="Window end (same forms). Default: now.")
    ] = None,
    actual: Annotated[
        Optional[bool],
        typer.Option(
            "--actual/--no-actual",
            help="Ask Cost Explorer for actual spend (USD 0.01 per query). "
            "Default: when an EKS platform is configured.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Spend per user, team, namespace, job or cluster: estimated, and actual where known.

    Estimates come from the ledger ($/h x hours inside the window); actual spend from Cost
    Explorer, grouped by RECC's cost allocation tags.

    Example: recc cost --by job --since 2026-11-01
    """
    now = dt.datetime.now(dt.timezone.utc)
    with errors_to_exit():
        start = parse_when(since, now, "--since") if since else month_start(now)
        end = parse_when(until, now, "--until") if until else now
        report = spend_report(by, start, end, now, actual=actual)
    emit(report.to_dict(), "json" if as_json else "table", lambda _: print_report(report))


def register(app: typer.Typer) -> None:
    """Add ``cost`` to the ``recc`` app."""
    app.command("cost")(cost_command)
