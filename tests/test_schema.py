"""recc.kube.schema: official schemas for built-in kinds, dask-kubernetes CRDs for Dask kinds."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
from dask_kubernetes.operator import make_cluster_spec, make_worker_spec

from recc.kube.schema import (
    KUBERNETES_VERSION,
    ManifestInvalid,
    check_name,
    crd_schema,
    custom_resource_definitions,
    normalize,
    problems,
    validate,
)

META = {"name": "recc-alice-1", "namespace": "recc-alice-1", "labels": {"recc.io/user": "alice"}}
POD_SPEC = {"containers": [{"name": "main", "image": "ghcr.io/dask/dask:2026.8.0-py3.11"}]}
SELECTOR = {"app.kubernetes.io/name": "dask"}


def _obj(api_version: str, kind: str, **fields) -> dict:
    meta = dict(META)
    if kind in ("Namespace", "ClusterRole"):
        meta.pop("namespace")
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **fields}


VALID = [
    _obj("v1", "Namespace"),
    _obj("v1", "Pod", spec=POD_SPEC),
    _obj("v1", "Service", spec={"selector": SELECTOR, "ports": [{"port": 8786}]}),
    _obj("v1", "Secret", type="kubernetes.io/tls", stringData={"tls.crt": "x", "tls.key": "y"}),
    _obj("v1", "ServiceAccount"),
    _obj("v1", "ConfigMap", data={"threads": "2"}),
    _obj("v1", "ResourceQuota", spec={"hard": {"requests.cpu": "8", "pods": "20"}}),
    _obj(
        "apps/v1",
        "Deployment",
        spec={
            "replicas": 2,
            "selector": {"matchLabels": SELECTOR},
            "template": {"metadata": {"labels": SELECTOR}, "spec": POD_SPEC},
        },
    ),
    _obj(
        "batch/v1",
        "CronJob",
        spec={
            "schedule": "*/15 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": {**POD_SPEC, "restartPolicy": "Never"}}}},
        },
    ),
    _obj(
        "rbac.authorization.k8s.io/v1",
        "Role",
        rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    ),
    _obj(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "recc-user"},
        subjects=[{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}],
    ),
    _obj("rbac.authorization.k8s.io/v1", "ClusterRole", rules=[]),
    _obj(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        spec={"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    ),
    _obj("policy/v1", "PodDisruptionBudget", spec={"maxUnavailable": 1, "selector": {}}),
    {**make_cluster_spec(name="recc-alice-1", n_workers=2), "metadata": META},
    _obj(
        "kubernetes.dask.org/v1",
        "DaskWorkerGroup",
        spec={"cluster": "recc-alice-1", "worker": make_worker_spec(n_workers=1)},
    ),
    _obj(
        "kubernetes.dask.org/v1",
        "DaskJob",
        spec={
            "job": {"spec": POD_SPEC},
            "cluster": {"spec": make_cluster_spec(name="job")["spec"]},
        },
    ),
    _obj(
        "kubernetes.dask.org/v1",
        "DaskAutoscaler",
        spec={"cluster": "recc-alice-1", "minimum": 1, "maximum": 10},
    ),
]


@pytest.mark.parametrize("obj", VALID, ids=[o["kind"] for o in VALID])
def test_valid_objects_pass(obj):
    validate(obj)
    assert problems(obj) == []


@pytest.mark.parametrize("obj", VALID[:14], ids=[o["kind"] for o in VALID[:14]])
def test_builtin_verdicts_agree_with_kubernetes_validate(obj):
    """Our validator is built from kubernetes-validate's files; its own API must agree."""
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(obj)
    broken["metadata"]["uuid"] = "not-a-field"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    assert ("metadata.uuid", "unknown field") in problems(broken)


def _invalid(obj: dict) -> ManifestInvalid:
    with pytest.raises(ManifestInvalid) as info:
        validate(obj)
    return info.value


def test_unknown_field_names_its_path():
    deployment = copy.deepcopy(VALID[7])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    error = _invalid(deployment)
    path = "spec.template.spec.containers[0].imagePullPolicyy"
    assert error.problems == [(path, "unknown field")]
    assert "Deployment 'recc-alice-1'" in str(error) and path in str(error)


def test_wrong_type_names_path_and_reason():
    service = copy.deepcopy(VALID[2])
    service["spec"]["ports"][0]["port"] = "eighty"
    ((path, reason),) = _invalid(service).problems
    assert path == "spec.ports[0].port"
    assert "'eighty' is not of type 'integer'" in reason


def test_every_problem_is_reported_at_once():
    quota = copy.deepcopy(VALID[6])
    quota["spec"]["hard"]["pods"] = ["20"]
    quota["spec"]["scopes"] = "BestEffort"
    quota["status"] = {"used": {}, "phase": "Active"}
    paths = [path for path, _ in _invalid(quota).problems]
    assert paths == ["spec.hard.pods", "spec.scopes", "status.phase"]


