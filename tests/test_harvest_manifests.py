"""The harvester's Kubernetes objects: valid under the official schemas, least privilege, and a
drop-in for what ``recc platform install`` applies."""

from __future__ import annotations

from importlib import resources

import dask.config
import pytest
import yaml

from recc.errors import ConfigError
from recc.harvest.manifests import AWS_PERMISSIONS, harvester_manifests, permits
from recc.kube.schema import validate
from recc.platform import platform_settings
from recc.platform.install import platform_manifests

ROLE_ARN = "arn:aws:iam::123456789012:role/research-dask-recc-harvester"


@pytest.fixture
def settings() -> dict:
    return {
        **platform_settings(lambda key: None),
        "image": "ghcr.io/dask/dask:2026.8.0-py3.11",
        "eks.cluster-name": "research-dask",
        "eks.region": "eu-west-1",
        "eks.harvester-role-arn": ROLE_ARN,
    }


def by_kind(manifests: list[dict]) -> dict[str, dict]:
    return {m["kind"]: m for m in manifests}


def test_every_object_is_valid_under_the_official_schemas(settings):
    manifests = harvester_manifests(settings, "0.1.0")
    for manifest in manifests:
        validate(manifest)  # strict: an unknown field would fail
    assert [m["kind"] for m in manifests] == [
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
        "RoleBinding", "ConfigMap", "CronJob",
    ]  # fmt: skip
    # Nothing of the harvester's own is reapable.
    for manifest in manifests:
        labels = manifest["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") != "recc"


def test_the_role_is_least_privilege(settings):
    manifests = harvester_manifests(settings, "0.1.0")
    kinds = by_kind(manifests)
    rules = kinds["ClusterRole"]["rules"] + kinds["Role"]["rules"]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
    writes = {
        (resource, verb)
        for rule in kinds["ClusterRole"]["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if verb not in ("get", "list")
    }
    # Cluster-wide it only deletes clusters (guarded by labels in code) and opens tunnels.
    assert writes == {
        ("namespaces", "delete"),
        ("daskclusters", "delete"),
        ("daskworkergroups", "delete"),
        ("pods/portforward", "create"),
    }
    for verb in ("list", "create", "update", "patch", "watch"):
        assert not permits(manifests, verb, "secrets", "recc-alice-1")
    for resource in ("nodes", "deployments", "roles", "configmaps"):
        assert not permits(manifests, "delete", resource, "recc-alice-1")
    # Locks and memory: ConfigMaps in its own namespace only.
    assert kinds["Role"]["metadata"]["namespace"] == "recc"
    assert permits(manifests, "create", "configmaps", "recc")
    assert not permits(manifests, "create", "configmaps", "recc-alice-1")
    bound = {(s["kind"], s["name"]) for s in kinds["RoleBinding"]["subjects"]}
    assert bound == {("ServiceAccount", "recc-harvester"), ("Group", "recc-harvester")}


def test_platform_install_applies_exactly_these_objects(settings):
    """recc platform install takes the harvester's objects from here (one renderer), including
    the Role for its lock ConfigMaps."""
    mine = harvester_manifests(settings, "0.1.0")
    installed = platform_manifests(settings, "0.1.0")
    for manifest in mine:
        assert manifest in installed
    names = {(m["kind"], m["metadata"]["name"]) for m in mine}
    assert {("Role", "recc-harvester"), ("RoleBinding", "recc-harvester")} <= names
    kinds = by_kind(mine)
    account = kinds["ServiceAccount"]["metadata"]
    assert account["annotations"] == {"eks.amazonaws.com/role-arn": ROLE_ARN}
    cron = kinds["CronJob"]["spec"]
    assert cron["schedule"] == "*/10 * * * *" and cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["recc", "harvest", "--backend", "eks", "--yes", "--json"]
    assert pod["serviceAccountName"] == "recc-harvester"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["EXTRA_PIP_PACKAGES"] == "recc==0.1.0"  # the Dask image installs RECC first
    mounted = yaml.safe_load(kinds["ConfigMap"]["data"]["recc-platform.yaml"])["recc"]
    assert mounted["eks"]["cluster-name"] == "research-dask"
    assert "cost" not in mounted  # no team ledger configured


def test_a_harvester_image_and_the_team_ledger_reach_the_pod(settings):
    settings = {**settings, "eks.harvester-image": "registry.example.org/recc-harvester:0.1.0"}
    with dask.config.set({"recc.cost.ledger-url": "s3://team-ledger/recc"}):
        kinds = by_kind(harvester_manifests(settings, "0.1.0"))
    container = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container[0]["image"] == "registry.example.org/recc-harvester:0.1.0"
    assert "EXTRA_PIP_PACKAGES" not in {e["name"] for e in container[0]["env"]}
    mounted = yaml.safe_load(kinds["ConfigMap"]["data"]["recc-platform.yaml"])["recc"]
    # Reaps go to the team's ledger and audit trail, not the pod's ephemeral disk.
    assert mounted["cost"]["ledger-url"] == "s3://team-ledger/recc"


def test_hostile_settings_stay_values(settings):
    hostile = 'x", "injected": "y\n  - evil: true'
    kinds = by_kind(harvester_manifests({**settings, "eks.harvester-schedule": hostile}, "0.1.0"))
    assert kinds["CronJob"]["spec"]["schedule"] == hostile
    assert set(kinds["CronJob"]["spec"]) >= {"schedule", "jobTemplate"}
    assert "injected" not in kinds["CronJob"]["spec"]


def test_the_iam_role_is_required(settings):
    with pytest.raises(ConfigError, match=r"recc\.eks\.harvester-role-arn is not set.*example"):
        harvester_manifests({**settings, "eks.harvester-role-arn": None}, "0.1.0")


def test_the_image_definition_runs_the_harvest():
    dockerfile = (resources.files("recc.templates") / "images" / "harvester.Dockerfile").read_text()
    assert '"recc", "harvest", "--backend", "eks", "--yes", "--json"' in dockerfile
    assert "USER" in dockerfile  # not root


def test_aws_permissions_are_documented_per_service():
    assert {a.split(":")[0] for a in AWS_PERMISSIONS} == {"eks", "ec2", "sts", "pricing"}
    assert all(reason for reason in AWS_PERMISSIONS.values())
