"""ClusterSpec: everything one cluster needs, validated and frozen.

A spec resolves from four layers, highest last::

    packaged defaults  <-  dask config (recc.*, DASK_RECC__*)  <-  template  <-  keyword args

Every invalid value raises :class:`~recc.errors.SpecError` naming the field, the value and a
valid example, before any resource exists. Numbers are finite and bounded: at most
:data:`MAX_WORKERS` (10,000) workers over all groups, resource amounts at most
:data:`MAX_RESOURCE`, and the bounds of :mod:`recc.units` for sizes, CPUs and durations.

Example
-------
>>> spec = resolve_spec("default", n_workers=100, scheduler_memory_GiB=4)
>>> spec.n_workers, spec.scheduler_memory
(100, 4294967296)
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from recc import config
from recc.errors import SpecError
from recc.naming import CLUSTER_NAME_EXAMPLE, cluster_name_problem, is_dns1123_label
from recc.templates_index import get_template_path
from recc.units import format_duration, format_memory, parse_cpu, parse_duration, parse_memory

# One valid example per field: every error message shows one, so this is the only place
# that needs to know what good input looks like.
EXAMPLES: dict[str, str] = {
    "name": CLUSTER_NAME_EXAMPLE,
    "instance_type": "instance_type='c5.xlarge'",
    "n_workers": "n_workers=20",
    "worker_memory": "worker_memory='1.5GiB' (or '1536MiB', or 1.5 meaning GiB)",
    "worker_cpu": "worker_cpu=1 (or '500m')",
    "scheduler_memory": "scheduler_memory='2GiB'",
    "scheduler_cpu": "scheduler_cpu=1",
    "resources": "resources={'GPU': 1, 'MEMORY': 2000}",
    "image": "image='ghcr.io/dask/dask:2026.8.0-py3.11'",
    "env": "env={'OMP_NUM_THREADS': '1'}",
    "source_git_branch": "source_git_branch='RSH-1234-feature-branch'",
    "job": "job='risk-aggregation'",
    "tags": "tags={'team': 'quant-research'}",
    "idle_timeout": "idle_timeout='1h' (or 'never')",
    "max_lifetime": "max_lifetime='12h' (or 'never')",
    "spot": "spot=True",
    "worker_groups": "worker_groups=[{'name': 'gpu', 'instance_type': 'p3.8xlarge', "
    "'n_workers': 4, 'worker_memory': '56GiB', 'worker_cpu': 7, 'resources': {'GPU': 1}}]",
}

# Keyword aliases from the production system's API (numbers in GiB).
ALIASES = {"worker_memory_GiB": "worker_memory", "scheduler_memory_GiB": "scheduler_memory"}

# One cluster's workers over all its groups: a bound for EKS (10,000 workers is thousands of
# nodes) that also keeps planning and quota arithmetic small. The local backend allows fewer:
# what the machine holds (recc.backends.local.check_fits_machine).
MAX_WORKERS = 10_000
# A resource amount (GPU=1, MEMORY=2000 MiB ...): more than any machine has of anything, and
# exact as a float.
MAX_RESOURCE = 1e12

# Always used with fullmatch: a "$" anchor would also accept a trailing newline.
_RESOURCE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_TAG_KEY = re.compile(r"[A-Za-z0-9 _.:/=+@-]{1,100}")
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+")


def _parsed(parser):  # noqa: ANN001, ANN202 - tiny adapter for pydantic's BeforeValidator
    return BeforeValidator(lambda v: parser(v))


Memory = Annotated[int, _parsed(parse_memory)]
Cpu = Annotated[float, _parsed(parse_cpu)]
Duration = Annotated[float | None, _parsed(parse_duration)]


def _as_mapping(value: Any) -> dict[Any, Any]:
    # dict() of an int raises TypeError, which pydantic would let escape as a crash; of a
    # string it gives a baffling message. Both deserve the usual SpecError.
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of names to values, not {type(value).__name__}")
    return dict(value)


def _string_mapping(value: Any, key_ok: Callable[[str], object], problem: str) -> dict[str, str]:
    """``value`` as names to strings, every name ``key_ok``; else ``problem`` names the first
    bad one (``{!r}`` stands for it)."""
    mapping = _as_mapping(value)
    bad = [k for k in mapping if not key_ok(str(k))]
    if bad:
        raise ValueError(problem.format(bad[0]))
    return {str(k): str(val) for k, val in mapping.items()}


def _check_resources(value: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, amount in _as_mapping(value).items():
        if not _RESOURCE_NAME.fullmatch(str(key)):
            raise ValueError(f"resource name {key!r} must start with a letter ([A-Za-z0-9_.-])")
        if isinstance(amount, bool):
            raise ValueError(f"resource {key} needs a number, got {amount!r}")
        try:
            number = float(amount)
        except (TypeError, ValueError, OverflowError) as e:  # OverflowError: 10**400
            raise ValueError(f"resource {key} needs a finite number, got {amount!r}") from e
        if not (math.isfinite(number) and 0 < number <= MAX_RESOURCE):
            raise ValueError(
                f"resource {key} must be a positive number of at most {MAX_RESOURCE:g}, "
                f"got {amount!r}"
            )
        out[str(key)] = number
    return out


def _check_n_workers(value: int) -> int:
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be a whole number of workers from 1 to {MAX_WORKERS}")
    return value


class WorkerGroup(BaseModel):
    """One pool of identical workers on its own node group (e.g. a GPU or high-memory pool)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "default"
    instance_type: str
    n_workers: int
    worker_memory: Memory
    worker_cpu: Cpu
    resources: dict[str, float] = Field(default_factory=dict)
    spot: bool = False

    _n_workers = field_validator("n_workers")(classmethod(lambda cls, v: _check_n_workers(v)))

    @field_validator("name")
    @classmethod
    def _group_name(cls, v: str) -> str:
        if not is_dns1123_label(v, 20):
            raise ValueError("must be a DNS-1123 label of at most 20 characters")
        return v

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, v: str) -> str:
        if not _INSTANCE_TYPE.fullmatch(v):
            raise ValueError("is not an EC2 instance type name")
        return v

    _resources = field_validator("resources", mode="before")(
        classmethod(lambda cls, v: _check_resources(v))
    )