@pytest.mark.parametrize(
    "kind, name, rule",
    [
        ("Namespace", "Recc_Alice", "DNS-1123 label"),
        ("Namespace", "a" * 64, "DNS-1123 label"),
        ("Service", "1-scheduler", "DNS-1035 label"),
        ("ConfigMap", "-settings", "DNS-1123 subdomain"),
        ("Role", "a/b", "path segment"),
    ],
)
def test_bad_names_are_rejected(kind, name, rule):
    assert rule in check_name(kind, name)
    obj = next(o for o in VALID if o["kind"] == kind)
    bad = {**obj, "metadata": {**obj["metadata"], "name": name}}
    ((path, reason),) = _invalid(bad).problems
    assert path == "metadata.name" and rule in reason and "for example" in reason


def test_names_the_api_server_accepts_pass():
    assert check_name("ConfigMap", "recc.alice-1") is None  # dots allowed in subdomains
    assert check_name("ClusterRole", "system:recc:alice") is None
    assert check_name("Namespace", "a" * 63) is None


def test_label_keys_and_values_are_checked():
    ns = copy.deepcopy(VALID[0])
    ns["metadata"]["labels"] = {"recc.io/user": "alice smith", "Bad_Prefix/x": "y", "ok": ""}
    found = dict(_invalid(ns).problems)
    assert set(found) == {"metadata.labels.recc.io/user", "metadata.labels.Bad_Prefix/x"}
    assert "value 'alice smith'" in found["metadata.labels.recc.io/user"]


def test_dask_cluster_missing_required_fields():
    cluster = copy.deepcopy(VALID[14])
    del cluster["spec"]["worker"]
    del cluster["spec"]["scheduler"]["service"]
    assert _invalid(cluster).problems == [
        ("spec.scheduler.service", "required field is missing"),
        ("spec.worker", "required field is missing"),
    ]
    assert _invalid({**cluster, "spec": None}).problems == [("spec", "required field is missing")]


def test_dask_cluster_unknown_field_and_wrong_type():
    cluster = copy.deepcopy(VALID[14])
    cluster["spec"]["worker"]["replica"] = 3
    cluster["spec"]["worker"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8788"
    assert _invalid(cluster).problems == [
        ("spec.worker.replica", "unknown field"),
        (
            "spec.worker.spec.containers[0].ports[0].containerPort",
            "'8788' is not of type 'integer'",
        ),
    ]


def test_custom_resource_metadata_uses_object_meta_schema():
    cluster = copy.deepcopy(VALID[14])
    cluster["metadata"]["labels"] = {"recc.io/user": 7}
    assert ("metadata.labels.recc.io/user", "7 is not of type 'string', 'null'") in _invalid(
        cluster
    ).problems


def test_unknown_kinds_and_versions_are_errors():
    for api_version, kind in [
        ("v1", "Podd"),
        ("apps/v2", "Deployment"),
        ("kubernetes.dask.org/v1", "DaskScheduler"),
        ("kubernetes.dask.org/v2", "DaskCluster"),
    ]:
        ((path, reason),) = _invalid(_obj(api_version, kind)).problems
        assert path == "kind" and kind in reason
    assert _invalid({"kind": "Pod"}).problems[0][0] == "kind"


def test_normalize_decodes_custom_resources_like_the_api_server():
    cluster = make_cluster_spec(name="recc-alice-1")
    del cluster["spec"]["idleTimeout"]
    assert cluster["spec"]["worker"]["spec"]["containers"][0]["env"] is None
    decoded = normalize(cluster)
    assert "env" not in decoded["spec"]["worker"]["spec"]["containers"][0]
    assert decoded["spec"]["idleTimeout"] == 0  # the CRD's default
    assert "idleTimeout" not in cluster["spec"]  # the input is left alone
    job = copy.deepcopy(VALID[16])
    job["status"] = {"jobStatus": None, "clusterName": "recc-alice-1"}
    assert normalize(job)["status"]["jobStatus"] is None  # nullable in the CRD: kept
    validate(job)


def test_crds_come_from_the_installed_dask_kubernetes():
    crds = custom_resource_definitions()
    assert set(crds) == {"DaskCluster", "DaskWorkerGroup", "DaskJob", "DaskAutoscaler"}
    assert {c["spec"]["group"] for c in crds.values()} == {"kubernetes.dask.org"}
    assert crd_schema("DaskAutoscaler")["properties"]["spec"]["required"] == [
        "cluster",
        "minimum",
        "maximum",
    ]
    with pytest.raises(LookupError, match="DaskCluster"):
        crd_schema("Nope")
