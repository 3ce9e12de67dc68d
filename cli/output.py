"""Printing for the CLI: one place for JSON/YAML/table output and for errors.

Results go to stdout; errors and progress go to stderr, so ``--json`` output stays parseable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
import yaml
from rich.console import Console

from recc.errors import ClusterNotFound, RECCError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and logs

FORMATS = ("table", "json", "yaml")


def emit(data: Any, fmt: str, table: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON, YAML, or with the ``table`` renderer."""
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        table(data)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` to stderr and exit with ``code``."""
    err.print(f"[bold red]Error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Turn RECC's errors into a message on stderr and exit code 2 (1 for unknown clusters)."""
    try:
        yield
    except ClusterNotFound as e:
        fail(str(e), code=1)
    except RECCError as e:
        fail(str(e), code=2)
