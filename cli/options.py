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

_PANEL = "Cluster spec"

# (ClusterSpec field, value type, help). The flag is the field with dashes: --n-workers.
_FLAG_TABLE: list[tuple[str, Any, str]] = [
    ("name", str, "Cluster name (DNS-1123, starts with a letter)."),
    ("n_workers", int, "Number of workers."),
    ("instance_type", str, "EC2 instance type, e.g. c5.xlarge."),
    ("worker_memory", str, "Memory per worker, e.g. 1.5GiB."),
    ("worker_cpu", str, "CPUs per worker, e.g. 1 or 500m."),
    ("scheduler_memory", str, "Scheduler memory, e.g. 4GiB."),
    ("scheduler_cpu", str, "Scheduler CPUs."),
    ("resource", list[str], "Worker resource KEY=VALUE (repeatable), e.g. GPU=1."),
    ("env", list[str], "Environment variable KEY=VALUE (repeatable)."),
    ("image", str, "Container image (EKS)."),
    ("source_git_branch", str, "Source branch mounted into the workers."),
    ("job", str, "Job name for cost attribution."),
    ("idle_timeout", str, "Shut down after this long idle, e.g. 30m."),
    ("max_lifetime", str, "Maximum age, e.g. 8h."),
]


def _option(name: str, kind: Any, help_text: str) -> Any:
    flag = "--" + name.replace("_", "-")
    return Annotated[Optional[kind], typer.Option(flag, help=help_text, rich_help_panel=_PANEL)]


SPEC_FLAGS: list[tuple[str, Any]] = [
    *((name, _option(name, kind, text)) for name, kind, text in _FLAG_TABLE),
    (
        "spot",
        Annotated[
            Optional[bool],
            typer.Option(
                "--spot/--on-demand",
                help="Capacity type.",
                show_default=False,
                rich_help_panel=_PANEL,
            ),
        ],
    ),
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
