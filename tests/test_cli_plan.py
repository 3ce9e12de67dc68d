"""`recc plan` and `recc templates` as a user runs them (typer's CliRunner, real library)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from recc.cli.main import app
from recc.kube.schema import validate


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def plan_json(*args: str) -> dict:
    result = run("plan", *args, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_default_plan_as_json():
    data = plan_json()
    assert data["spec"]["instance_type"] == "c5.xlarge"
    assert data["spec"]["n_workers"] == 20
    assert data["spec"]["worker_memory"] == "1.5GiB"
    assert data["plan"]["workers_per_node"] == 3
    assert data["plan"]["instances"] == 7  # 20 workers / 3 per node, scheduler on the last
    assert data["cost"]["usd_per_hour"] == pytest.approx(7 * 0.17 + 0.10)


@pytest.mark.parametrize(
    ("args", "instance_type", "instances"),
    [
        (["--n-workers", "100"], "c5.xlarge", 34),
        (["--instance-type", "c5.4xlarge", "--n-workers", "100"], "c5.4xlarge", 7),
        (
            ["--instance-type", "r5.2xlarge", "--worker-memory", "8GiB", "--n-workers", "10"],
            "r5.2xlarge",
            2,
        ),
        (["gpu"], "p3.8xlarge", 1),
    ],
)
def test_plans_for_other_sizes_and_types(args, instance_type, instances):
    data = plan_json(*args)
    assert data["plan"]["instance_type"] == instance_type
    assert data["plan"]["instances"] == instances
    assert data["cost"]["usd_per_hour"] > 0


def test_yaml_output_and_spot_estimate():
    on_demand = plan_json()["cost"]["usd_per_hour"]
    result = run("plan", "--spot", "-o", "yaml")
    assert result.exit_code == 0
    spot = yaml.safe_load(result.stdout)["cost"]
    assert spot["groups"][0]["capacity_type"] == "spot"
    assert spot["usd_per_hour"] < on_demand


def test_table_output_names_the_plan_and_cost():
    result = run("plan", "--n-workers", "100")
    assert result.exit_code == 0
    assert "34 x" in result.stdout and "c5.xlarge" in result.stdout
    assert "$5.88/h" in result.stdout


def test_manifests_are_printed_and_valid():
    data = plan_json("--n-workers", "4", "--env", "A=b: c", "--name", "recc-demo", "--manifests")
    kinds = [m["kind"] for m in data["manifests"]]
    assert kinds[0] == "Namespace" and "DaskCluster" in kinds
    for manifest in data["manifests"]:
        validate(manifest)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--n-workers", "0"], ["n_workers=0"]),
        (["--n-workers", "-5"], ["n_workers=-5"]),
        (["--worker-memory", "64GiB"], ["worker_memory='64GiB'", "fits on"]),
        (["--instance-type", "c5.xlarg"], ["instance_type='c5.xlarg'", "c5.xlarge"]),
        (["--worker-memory", "lots"], ["worker_memory='lots'"]),
        (["--worker-memory", "1.5 GiBs"], ["worker_memory="]),
        (["--worker-cpu", "-1"], ["worker_cpu='-1'"]),
        (["--name", "Bad_Name"], ["name='Bad_Name'"]),
        (["--name", "9lives"], ["name='9lives'"]),
        (["--resource", "GPU"], ["resources='GPU'", "KEY=VALUE"]),
        (["--env", "1BAD=x"], ["env="]),
        (["no-such-template"], ["template='no-such-template'"]),
    ],
)
def test_bad_input_exits_2_with_field_value_and_example(args, names):
    result = run("plan", *args, "-o", "json")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""  # nothing a script could mistake for a plan
    for text in names:
        assert text in result.stderr
    assert "for example" in result.stderr


def test_template_values_cannot_inject_yaml(tmp_path):
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(
        'n_workers: 2\njob: "x\\nkind: Secret\\n{{ evil }}: \\"quoted\\""\n'
        'env: {A: "value: with\\n- list: [injection]"}\n'
    )
    data = plan_json(str(hostile), "--manifests")
    kinds = [m["kind"] for m in data["manifests"]]
    assert kinds.count("Secret") == 1  # only the TLS secret; no injected object
    dask_cluster = next(m for m in data["manifests"] if m["kind"] == "DaskCluster")
    env = dask_cluster["spec"]["worker"]["spec"]["containers"][0]["env"]
    assert {"name": "A", "value": "value: with\n- list: [injection]"} in env
    for manifest in data["manifests"]:
        validate(manifest)


def test_templates_lists_the_standard_ones():
    result = run("templates", "-o", "json")
    names = {t["name"]: t["description"] for t in json.loads(result.stdout)}
    assert {"default", "large-cluster-large-workers", "highmem", "gpu"} <= set(names)
    assert all(names.values())
