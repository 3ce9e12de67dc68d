"""Finding ClusterSpec templates: packaged ones (recc.templates/clusters) and files by path.

A template is a YAML mapping of ClusterSpec fields plus an optional one-line ``description``.
Users keep their own next to their code and pass the path, or put them in a directory listed
in ``recc.template-dirs`` to use them by name.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import yaml

from recc import config
from recc.errors import SpecError

_SUFFIX = ".yaml"


@dataclass(frozen=True)
class TemplateInfo:
    """A template's name, one-line description and where it lives."""

    name: str
    description: str
    path: Path


def _search_dirs() -> list[Path]:
    user_dirs = [Path(d).expanduser() for d in (config.get("template-dirs") or [])]
    packaged = Path(str(importlib.resources.files("recc.templates") / "clusters"))
    return [*user_dirs, packaged]


def get_template_path(template: str | Path) -> Path:
    """The path of a template, by name (``"highmem"``) or as a path to a YAML file.

    Example
    -------
    >>> get_template_path("default").name
    'default.yaml'
    """
    candidate = Path(template).expanduser()
    if candidate.suffix in {".yaml", ".yml"} or candidate.parent != Path("."):
        if candidate.is_file():
            return candidate
        raise SpecError("template", str(template), "no such template file", _example())
    for directory in _search_dirs():
        path = directory / f"{template}{_SUFFIX}"
        if path.is_file():
            return path
    raise SpecError("template", str(template), "unknown template name", _example())


def list_templates() -> list[TemplateInfo]:
    """Every template reachable by name; a user's template shadows a packaged one."""
    found: dict[str, TemplateInfo] = {}
    for directory in reversed(_search_dirs()):
        for path in sorted(directory.glob(f"*{_SUFFIX}")):
            data = yaml.safe_load(path.read_text()) or {}
            found[path.stem] = TemplateInfo(path.stem, str(data.get("description", "")), path)
    return sorted(found.values(), key=lambda t: t.name)


def _example() -> str:
    names = [p.stem for p in (_search_dirs()[-1]).glob(f"*{_SUFFIX}")]
    return f"one of {', '.join(sorted(names))}, or a path such as ./my-template.yaml"
