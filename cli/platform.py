"""``recc platform``: point RECC at the platform Terraform built, and check it.

Parses, calls :mod:`recc.platform`, prints. Nothing else lives here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from recc import platform
from recc.errors import ConfigError

app = typer.Typer(
    help="The platform RECC runs on: configure RECC from Terraform, check it.",
    no_args_is_help=True,
)

_STYLE = {
    platform.OK: "green",
    platform.MISSING: "bold red",
    platform.FAILED: "bold red",
    platform.UNSET: "dim",
    platform.SKIPPED: "yellow",
}


@app.command()
def configure(
    from_terraform: Annotated[
        Path,
        typer.Option(
            "--from-terraform",
            help="JSON of `terraform output -json` from the root module that uses "
            "terraform/ (see terraform/examples/complete).",
            dir_okay=False,
        ),
    ],
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            help="Dask config directory to write into (default: DASK_CONFIG or ~/.config/dask).",
            file_okay=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print what was written as JSON.")
    ] = False,
) -> None:
    """Write RECC's platform config (recc.eks.*) from Terraform outputs.

    Example: terraform output -json > platform.json && recc platform configure
    --from-terraform platform.json
    """
    try:
        done = platform.configure_from_terraform(from_terraform, config_dir)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="--from-terraform") from e
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "path": str(done.path),
                    "settings": {f"recc.{k}": v for k, v in done.settings.items()},
                },
                indent=2,
            )
        )
        return
    typer.echo(f"Wrote {done.path}")
    table = Table()
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in done.settings.items():
        table.add_row(f"recc.{key}", _shown(key, value))
    Console().print(table)
    typer.echo("Next: `recc platform check` to see that the platform answers.")


@app.command()
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
    offline: Annotated[
        bool, typer.Option("--offline", help="Only report configuration; call nothing.")
    ] = False,
) -> None:
    """Report which platform settings are set, and whether STS, EKS and Kubernetes answer.

    Exits 1 when a required setting is missing or a service does not answer.
    """
    report = platform.check_platform(offline=offline)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        table = Table(title="RECC platform", title_justify="left")
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for f in report.findings:
            style = _STYLE.get(f.status, "")
            table.add_row(f.name, f"[{style}]{f.status}[/]" if style else f.status, f.detail)
        console = Console()
        console.print(table)
        console.print("[green]ready[/]" if report.ok else "[bold red]not ready[/]")
    if not report.ok:
        raise typer.Exit(1)


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "(default)"
    return platform.display_value(key, value)
