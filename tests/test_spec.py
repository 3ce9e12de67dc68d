"""ClusterSpec: layered resolution, the production examples, templates, and every way input can
be wrong (a SpecError naming the field, the value and a valid example)."""

from __future__ import annotations

import ast
import importlib.resources
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import pydantic
import pytest

import recc.config
from recc import ClusterSpec, SpecError, get_template_path, list_templates, resolve_spec
from recc.spec import EXAMPLES, build_spec
from recc.units import GiB, MiB

STANDARD_TEMPLATES = {"default", "large-cluster-large-workers", "highmem", "gpu"}
GROUP = {
    "name": "gpu",
    "instance_type": "p3.8xlarge",
    "n_workers": 4,
    "worker_memory": "56GiB",
    "worker_cpu": 7,
    "resources": {"GPU": 1},
}


@pytest.fixture(autouse=True)
def clean_config(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No DASK_RECC__* variables from the outer environment; config re-read after each test."""
    for name in list(os.environ):
        if name.startswith("DASK_RECC__"):
            monkeypatch.delenv(name)
    recc.config.refresh()
    try:
        yield
    finally:
        monkeypatch.undo()
        recc.config.refresh()


def write_template(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- defaults and layering -------------------------------------------------------------------


def test_defaults_are_the_production_defaults() -> None:
    spec = resolve_spec()
    assert spec.instance_type == "c5.xlarge"
    assert spec.n_workers == 20
    assert spec.worker_memory == 1536 * MiB
    assert spec.worker_cpu == 1.0
    assert spec.scheduler_memory == 2 * GiB
    assert spec.scheduler_cpu == 1.0
    assert spec.idle_timeout == 3600 and spec.max_lifetime == 24 * 3600
    assert spec.spot is False and spec.name is None and spec.worker_groups == ()
    assert [g.name for g in spec.groups()] == ["default"]
    assert spec.total_workers == 20


def test_dask_config_overrides_packaged_defaults() -> None:
    with dask.config.set({"recc.n-workers": 7, "recc.worker-memory": "3GiB"}):
        spec = resolve_spec()
    assert (spec.n_workers, spec.worker_memory) == (7, 3 * GiB)
    assert resolve_spec().n_workers == 20  # the context ended: back to the default


def test_environment_variables_override_packaged_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_RECC__N_WORKERS", "7")
    monkeypatch.setenv("DASK_RECC__INSTANCE_TYPE", "m5.large")
    recc.config.refresh()
    spec = resolve_spec()
    assert (spec.n_workers, spec.instance_type) == (7, "m5.large")


def test_a_bad_environment_variable_is_a_spec_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASK_RECC__N_WORKERS", "0")
    recc.config.refresh()
    with pytest.raises(SpecError) as info:
        resolve_spec()
    assert info.value.field == "n_workers"


def test_template_overrides_config_and_keywords_override_template() -> None:
    with dask.config.set({"recc.n-workers": 7, "recc.image": "example.org/dask:1"}):
        from_template = resolve_spec("large-cluster-large-workers")
        from_kwargs = resolve_spec("large-cluster-large-workers", n_workers=300)
    assert from_template.n_workers == 200  # template beats dask config
    assert from_template.instance_type == "r5.4xlarge"
    assert from_template.image == "example.org/dask:1"  # the template is silent: config shows
    assert from_template.scheduler_memory == 8 * GiB
    assert from_kwargs.n_workers == 300  # keywords beat the template
    assert from_kwargs.worker_memory == 14 * GiB  # ...and leave the rest of it alone


def test_keyword_none_means_not_given() -> None:
    spec = resolve_spec("highmem", n_workers=None, worker_memory=None)
    assert (spec.n_workers, spec.worker_memory) == (10, 28 * GiB)


def test_template_by_name_path_and_string_path_agree() -> None:
    path = get_template_path("highmem")
    assert path.name == "highmem.yaml"
    assert resolve_spec("highmem") == resolve_spec(path) == resolve_spec(str(path))


def test_packaged_templates_live_inside_the_package() -> None:
    packaged = Path(str(importlib.resources.files("recc.templates") / "clusters"))
    for name in STANDARD_TEMPLATES:
        assert get_template_path(name).parent == packaged


def test_standard_templates_are_listed_with_a_description_and_resolve() -> None:
    listed = {t.name: t for t in list_templates()}
    assert STANDARD_TEMPLATES <= set(listed)
    for name in STANDARD_TEMPLATES:
        assert listed[name].description.strip(), name
        assert "\n" not in listed[name].description.strip()
        assert isinstance(resolve_spec(name), ClusterSpec)
    gpu = resolve_spec("gpu")
    assert (gpu.instance_type, gpu.resources) == ("p3.8xlarge", {"GPU": 1.0})


def test_user_template_file_by_path(tmp_path: Path) -> None:
    path = write_template(
        tmp_path / "mine.yaml",
        "description: my own\n"
        "instance-type: m5.2xlarge\n"  # hyphenated keys, as in dask config, work too
        "n_workers: 5\n"
        "worker_memory_GiB: 3\n"  # the production alias, a bare number of GiB
        "env: {OMP_NUM_THREADS: 1}\n",
    )
    spec = resolve_spec(path, worker_cpu="500m")
    assert spec.instance_type == "m5.2xlarge"
    assert (spec.n_workers, spec.worker_memory, spec.worker_cpu) == (5, 3 * GiB, 0.5)
    assert spec.env == {"OMP_NUM_THREADS": "1"}
    assert spec.scheduler_memory == 2 * GiB  # not in the template: the default


def test_user_template_directory_by_name_shadows_packaged(tmp_path: Path) -> None:
    write_template(tmp_path / "default.yaml", "description: team default\nn_workers: 3\n")
    write_template(tmp_path / "team.yaml", "description: team\nn_workers: 9\n")
    with dask.config.set({"recc.template-dirs": [str(tmp_path)]}):
        assert resolve_spec("team").n_workers == 9
        assert resolve_spec("default").n_workers == 3
        listed = {t.name: t for t in list_templates()}
        assert listed["default"].description == "team default"
        assert listed["gpu"].path == get_template_path("gpu")  # packaged ones still listed
    assert resolve_spec("default").n_workers == 20


# --- the production system's own examples (DESIGN.md "ClusterSpec") --------------------------


def test_production_examples_resolve() -> None:
    assert resolve_spec().n_workers == 20
    assert resolve_spec(get_template_path("default")) == resolve_spec()
    big = resolve_spec(n_workers=100, scheduler_memory_GiB=4)
    assert (big.n_workers, big.scheduler_memory) == (100, 4 * GiB)
    branch = resolve_spec(source_git_branch="RSH-1234-feature-branch")
    assert branch.source_git_branch == "RSH-1234-feature-branch"
    assert resolve_spec(instance_type="p3.8xlarge").instance_type == "p3.8xlarge"
    large = resolve_spec("large-cluster-large-workers", n_workers=300)
    assert (large.n_workers, large.instance_type) == (300, "r5.4xlarge")


def test_memory_aliases_are_gib() -> None:
    spec = resolve_spec(worker_memory_GiB=4, scheduler_memory_GiB=0.5)
    assert (spec.worker_memory, spec.scheduler_memory) == (4 * GiB, 512 * MiB)


@pytest.mark.parametrize("memory", ["1.5GiB", "1536MiB", 1.5, "1.5"])
def test_worker_memory_spellings(memory: object) -> None:
    assert resolve_spec(worker_memory=memory).worker_memory == 1536 * MiB


# --- the model itself ------------------------------------------------------------------------


def test_spec_is_frozen() -> None:
    spec = resolve_spec()
    with pytest.raises(pydantic.ValidationError):
        spec.n_workers = 5  # type: ignore[misc]


def test_to_dict_round_trips_and_replace_revalidates() -> None:
    spec = resolve_spec(
        "gpu",
        name="recc-alice-1a2b3c",
        env={"A": "1"},
        tags={"team": "quant"},
        job="risk",
        worker_groups=[
            {
                **GROUP,
                "name": "cpu",
                "instance_type": "c5.xlarge",
                "worker_memory": "1536MiB",
                "worker_cpu": 1,
                "resources": {},
            }
        ],
    )
    data = spec.to_dict()
    assert data["worker_memory"] == "56GiB" and data["idle_timeout"] == "1h"
    assert data["worker_groups"][0]["worker_memory"] == "1.5GiB"
    assert build_spec(data) == spec
    assert spec.replace(n_workers=8).n_workers == 8
    with pytest.raises(SpecError):
        spec.replace(n_workers=0)


def test_worker_groups_follow_the_top_level_group() -> None:
    spec = resolve_spec(worker_groups=[GROUP])
    assert [g.name for g in spec.groups()] == ["default", "gpu"]
    assert spec.groups()[0].worker_memory == spec.worker_memory  # bytes, not re-read as GiB
    assert spec.groups()[1].worker_memory == 56 * GiB
    assert spec.total_workers == 24


def test_every_example_in_an_error_message_is_valid_input() -> None:
    """An example that itself fails would send users round in circles."""
    for field, text in EXAMPLES.items():
        code = re.sub(r" \([^()]*\)$", "", text)  # drop the "(or ...)" remark
        call = ast.parse(f"f({code})", mode="eval").body
        assert isinstance(call, ast.Call) and len(call.keywords) == 1, field
        keyword = call.keywords[0]
        assert keyword.arg == field
        resolve_spec(**{field: ast.literal_eval(keyword.value)})


# --- invalid input: SpecError naming field, value and an example -----------------------------


def assert_spec_error(error: SpecError, field: str, value: Any) -> None:
    message = str(error)
    assert error.field == field
    assert message.startswith(f"{field}="), message
    assert repr(value) in message, message
    assert "for example" in message, message


INVALID: list[tuple[dict[str, Any], str, Any]] = [
    ({"n_workers": 0}, "n_workers", 0),
    ({"n_workers": -3}, "n_workers", -3),
    ({"n_workers": 1.5}, "n_workers", 1.5),
    ({"n_workers": "many"}, "n_workers", "many"),
    ({"worker_memory": "1.5XB"}, "worker_memory", "1.5XB"),
    ({"worker_memory": "lots"}, "worker_memory", "lots"),
    ({"worker_memory": ""}, "worker_memory", ""),
    ({"worker_memory": -1}, "worker_memory", -1),
    ({"worker_memory": 0}, "worker_memory", 0),
    ({"worker_memory_GiB": "1.5XB"}, "worker_memory", "1.5XB"),
    ({"scheduler_memory": "2 gigs"}, "scheduler_memory", "2 gigs"),
    ({"worker_cpu": "abc"}, "worker_cpu", "abc"),
    ({"worker_cpu": 0}, "worker_cpu", 0),
    ({"worker_cpu": "1.5m"}, "worker_cpu", "1.5m"),
    ({"scheduler_cpu": "-1"}, "scheduler_cpu", "-1"),
    ({"name": "My_Cluster"}, "name", "My_Cluster"),
    ({"name": "-abc"}, "name", "-abc"),
    ({"name": "abc-"}, "name", "abc-"),
    ({"name": "a.b"}, "name", "a.b"),
    ({"name": "x" * 41}, "name", "x" * 41),
    ({"instance_type": "C5.XLARGE"}, "instance_type", "C5.XLARGE"),
    ({"instance_type": "c5"}, "instance_type", "c5"),
    ({"env": {"1BAD": "x"}}, "env", {"1BAD": "x"}),
    ({"env": {"A-B": "x"}}, "env", {"A-B": "x"}),
    ({"env": {"A B": "x"}}, "env", {"A B": "x"}),
    ({"env": 5}, "env", 5),
    ({"env": "A=1"}, "env", "A=1"),
    ({"tags": {"recc:cluster": "mine"}}, "tags", {"recc:cluster": "mine"}),
    ({"tags": {"recc:managed-by": "me"}}, "tags", {"recc:managed-by": "me"}),
    ({"tags": {"bad\nkey": "x"}}, "tags", {"bad\nkey": "x"}),
    ({"tags": ["team"]}, "tags", ["team"]),
    ({"source_git_branch": "feature..x"}, "source_git_branch", "feature..x"),
    ({"source_git_branch": "-x"}, "source_git_branch", "-x"),
    ({"source_git_branch": "a b"}, "source_git_branch", "a b"),
    ({"source_git_branch": "x.lock"}, "source_git_branch", "x.lock"),
    ({"source_git_branch": "x/"}, "source_git_branch", "x/"),
    ({"resources": {"GPU": 0}}, "resources", {"GPU": 0}),
    ({"resources": {"GPU": -1}}, "resources", {"GPU": -1}),
    ({"resources": {"GPU": "lots"}}, "resources", {"GPU": "lots"}),
    ({"resources": {"9x": 1}}, "resources", {"9x": 1}),
    ({"resources": 5}, "resources", 5),
    ({"resources": "GPU=1"}, "resources", "GPU=1"),
    ({"image": "a b"}, "image", "a b"),
    ({"image": ""}, "image", ""),
    ({"idle_timeout": "soon"}, "idle_timeout", "soon"),
    ({"max_lifetime": 0}, "max_lifetime", 0),
    ({"spot": "maybe"}, "spot", "maybe"),
    # A "$" anchor accepts a trailing newline: every pattern must match the whole value.
    ({"name": "recc-alice-1\n"}, "name", "recc-alice-1\n"),
    ({"name": "../../victim"}, "name", "../../victim"),
    ({"name": "/tmp/victim"}, "name", "/tmp/victim"),
    ({"instance_type": "c5.xlarge\n"}, "instance_type", "c5.xlarge\n"),
    ({"env": {"OMP_NUM_THREADS\n": "1"}}, "env", {"OMP_NUM_THREADS\n": "1"}),
    ({"tags": {"team\n": "x"}}, "tags", {"team\n": "x"}),
    ({"source_git_branch": "main\n"}, "source_git_branch", "main\n"),
    ({"resources": {"GPU\n": 1}}, "resources", {"GPU\n": 1}),
    # Numbers are finite and bounded.
    ({"n_workers": 99999999999999999999999}, "n_workers", 99999999999999999999999),
    ({"n_workers": "99999999999999999999999"}, "n_workers", "99999999999999999999999"),
    ({"n_workers": 10_001}, "n_workers", 10_001),
    ({"n_workers": float("nan")}, "n_workers", float("nan")),
    ({"resources": {"GPU": float("nan")}}, "resources", {"GPU": float("nan")}),
    ({"resources": {"GPU": "nan"}}, "resources", {"GPU": "nan"}),
    ({"resources": {"GPU": float("inf")}}, "resources", {"GPU": float("inf")}),
    ({"resources": {"GPU": 10**400}}, "resources", {"GPU": 10**400}),
    ({"resources": {"GPU": 1e13}}, "resources", {"GPU": 1e13}),
    ({"resources": {"GPU": True}}, "resources", {"GPU": True}),
    ({"worker_memory": "1e400GiB"}, "worker_memory", "1e400GiB"),
    ({"worker_memory": 10**400}, "worker_memory", 10**400),
    ({"scheduler_memory": "64TiB"}, "scheduler_memory", "64TiB"),
    ({"worker_cpu": 10**400}, "worker_cpu", 10**400),
    ({"worker_cpu": "nan"}, "worker_cpu", "nan"),
    ({"scheduler_cpu": 1e300}, "scheduler_cpu", 1e300),
    ({"idle_timeout": "1e400s"}, "idle_timeout", "1e400s"),
    ({"idle_timeout": float("nan")}, "idle_timeout", float("nan")),
    ({"max_lifetime": 10**400}, "max_lifetime", 10**400),
    ({"max_lifetime": "9999d"}, "max_lifetime", "9999d"),
]


@pytest.mark.parametrize("kwargs, field, value", INVALID, ids=lambda x: repr(x)[:40])
def test_invalid_values_raise_spec_error(kwargs: dict[str, Any], field: str, value: Any) -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec(**kwargs)
    assert_spec_error(info.value, field, value)


@pytest.mark.parametrize(
    "key, suggestion",
    [
        ("n_worker", "n_workers"),
        ("workers_memory", "worker_memory"),
        ("worker_memory_gib", "worker_memory_GiB"),
        ("instance", "instance_type"),
    ],
)
def test_unknown_field_suggests_the_close_one(key: str, suggestion: str) -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec(**{key: 3})
    assert_spec_error(info.value, key, 3)
    assert f"did you mean {suggestion!r}" in str(info.value)
    # the example is for the suggested field (an alias shows the field it stands for)
    assert info.value.example.startswith(suggestion.removesuffix("_GiB") + "=")


def test_unknown_field_with_nothing_close_lists_the_fields() -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec(colour="red")
    assert_spec_error(info.value, "colour", "red")
    assert "n_workers" in str(info.value) and "worker_memory" in str(info.value)


GROUP_ERRORS: list[tuple[list[Any], str, Any]] = [
    ([{**GROUP, "n_workers": 0}], "worker_groups.0.n_workers", 0),
    ([{**GROUP, "worker_memory": "lots"}], "worker_groups.0.worker_memory", "lots"),
    ([{**GROUP, "name": "GPU_pool"}], "worker_groups.0.name", "GPU_pool"),
    ([{**GROUP, "instance_type": "P3"}], "worker_groups.0.instance_type", "P3"),
    ([{**GROUP, "resources": {"GPU": 0}}], "worker_groups.0.resources", {"GPU": 0}),
    ([{**GROUP, "gpus": 1}], "worker_groups.0.gpus", 1),
    ([GROUP, {**GROUP, "n_workers": -1, "name": "b"}], "worker_groups.1.n_workers", -1),
    ([{**GROUP, "name": "default"}], "worker_groups", [{**GROUP, "name": "default"}]),
    ([GROUP, GROUP], "worker_groups", [GROUP, GROUP]),
    (["gpu"], "worker_groups.0", "gpu"),
]


@pytest.mark.parametrize("groups, field, value", GROUP_ERRORS, ids=lambda x: repr(x)[:40])
def test_worker_group_errors_name_the_field(groups: list[Any], field: str, value: Any) -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec(worker_groups=groups)
    assert_spec_error(info.value, field, value)


def test_workers_over_all_groups_are_bounded() -> None:
    groups = [{**GROUP, "n_workers": 5_000}]
    assert resolve_spec(n_workers=5_000, worker_groups=groups).total_workers == 10_000
    with pytest.raises(SpecError) as info:
        resolve_spec(n_workers=5_001, worker_groups=groups)
    assert info.value.field == "worker_groups"
    assert "10001" in str(info.value) and "for example" in str(info.value)


def test_the_largest_bounded_values_are_accepted() -> None:
    spec = resolve_spec(n_workers=10_000, resources={"GPU": 1e12}, max_lifetime="3650d")
    assert spec.n_workers == 10_000 and spec.resources == {"GPU": 1e12}


def test_worker_group_missing_field_is_required() -> None:
    group = {k: v for k, v in GROUP.items() if k != "worker_memory"}
    with pytest.raises(SpecError) as info:
        resolve_spec(worker_groups=[group])
    assert info.value.field == "worker_groups.0.worker_memory"
    assert "is required" in str(info.value) and "for example" in str(info.value)


# --- template errors ------------------------------------------------------------------------


def test_unknown_template_name_lists_the_standard_ones() -> None:
    with pytest.raises(SpecError) as info:
        resolve_spec("no-such-template")
    assert_spec_error(info.value, "template", "no-such-template")
    for name in STANDARD_TEMPLATES:
        assert name in str(info.value)


def test_missing_template_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        resolve_spec(missing)
    assert_spec_error(info.value, "template", str(missing))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_template_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write_template(tmp_path / "list.yaml", text)
    with pytest.raises(SpecError) as info:
        resolve_spec(path)
    assert_spec_error(info.value, "template", str(path))
    assert "mapping" in str(info.value)


def test_template_that_is_not_yaml(tmp_path: Path) -> None:
    path = write_template(tmp_path / "broken.yaml", "n_workers: [1, 2\n")
    with pytest.raises(SpecError) as info:
        resolve_spec(path)
    assert_spec_error(info.value, "template", str(path))


def test_bad_value_inside_a_template_names_the_field(tmp_path: Path) -> None:
    path = write_template(tmp_path / "bad.yaml", "n_workers: -4\n")
    with pytest.raises(SpecError) as info:
        resolve_spec(path)
    assert_spec_error(info.value, "n_workers", -4)
    # ...unless the keyword fixes it: layers are merged before validation
    assert resolve_spec(path, n_workers=4).n_workers == 4


def test_unknown_key_inside_a_template_suggests(tmp_path: Path) -> None:
    path = write_template(tmp_path / "typo.yaml", "n_worker: 4\n")
    with pytest.raises(SpecError) as info:
        resolve_spec(path)
    assert_spec_error(info.value, "n_worker", 4)
    assert "did you mean 'n_workers'" in str(info.value)


def test_yaml_injection_in_template_values_stays_a_value(tmp_path: Path) -> None:
    """A value that looks like YAML is kept as one string (and then validated as such)."""
    path = write_template(
        tmp_path / "inject.yaml",
        'job: "risk\\nkind: Secret"\nenv: {NOTE: "a: b\\n- c {{ x }}"}\n',
    )
    spec = resolve_spec(path)
    assert spec.job == "risk\nkind: Secret"
    assert spec.env == {"NOTE": "a: b\n- c {{ x }}"}
    assert spec.instance_type == "c5.xlarge"
