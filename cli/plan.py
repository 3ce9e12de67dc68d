"""``recc plan`` and ``recc templates``: what a cluster would need and cost, before creating it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from recc.cli.options import spec_options, to_overrides
from recc.cli.output import emit, errors_to_exit, out
from recc.estimate import Estimate, estimate
from recc.naming import current_user
from recc.spec import resolve_spec
from recc.tags import Ownership
from recc.templates_index import list_templates

Template = Annotated[
    Optional[str], typer.Argument(help="Template name (see `recc templates`) or a YAML file path.")
]
Output = Annotated[str, typer.Option("--output", "-o", help="table, json or yaml.")]


def print_estimate(e: Estimate) -> None:
    """The human view of a plan: spec, node groups, cost."""
    spec = e.spec.to_dict()
    table = Table(title="Cluster spec", show_header=False, title_justify="left")
    for key, value in spec.items():
        if value not in (None, {}, [], ()):
            table.add_row(key, str(value))
    out.print(table)
    groups = Table(title=f"Node plan ({e.plan.catalog_source})", title_justify="left")
    for col in ("group", "instances", "workers/node", "packed cpu/mem", "idle/full node", "$/h"):
        groups.add_column(col)
    for g, c in zip(e.plan.groups, e.cost.groups, strict=True):
        idle = g.idle_per_full_node
        groups.add_row(
            g.name + (" +scheduler" if g.hosts_scheduler else ""),
            f"{g.instances} x {g.instance_type}",
            f"{g.workers_per_node} ({g.limited_by})",
            f"{g.cpu_packing:.0%}/{g.memory_packing:.0%}",
            f"{idle.cpu_m}m {idle.memory_mib}MiB",
            f"{c.usd_per_hour:.2f} {c.capacity_type}",
        )
    out.print(groups)
    out.print(
        f"Estimated cost: [bold]${e.cost.usd_per_hour:.2f}/h[/] = instances "
        f"${e.cost.instances_usd_per_hour:.2f}/h + EKS control-plane share "
        f"${e.cost.control_plane_usd_per_hour:.2f}/h  (prices: {e.cost.groups[0].price_source})"
    )


def _manifests(e: Estimate) -> list[dict[str, Any]]:
    from recc.render import PlatformSettings, render_manifests

    name = e.spec.name or f"recc-{current_user()}-plan"
    owner = Ownership(
        cluster=name, user=current_user(), namespace=name,
        created_at=dt.datetime.now(dt.timezone.utc), job=e.spec.job,
        idle_timeout=e.spec.idle_timeout, max_lifetime=e.spec.max_lifetime,
    )
    return render_manifests(e.spec, e.plan, owner, PlatformSettings.from_config())


@spec_options
def plan_command(
    template: Template = None,
    *,
    spec_flags: dict[str, Any],
    output: Output = "table",
    manifests: Annotated[
        bool, typer.Option("--manifests", help="Also print the Kubernetes manifests.")
    ] = False,
) -> None:
    """Show the resolved spec, the node plan and the estimated cost, creating nothing."""
    with errors_to_exit():
        if output not in ("table", "json", "yaml"):
            raise typer.BadParameter(f"{output!r}; use table, json or yaml", param_hint="-o")
        result = estimate(resolve_spec(template, **to_overrides(spec_flags)))
        data = result.to_dict()
        if manifests:
            data["manifests"] = _manifests(result)

    def table(data: dict[str, Any]) -> None:
        print_estimate(result)
        if manifests:
            import yaml

            out.print(yaml.safe_dump_all(data["manifests"], sort_keys=False), highlight=False)

    emit(data, output, table)


def templates_command(
    output: Output = "table",
) -> None:
    """List the cluster templates with a one-line description."""
    found = list_templates()
    data = [{"name": t.name, "description": t.description, "path": str(t.path)} for t in found]

    def table(rows: list[dict[str, str]]) -> None:
        t = Table("template", "description")
        for row in rows:
            t.add_row(row["name"], row["description"])
        out.print(t)

    emit(data, output, table)


def register(app: typer.Typer) -> None:
    """Add ``plan`` and ``templates`` to the ``recc`` app."""
    app.command("plan")(plan_command)
    app.command("templates")(templates_command)