class ClusterSpec(BaseModel):
    """A validated, frozen description of one RECC cluster.

    The first worker group is described by the top-level fields (``instance_type``,
    ``n_workers``, ``worker_memory`` ...); ``worker_groups`` adds more pools.
    Use :func:`resolve_spec` to build one from defaults, config, a template and overrides.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    instance_type: str
    n_workers: int
    worker_memory: Memory
    worker_cpu: Cpu
    scheduler_memory: Memory
    scheduler_cpu: Cpu
    resources: dict[str, float] = Field(default_factory=dict)
    image: str
    env: dict[str, str] = Field(default_factory=dict)
    source_git_branch: str | None = None
    job: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    idle_timeout: Duration = None
    max_lifetime: Duration = None
    spot: bool = False
    worker_groups: tuple[WorkerGroup, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        problem = cluster_name_problem(v) if v is not None else None
        if problem is not None:
            raise ValueError(problem)
        return v

    _n_workers = field_validator("n_workers")(classmethod(lambda cls, v: _check_n_workers(v)))

    _instance_type = field_validator("instance_type")(
        classmethod(lambda cls, v: WorkerGroup._instance_type(v))
    )
    _resources = field_validator("resources", mode="before")(
        classmethod(lambda cls, v: _check_resources(v))
    )

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError("must be a container image reference without spaces")
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Mapping[str, Any]) -> dict[str, str]:
        return _string_mapping(
            v, _ENV_NAME.fullmatch, "environment variable name {!r} is not [A-Za-z_][A-Za-z0-9_]*"
        )

    @field_validator("source_git_branch")
    @classmethod
    def _branch(cls, v: str | None) -> str | None:
        if v is not None and (not _BRANCH.fullmatch(v) or ".." in v or v.endswith((".lock", "/"))):
            raise ValueError("is not a git branch name")
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Mapping[str, Any]) -> dict[str, str]:
        return _string_mapping(
            v,
            lambda k: _TAG_KEY.fullmatch(k) and not k.startswith("recc:"),
            "tag key {!r} is invalid or reserved (recc:*)",
        )

    @field_validator("worker_groups")
    @classmethod
    def _check_groups(
        cls, v: tuple[WorkerGroup, ...], info: ValidationInfo
    ) -> tuple[WorkerGroup, ...]:
        names = [g.name for g in v]
        if "default" in names or len(set(names)) != len(names):
            raise ValueError("worker group names must be unique and not 'default'")
        total = info.data.get("n_workers", 0) + sum(g.n_workers for g in v)
        if total > MAX_WORKERS:
            raise ValueError(
                f"n_workers and the groups' workers add up to {total}, more than the "
                f"{MAX_WORKERS} one cluster may have"
            )
        return v

    def groups(self) -> tuple[WorkerGroup, ...]:
        """All worker groups, the top-level one (named ``default``) first."""
        # Values are validated already; constructing without validation keeps sizes in bytes
        # (validation would read a bare number as GiB).
        first = WorkerGroup.model_construct(
            name="default",
            instance_type=self.instance_type,
            n_workers=self.n_workers,
            worker_memory=self.worker_memory,
            worker_cpu=self.worker_cpu,
            resources=self.resources,
            spot=self.spot,
        )
        return (first, *self.worker_groups)

    @property
    def total_workers(self) -> int:
        """Workers over all groups."""
        return sum(g.n_workers for g in self.groups())

    def replace(self, **changes: Any) -> ClusterSpec:
        """A validated copy with ``changes`` applied."""
        return build_spec({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the same spelling users write (sizes as '1.5GiB', durations as '1h')."""
        data = self.model_dump(mode="json")
        for key in ("worker_memory", "scheduler_memory"):
            data[key] = format_memory(data[key])
        for key in ("idle_timeout", "max_lifetime"):
            data[key] = format_duration(data[key])
        for group in data["worker_groups"]:
            group["worker_memory"] = format_memory(group["worker_memory"])
        return data


