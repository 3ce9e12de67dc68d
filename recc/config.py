"""RECC's settings: packaged defaults merged into dask config under the ``recc`` namespace.

Users override them in ``~/.config/dask/*.yaml`` or with ``DASK_RECC__*`` environment
variables; everything RECC reads goes through :func:`get` so there is one place to look.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dask.config
import yaml

_DEFAULTS_FILE = Path(__file__).with_name("recc.yaml")


def _load_defaults() -> None:
    with open(_DEFAULTS_FILE) as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)


_load_defaults()


def get(key: str, override: Any = None, default: Any = None) -> Any:
    """The value of ``recc.<key>``; ``override`` wins when not None; ``default`` if unset."""
    return dask.config.get(f"recc.{key}", default=default, override_with=override)


def refresh() -> None:
    """Re-read dask config files and environment variables (after they changed).

    dask reads ``DASK_CONFIG`` only when it is imported; a directory named there later (e.g.
    by ``recc platform configure`` in a test) is added to the search paths here.
    """
    extra = os.environ.get("DASK_CONFIG")
    paths = list(dask.config.paths)
    if extra and extra not in paths:
        paths.append(extra)
    dask.config.refresh(paths=paths)
    _load_defaults()


def user_config_dir() -> Path:
    """Where dask reads YAML config from for this user (``DASK_CONFIG`` or ~/.config/dask)."""
    return Path(os.environ.get("DASK_CONFIG") or dask.config.PATH)


def state_dir() -> Path:
    """Per-user state: cluster records, certificates, logs (XDG_STATE_HOME conventions)."""
    configured = get("state-dir")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "recc"


def cache_dir() -> Path:
    """Per-user cache for instance facts and prices (XDG_CACHE_HOME conventions)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "recc"
