"""``recc budget``: AWS Budgets on RECC's tags, and activating those tags for cost allocation.

Parses, calls :mod:`recc.budgets`, prints.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Optional

import typer
from rich.table import Table

from recc import budgets
from recc.cli.output import emit, errors_to_exit, fail, out

app = typer.Typer(
    help="Monthly AWS Budgets per user or namespace on RECC's tags, with email alerts.",
    no_args_is_help=True,
)


@app.command("set")
def set_command(
    monthly_usd: Annotated[float, typer.Option("--monthly-usd", help="The monthly budget in USD.")],
    email: Annotated[
        list[str], typer.Option("--email", help="Who is alerted (repeatable, up to 10).")
    ],
    user: Annotated[
        Optional[str], typer.Option("--user", help="Budget everything tagged recc:user=USER.")
    ] = None,
    namespace: Annotated[
        Optional[str],
        typer.Option("--namespace", help="Budget everything tagged recc:namespace=NAMESPACE."),
    ] = None,
    alert_at: Annotated[
        Optional[list[float]],
        typer.Option("--alert-at", help="Alert at this % of the budget (repeatable; default 80)."),
    ] = None,
    forecasted: Annotated[
        bool,
        typer.Option("--forecasted", help="Alert on the month's forecast instead of actual spend."),
    ] = False,
) -> None:
    """Create or update a monthly budget for a user or a namespace.

    Example: recc budget set --user alice --monthly-usd 200 --alert-at 80 --email a@example.org
    """
    if (user is None) == (namespace is None):
        fail("give exactly one of --user or --namespace (for example: --user alice)")
    scope, value = ("user", user) if user is not None else ("namespace", namespace)
    with errors_to_exit():
        request = budgets.BudgetRequest(
            scope,
            str(value),
            monthly_usd,
            alert_at=tuple(alert_at or (80.0,)),
            forecasted=forecasted,
            emails=tuple(email),
        )
        done = budgets.set_budget(request)
    kind = "forecasted" if forecasted else "actual"
    thresholds = ", ".join(f"{t:g}%" for t in sorted(set(request.alert_at)))
    out.print(
        f"{done.capitalize()} budget {budgets.budget_name(scope, str(value))}: "
        f"${monthly_usd:,.2f}/month on recc:{scope}={value}; alerts when {kind} spend passes "
        f"{thresholds} -> {', '.join(request.emails)}",
        highlight=False,
    )


@app.command("ls")
def ls_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the budgets that filter on RECC's tags (made here or by Terraform)."""
    with errors_to_exit():
        found = budgets.list_budgets()

    def table(_: object) -> None:
        t = Table("budget", "on", "monthly", "spent", "forecast", "alerts", title_justify="left")
        for b in found:
            t.add_row(
                b.name,
                f"recc:{b.scope}={b.value}",
                f"${b.monthly_usd:,.2f}",
                f"${b.actual_usd:,.2f}",
                "-" if b.forecasted_usd is None else f"${b.forecasted_usd:,.2f}",
                ", ".join(b.notifications) or "none",
            )
        out.print(t if found else "No budgets on RECC's tags (recc budget set creates one).")

    emit([asdict(b) for b in found], "json" if as_json else "table", table)


@app.command("activate-tags")
def activate_tags_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Activate RECC's tag keys as cost allocation tags (for budgets and Cost Explorer).

    The keys: recc:cluster, recc:user, recc:namespace and recc:job.
    """
    with errors_to_exit():
        result = budgets.activate_tags()

    def table(_: object) -> None:
        t = Table("tag", "status")
        for key, status in result.items():
            t.add_row(key, status)
        out.print(t)
        if any(status != "Active" for status in result.values()):
            out.print(
                "A tag key is known to billing only once a tagged resource has been billed "
                "(up to a day after the first cluster): try again then.",
                highlight=False,
            )

    emit(result, "json" if as_json else "table", table)
    if any(status != "Active" for status in result.values()):
        raise typer.Exit(1)
