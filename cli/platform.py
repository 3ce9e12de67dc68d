"""``recc platform``: point RECC at the platform Terraform built, and check it.

Parses, calls :mod:`recc.platform`, prints. Nothing else lives here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from recc import platform
from recc.errors import ConfigError, RECCError

app = typer.Typer(
    help="The platform RECC runs on: configure RECC from Terraform, install, check it.",
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


@app.command()
def install(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the manifests as YAML; contact nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Apply the platform's Kubernetes objects: the dask-kubernetes operator (CRDs, RBAC,
    Deployment), the researchers' RBAC and admission policy, the harvester CronJob.

    Run as a platform admin after `recc platform configure`; safe to re-run.
    """
    try:
        if dry_run:
            manifests = platform.platform_manifests(
                platform.platform_settings(), platform.recc_version()
            )
            if as_json:
                typer.echo(json.dumps(manifests, indent=2))
            else:
                dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
                typer.echo(yaml.dump_all(manifests, Dumper=dumper, sort_keys=False), nl=False)
            return
        applied = platform.install()
    except RECCError as e:
        typer.echo(f"Error: {e}", err=True)
        raise typer.Exit(1) from e
    if as_json:
        typer.echo(json.dumps([asdict(a) for a in applied], indent=2))
        return
    table = Table(title="Applied", title_justify="left")
    for column in ("action", "kind", "namespace", "name"):
        table.add_column(column)
    for a in applied:
        table.add_row(a.action, a.kind, a.namespace or "", a.name)
    Console().print(table)


def _shown(key: str, value: Any) -> str:
    if value is None:
        return "(default)"
    return platform.display_value(key, value)
