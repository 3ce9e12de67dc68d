"""Spec flags shared by every command that describes a cluster (plan, up, job aggregate).

``@spec_options`` adds the flags to a command's signature and hands the command one
``spec_flags`` dict of ClusterSpec overrides, so the flags are declared once.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer

from recc.errors import SpecError

_P = "Cluster spec"  # rich help panel

SPEC_FLAGS: list[tuple[str, Any]] = [
    (
        "name",
        Annotated[
            Optional[str],
            typer.Option(
                "--name", help="Cluster name (DNS-1123, starts with a letter).", rich_help_panel=_P
            ),
        ],
    ),  # noqa: E501
    (
        "n_workers",
        Annotated[
            Optional[int],
            typer.Option("--n-workers", help="Number of workers.", rich_help_panel=_P),
        ],
    ),  # noqa: E501
    (
        "instance_type",
        Annotated[
            Optional[str],
            typer.Option(
                "--instance-type", help="EC2 instance type, e.g. c5.xlarge.", rich_help_panel=_P
            ),
        ],
    ),  # noqa: E501
    (
        "worker_memory",
        Annotated[
            Optional[str],
            typer.Option(
                "--worker-memory", help="Memory per worker, e.g. 1.5GiB.", rich_help_panel=_P
            ),
        ],
    ),  # noqa: E501
    (
        "worker_cpu",
        Annotated[
            Optional[str],
            typer.Option(
                "--worker-cpu", help="CPUs per worker, e.g. 1 or 500m.", rich_help_panel=_P
            ),
        ],
    ),  # noqa: E501
    (
        "scheduler_memory",
        Annotated[
            Optional[str],
            typer.Option(
                "--scheduler-memory", help="Scheduler memory, e.g. 4GiB.", rich_help_panel=_P
            ),
        ],
    ),  # noqa: E501
    (
        "scheduler_cpu",
        Annotated[
            Optional[str],
            typer.Option("--scheduler-cpu", help="Scheduler CPUs.", rich_help_panel=_P),
        ],
    ),  # noqa: E501
    (
        "resource",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--resource",
                help="Worker resource KEY=VALUE (repeatable), e.g. GPU=1.",
                rich_help_panel=_P,
            ),
        ],
    ),  # noqa: E501
    (
        "env",
        Annotated[
            Optional[list[str]],
            typer.Option(
                "--env", help="Environment variable KEY=VALUE (repeatable).", rich_help_panel=_P
            ),
        ],
    ),  # noqa: E501
    (
        "image",
        Annotated[
            Optional[str],
            typer.Option("--image", help="Container image (EKS).", rich_help_panel=_P),
        ],
    ),  # noqa: E501
    (
        "source_git_branch",
        Annotated[
            Optional[str],
            typer.Option(
                "--source-git-branch",
                help="Source branch mounted into the workers.",
                rich_help_panel=_P,
            ),
        ],
    ),  # noqa: E501
    (
        "job",
        Annotated[
            Optional[str],
            typer.Option("--job", help="Job name for cost attribution.", rich_help_panel=_P),
        ],
    ),  # noqa: E501
    (
        "idle_timeout",
        Annotated[
            Optional[str],
            typer.Option(
                "--idle-timeout",
                help="Shut down after this long idle, e.g. 30m.",
                rich_help_panel=_P,
            ),
        ],
    ),  # noqa: E501
    (
        "max_lifetime",
        Annotated[
            Optional[str],
            typer.Option("--max-lifetime", help="Maximum age, e.g. 8h.", rich_help_panel=_P),
        ],
    ),  # noqa: E501
    (
        "spot",
        Annotated[
            Optional[bool],
            typer.Option(
                "--spot/--on-demand", help="Capacity type.", show_default=False, rich_help_panel=_P
            ),
        ],
    ),  # noqa: E501
]


def key_values(items: list[str] | None, field: str, example: str) -> dict[str, str] | None:
    """``["A=1", "B=2"]`` -> ``{"A": "1", "B": "2"}``; a SpecError naming ``field`` otherwise."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(field, item, "expected KEY=VALUE", example)
        out[key] = value
    return out


def to_overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """CLI flag values -> ClusterSpec keyword overrides (None means not given)."""
    overrides = dict(flags)
    overrides["resources"] = key_values(overrides.pop("resource"), "resources", "--resource GPU=1")
    overrides["env"] = key_values(overrides.pop("env"), "env", "--env OMP_NUM_THREADS=1")
    return overrides


def spec_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the spec flags to ``command``, which receives them as ``spec_flags`` (a dict)."""
    # Resolve the command's own (possibly string) annotations in its module, since typer will
    # evaluate the wrapper's annotations in this module's namespace.
    hints = typing.get_type_hints(command, include_extras=True)
    signature = inspect.signature(command)
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in signature.parameters.values()
        if p.name != "spec_flags"
    ]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=hint)
        for name, hint in SPEC_FLAGS
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {name: kwargs.pop(name) for name, _ in SPEC_FLAGS}
        return command(*args, spec_flags=flags, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
    del wrapper.__wrapped__  # typer must read the new signature, not the original
    return wrapper
