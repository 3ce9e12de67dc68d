"""The ``recc`` command: parses, calls the library, prints. Nothing else lives here.

Each command group is its own module with its own ``typer.Typer()``; this module only
assembles them.
"""

from __future__ import annotations

import typer

from recc.cli import budget, clusters, cost, harvest, job, plan, platform

app = typer.Typer(
    name="recc",
    help="Ephemeral, cost-attributed Dask clusters: on EKS, or on this machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
plan.register(app)
clusters.register(app)

app.add_typer(platform.app, name="platform")
app.add_typer(budget.app, name="budget")
cost.register(app)
app.add_typer(job.app, name="job")
harvest.register(app)


def main() -> None:
    """Entry point of the ``recc`` console script."""
    app()


if __name__ == "__main__":
    main()
