"""``recc platform configure``: ``terraform output -json`` -> validated settings -> YAML.

A pure core (outputs -> settings) with one side effect at the edge: the YAML file written into
the user's dask config directory::

    terraform output -json > platform.json
    recc platform configure --from-terraform platform.json   # writes recc-platform.yaml
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from recc import config
from recc.errors import ConfigError
from recc.platform.settings import PLATFORM_FILE, SETTINGS, Setting, nest


def read_terraform_outputs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The values of the outputs in a ``terraform output -json`` file.

    Example::

        >>> read_terraform_outputs("platform.json")["cluster_name"]  # doctest: +SKIP
        'research-dask'
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read Terraform outputs from {path}: {e.strerror}") from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is not JSON ({e.msg} at line {e.lineno}); create it with "
            f"`terraform output -json > {path.name}`"
        ) from e
    return parse_terraform_outputs(raw, source=str(path))


def parse_terraform_outputs(raw: Any, source: str = "outputs") -> dict[str, Any]:
    """Unwrap ``{"name": {"value": v, "type": ..., "sensitive": ...}}`` into ``{"name": v}``."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected the JSON object printed by `terraform output -json`, "
            f"got {type(raw).__name__}"
        )
    values = {}
    for name, output in raw.items():
        if not isinstance(output, dict) or "value" not in output:
            raise ConfigError(
                f'{source}: output {name!r} has no "value"; expected the format of '
                f'`terraform output -json`, e.g. {{"{name}": {{"value": ..., "type": "string"}}}}'
            )
        values[name] = output["value"]
    return values


def settings_from_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """RECC config keys (``eks.cluster-name``, ...) and values from Terraform output values.

    Pure: validates every known output (type and shape) and names the output, the value and a
    valid example when one is wrong; required outputs must be present. Outputs RECC does not
    read are ignored; empty optional strings become None (the packaged default).

    Example::

        >>> settings_from_outputs({"cluster_name": "research-dask", "region": "eu-west-1",
        ...     "subnet_ids": ["subnet-0abc"], "node_role_arn": "arn:aws:iam::1:role/n"})
        {'eks.cluster-name': 'research-dask', 'eks.region': 'eu-west-1', \
'eks.subnets': ['subnet-0abc'], 'eks.node-role-arn': 'arn:aws:iam::1:role/n'}
    """
    missing = [s.output for s in SETTINGS if s.required and s.output not in outputs]
    if missing:
        raise ConfigError(
            f"Terraform outputs lack {', '.join(missing)}: re-export them from the root module "
            "(see terraform/examples/complete/outputs.tf)"
        )
    settings: dict[str, Any] = {}
    for s in SETTINGS:
        if s.output in outputs:
            settings[s.key] = _validated(s, outputs[s.output])
    return settings


def _validated(setting: Setting, value: Any) -> Any:
    def bad(problem: str) -> ConfigError:
        return ConfigError(
            f"Terraform output {setting.output}={value!r} (for recc.{setting.key}): {problem} "
            f"(for example: {setting.example})"
        )

    if value is None or value == "":
        if setting.required:
            raise bad("is required")
        return None
    if setting.kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("must be a list of strings")
        if setting.required and not value:
            raise bad("must not be empty")
        items = value
    else:
        if not isinstance(value, str):
            raise bad("must be a string")
        items = [value]
    if setting.pattern:
        for item in items:
            if not re.search(setting.pattern, item):
                raise bad(f"{item!r} does not look right")
    return list(value) if setting.kind is list else value


def platform_config_path(directory: str | os.PathLike[str] | None = None) -> Path:
    """Where ``configure`` writes: ``<dask config dir>/recc-platform.yaml``."""
    return Path(directory or config.user_config_dir()) / PLATFORM_FILE


def write_platform_config(
    settings: Mapping[str, Any],
    directory: str | os.PathLike[str] | None = None,
    source: str | None = None,
) -> Path:
    """Write ``settings`` as dask YAML into the user's config directory, atomically.

    The file belongs to ``recc platform configure``: it is replaced as a whole, so it always
    reflects one Terraform state. A user's own ``recc.yaml`` in the same directory sorts after
    it and therefore overrides it; ``DASK_RECC__*`` variables override both.
    """
    path = platform_config_path(directory)
    header = (
        "# Written by `recc platform configure`"
        + (f" from {source}" if source else "")
        + f" at {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}.\n"
        "# Re-run it after `terraform apply` instead of editing; put overrides in recc.yaml.\n"
    )
    body = yaml.safe_dump(nest(settings), sort_keys=False, default_flow_style=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader (another RECC process) never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".recc-platform-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(header + body)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from e
    return path


@dataclass(frozen=True)
class Configured:
    """What ``configure_from_terraform`` wrote, and where."""

    path: Path
    settings: dict[str, Any]


def configure_from_terraform(
    outputs_file: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None
) -> Configured:
    """Read ``terraform output -json``, validate it, write RECC's platform config.

    Nothing is written unless every output is valid. Call :func:`recc.config.refresh` to see
    the new values in a running process.

    Example::

        >>> done = configure_from_terraform("platform.json")  # doctest: +SKIP
        >>> recc.config.refresh(); recc.config.get("eks.cluster-name")  # doctest: +SKIP
        'research-dask'
    """
    settings = settings_from_outputs(read_terraform_outputs(outputs_file))
    path = write_platform_config(settings, directory, source=str(outputs_file))
    return Configured(path=path, settings=settings)