FIELDS = tuple(ClusterSpec.model_fields)


def build_spec(values: Mapping[str, Any]) -> ClusterSpec:
    """Validate ``values`` into a :class:`ClusterSpec`, raising :class:`SpecError` on bad input."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise _unknown_field(unknown[0], values[unknown[0]])
    try:
        return ClusterSpec.model_validate(dict(values))
    except ValidationError as e:
        raise _spec_error(e, values) from None


def _unknown_field(key: str, value: Any) -> SpecError:
    close = difflib.get_close_matches(key, [*FIELDS, *ALIASES], n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(FIELDS)}"
    field = ALIASES.get(close[0], close[0]) if close else "n_workers"
    example = EXAMPLES.get(field, "n_workers=20")
    return SpecError(key, value, f"unknown field; {hint}", example)


def _spec_error(error: ValidationError, values: Mapping[str, Any]) -> SpecError:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    field = loc[0] if loc else "spec"
    value = values.get(field, first.get("input"))
    if len(loc) > 1:  # inside a worker group: name the nested field, show the nested value
        field = ".".join(loc)
        value = first.get("input")
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "is required"
    return SpecError(field, value, message, EXAMPLES.get(loc[0] if loc else "", "n_workers=20"))


def config_layer() -> dict[str, Any]:
    """Spec values from dask config (``recc.n-workers`` ...), which includes packaged defaults."""
    layer = {}
    for field in FIELDS:
        value = config.get(field.replace("_", "-"))
        if value is not None:
            layer[field] = value
    return layer


def load_template(template: str | Path) -> dict[str, Any]:
    """The spec values of a template: a packaged/user template name or a YAML file path."""
    path = get_template_path(template)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError("template", str(template), f"is not valid YAML: {e}", "default") from e
    if not isinstance(data, dict):
        raise SpecError("template", str(template), "must be a YAML mapping", "default")
    data.pop("description", None)
    return _apply_aliases(data, source=f"template {path}")


def _apply_aliases(values: Mapping[str, Any], source: str = "arguments") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        out[ALIASES.get(key, key)] = value
    return out


def resolve_spec(template: str | Path | None = None, **overrides: Any) -> ClusterSpec:
    """Build a spec from defaults <- dask config <- ``template`` <- ``overrides``.

    Parameters
    ----------
    template:
        A template name (``"default"``, ``"highmem"``, ...) or the path of a YAML file.
    **overrides:
        Any :class:`ClusterSpec` field; ``None`` means "not given". ``worker_memory_GiB`` and
        ``scheduler_memory_GiB`` are accepted as aliases.

    Example
    -------
    >>> resolve_spec("large-cluster-large-workers", n_workers=300).n_workers
    300
    """
    values = config_layer()
    if template is not None:
        values.update(load_template(template))
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(_apply_aliases(given))
    return build_spec(values)
