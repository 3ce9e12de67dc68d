"""recc.render: every manifest validates against the official schemas and the dask-kubernetes
CRDs, carries what the plan decided, and no user value can change the YAML structure."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import random
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import dask.config
import pytest
from distributed import Client, Scheduler
from distributed.cli.dask_scheduler import main as scheduler_cli
from distributed.cli.dask_worker import main as worker_cli

from recc.catalog import bundled_catalog
from recc.errors import ConfigError, SpecError
from recc.kube.schema import validate
from recc.naming import label_value
from recc.plan import NodePlan, plan_cluster
from recc.render import (
    NODEGROUP_LABEL,
    TAINT_KEY,
    TLS_MOUNT,
    PlatformSettings,
    TLSMaterial,
    nodegroup_name,
    render_manifests,
)
from recc.spec import ClusterSpec, resolve_spec
from recc.tags import Ownership
from recc.tls import create_cluster_tls

NAME = "recc-alice-1a2b3c"
CREATED = dt.datetime(2026, 11, 22, 10, 21, 38, tzinfo=dt.timezone.utc)
CIDRS = ("10.20.0.0/16", "192.168.5.0/24")
NFS = PlatformSettings(source_nfs_server="fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com")
PEMS = TLSMaterial(ca_cert="-----CA-----\n", cert="-----CERT-----\n", key="-----KEY-----\n")
GROUPS = [
    {"name": "gpu", "instance_type": "p3.8xlarge", "n_workers": 4, "worker_memory": "56GiB",
     "worker_cpu": 7, "resources": {"GPU": 1}},
    {"name": "himem", "instance_type": "r5.2xlarge", "n_workers": 2, "worker_memory": "28GiB",
     "worker_cpu": 3.5, "spot": True},
]  # fmt: skip
# id -> (template, spec overrides, platform, tls)
SCENARIOS: dict[str, tuple[str, dict[str, Any], PlatformSettings, TLSMaterial | None]] = {
    "default": ("default", {}, PlatformSettings(), None),
    "100-workers": ("default", {"n_workers": 100}, PlatformSettings(), PEMS),
    "gpu": ("gpu", {}, PlatformSettings(), None),
    "highmem": ("highmem", {}, PlatformSettings(allowed_client_cidrs=CIDRS), PEMS),
    "large": ("large-cluster-large-workers", {}, PlatformSettings(), None),
    "worker-groups": ("default", {"worker_groups": GROUPS}, PlatformSettings(), PEMS),
    "spot": ("default", {"spot": True, "job": "risk-aggregation"}, PlatformSettings(), None),
    "source-branch": ("default", {"source_git_branch": "RSH-1234-feature-branch"}, NFS, None),
    "cidrs-tls": ("default", {}, PlatformSettings(allowed_client_cidrs=CIDRS), PEMS),
    "irsa-never-idle": (
        "default",
        {"idle_timeout": "never", "tags": {"team": "quant"}},
        PlatformSettings(worker_role_arn="arn:aws:iam::123456789012:role/recc-worker"),
        None,
    ),
}


def owner_of(spec: ClusterSpec, user: str = "alice") -> Ownership:
    return Ownership(NAME, user, NAME, CREATED, spec.job, spec.idle_timeout, spec.max_lifetime)


def render(
    template: str | Path = "default",
    platform: PlatformSettings | None = None,
    tls: TLSMaterial | None = None,
    user: str = "alice",
    **overrides: Any,
) -> tuple[list[dict[str, Any]], ClusterSpec, NodePlan]:
    spec = resolve_spec(template, name=NAME, **overrides)
    plan = plan_cluster(spec, bundled_catalog())
    docs = render_manifests(spec, plan, owner_of(spec, user), platform or PlatformSettings(), tls)
    return docs, spec, plan


def scenario(name: str) -> tuple[list[dict[str, Any]], ClusterSpec, NodePlan]:
    template, overrides, platform, tls = SCENARIOS[name]
    return render(template, platform, tls, **overrides)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return found


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod specs by role: 'scheduler', 'default' and one per extra worker group."""
    cluster = one(docs, "DaskCluster")["spec"]
    out = {"scheduler": cluster["scheduler"]["spec"], "default": cluster["worker"]["spec"]}
    for group in (d for d in docs if d["kind"] == "DaskWorkerGroup"):
        out[group["metadata"]["name"].removeprefix(f"{NAME}-")] = group["spec"]["worker"]["spec"]
    return out


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["containers"][0]["env"]}


def option(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# ---- schema validity and structure -------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_object_is_valid_and_labelled(name: str) -> None:
    docs, spec, _ = scenario(name)
    kinds = [d["kind"] for d in docs]
    assert kinds[:4] == ["Namespace", "ServiceAccount", "RoleBinding", "ResourceQuota"]
    assert kinds[-1 - len(spec.worker_groups)] == "DaskCluster"
    assert kinds.count("DaskWorkerGroup") == len(spec.worker_groups)
    label_value_rule = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
    for doc in docs:
        validate(doc)  # raises ManifestInvalid naming every bad field
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "recc"
        assert labels["recc.io/cluster"] == NAME
        for value in labels.values():
            assert len(value) <= 63 and label_value_rule.match(value), value
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAME


def test_default_cluster_in_detail() -> None:
    docs, _, _ = render()
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["name"] == NAME
    assert namespace["metadata"]["annotations"]["recc.io/created-at"] == "2026-11-22T10:21:38Z"
    assert namespace["metadata"]["labels"]["recc.io/user"] == "alice"
    assert "annotations" not in one(docs, "ServiceAccount")["metadata"]  # no IRSA role set

    cluster = one(docs, "DaskCluster", NAME)
    assert cluster["spec"]["worker"]["replicas"] == 20
    assert cluster["spec"]["idleTimeout"] == 3600
    service = cluster["spec"]["scheduler"]["service"]
    assert service["type"] == "ClusterIP" and "loadBalancerSourceRanges" not in service
    assert service["selector"] == {"dask.org/cluster-name": NAME, "dask.org/component": "scheduler"}

    by_role = pods(docs)
    for pod in by_role.values():
        assert pod["nodeSelector"] == {NODEGROUP_LABEL: f"{NAME}-default"}
        assert pod["tolerations"] == [
            {"key": TAINT_KEY, "operator": "Equal", "value": NAME, "effect": "NoSchedule"}
        ]
        assert pod["serviceAccountName"] == "recc-worker"
        assert pod["containers"][0]["image"] == "ghcr.io/dask/dask:2026.8.0-py3.11"
    worker = by_role["default"]["containers"][0]
    assert worker["resources"] == {
        "requests": {"cpu": "1000m", "memory": "1536Mi"},
        "limits": {"cpu": "1000m", "memory": "1536Mi"},
    }
    address = f"tls://{NAME}-scheduler.{NAME}.svc.cluster.local:8786"
    assert worker["args"][:3] == ["dask", "worker", address]
    assert option(worker["args"], "--nthreads") == "1"
    assert option(worker["args"], "--memory-limit") == str(1536 * 2**20)
    assert option(worker["args"], "--resources") == "MEMORY=1536"
    assert env_of(by_role["default"])["DASK_SCHEDULER_ADDRESS"] == address
    scheduler = by_role["scheduler"]["containers"][0]
    assert scheduler["resources"]["limits"] == {"cpu": "1000m", "memory": "2048Mi"}
    assert option(scheduler["args"], "--protocol") == "tls"
    # The operator ends an idle cluster; a scheduler in a Deployment must not stop itself.
    assert "DASK_DISTRIBUTED__SCHEDULER__IDLE_TIMEOUT" not in env_of(by_role["scheduler"])
    # The operator's plain-HTTP API, loaded as a preload (its own port, never the dashboard's).
    assert "listen(8789)" in option(scheduler["args"], "--preload")
    assert option(scheduler["args"], "--dashboard-address") == ":8787"

    # 20 workers + the scheduler, plus headroom for replacements while the old pods
    # terminate: a second scheduler and one c5.xlarge node's worth (3 workers).
    assert one(docs, "ResourceQuota")["spec"]["hard"] == {
        "pods": "25",
        "requests.cpu": "25000m",
        "requests.memory": f"{23 * 1536 + 2 * 2048}Mi",
    }
    policies = {d["metadata"]["name"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies == {
        "default-deny", "allow-intra-namespace", "allow-dns", "allow-https-egress",
        "allow-operator",
    }  # fmt: skip
    secret = one(docs, "Secret", f"{NAME}-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["data"] == {"tls.crt": "", "tls.key": "", "ca.crt": ""}


def test_network_policies_deny_by_default_and_allow_what_dask_needs() -> None:
    docs, _, _ = render(platform=PlatformSettings(operator_namespace="ops-dask"))
    policy = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policy["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert policy["allow-intra-namespace"]["ingress"] == [{"from": [{"podSelector": {}}]}]
    assert policy["allow-intra-namespace"]["egress"] == [{"to": [{"podSelector": {}}]}]
    dns = policy["allow-dns"]["egress"][0]
    assert dns["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert policy["allow-https-egress"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 443}]
    operator = policy["allow-operator"]
    assert operator["podSelector"]["matchLabels"]["dask.org/component"] == "scheduler"
    (rule,) = operator["ingress"]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ops-dask"
    }
    assert [p["port"] for p in rule["ports"]] == [8786, 8789]  # Dask and the operator API


def test_allowed_cidrs_expose_the_scheduler_through_an_internal_nlb() -> None:
    docs, _, _ = scenario("cidrs-tls")
    scheduler = one(docs, "DaskCluster")["spec"]["scheduler"]
    assert scheduler["service"]["type"] == "LoadBalancer"
    assert scheduler["service"]["loadBalancerSourceRanges"] == list(CIDRS)
    annotations = scheduler["metadata"]["annotations"]
    prefix = "service.beta.kubernetes.io/aws-load-balancer-"
    assert annotations[f"{prefix}scheme"] == "internal"
    assert annotations[f"{prefix}nlb-target-type"] == "ip"
    tags = dict(
        kv.split("=", 1) for kv in annotations[f"{prefix}additional-resource-tags"].split(",")
    )
    assert tags["recc:cluster"] == NAME and tags["recc:managed-by"] == "recc"
    clients = one(docs, "NetworkPolicy", "allow-clients")["spec"]
    assert clients["podSelector"]["matchLabels"]["dask.org/component"] == "scheduler"
    assert [f["ipBlock"]["cidr"] for f in clients["ingress"][0]["from"]] == list(CIDRS)
    # TLS ports only: clients never reach the operator's plain-HTTP port.
    assert [p["port"] for p in clients["ingress"][0]["ports"]] == [8786, 8787]


def test_tls_material_fills_the_secret_and_every_pod_mounts_it() -> None:
    docs, _, _ = scenario("cidrs-tls")
    data = one(docs, "Secret", f"{NAME}-tls")["data"]
    decoded = {k: base64.b64decode(v).decode() for k, v in data.items()}
    assert decoded == {"tls.crt": PEMS.cert, "tls.key": PEMS.key, "ca.crt": PEMS.ca_cert}
    for pod in pods(docs).values():
        assert {"name": "tls", "secret": {"secretName": f"{NAME}-tls", "defaultMode": 0o444}} in (
            pod["volumes"]
        )
        assert {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True} in (
            pod["containers"][0]["volumeMounts"]
        )
        env = env_of(pod)
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == f"{TLS_MOUNT}/ca.crt"
        for role in ("SCHEDULER", "WORKER", "CLIENT"):
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] == f"{TLS_MOUNT}/tls.crt"
            assert env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] == f"{TLS_MOUNT}/tls.key"


def test_owner_role_and_binding() -> None:
    spec = resolve_spec(name=NAME)
    plan = plan_cluster(spec, bundled_catalog())
    subject = "arn:aws:sts::123456789012:assumed-role/researcher/alice"
    docs = render_manifests(spec, plan, owner_of(spec), PlatformSettings(), owner_subject=subject)
    binding = one(docs, "RoleBinding")
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": subject}
    ]
    # The platform's ClusterRole, bound in this namespace only (a researcher holding rights by
    # an EKS access policy cannot create a Role: RBAC's escalation check does not see them).
    from recc.platform.install import owner_role

    role = owner_role()
    assert not [d for d in docs if d["kind"] == "Role"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    granted = {
        (res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]
    }
    for need in [("pods", "list"), ("pods/log", "get"), ("pods/portforward", "create"),
                 ("services", "get"), ("daskclusters", "delete"), ("daskworkergroups", "patch"),
                 ("secrets", "get")]:  # fmt: skip
        assert need in granted
    default = render_manifests(spec, plan, owner_of(spec), PlatformSettings())
    assert one(default, "RoleBinding")["subjects"][0]["name"] == "alice"


def test_irsa_role_tags_annotation_and_no_idle_timeout() -> None:
    docs, _, _ = scenario("irsa-never-idle")
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/recc-worker"
    }
    assert json.loads(one(docs, "Namespace")["metadata"]["annotations"]["recc.io/tags"]) == {
        "team": "quant"
    }
    cluster = one(docs, "DaskCluster")
    assert cluster["spec"]["idleTimeout"] == 0
    assert "DASK_DISTRIBUTED__SCHEDULER__IDLE_TIMEOUT" not in env_of(pods(docs)["scheduler"])


# ---- sizes, resources and quota follow the plan -----------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_quota_and_container_resources_match_the_plan(name: str) -> None:
    docs, spec, plan = scenario(name)
    by_role = pods(docs)
    for group, group_plan in zip(spec.groups(), plan.groups, strict=True):
        container = by_role[group.name]["containers"][0]
        expected = {
            "cpu": f"{group_plan.worker.cpu_m}m",
            "memory": f"{group_plan.worker.memory_mib}Mi",
        }
        if group_plan.worker.gpus:
            expected["nvidia.com/gpu"] = str(group_plan.worker.gpus)
        assert container["resources"] == {"requests": expected, "limits": expected}
        assert by_role[group.name]["nodeSelector"] == {
            NODEGROUP_LABEL: nodegroup_name(NAME, group.name)
        }
        memory_mib = group.worker_memory // 2**20
        advertised = dict(
            kv.split("=") for kv in option(container["args"], "--resources").split(",")
        )
        assert advertised["MEMORY"] == str(int(group.resources.get("MEMORY", memory_mib)))
        assert option(container["args"], "--nthreads") == str(max(1, int(group.worker_cpu)))
        assert option(container["args"], "--memory-limit") == str(group.worker_memory)

    # Every pod of the plan, plus a second scheduler and one node's worth of the group with
    # the largest such share (replacements, while the old pods terminate).
    def total(field: str) -> int:
        pods_total = getattr(plan.scheduler, field) + sum(
            getattr(g.worker, field) * g.n_workers for g in plan.groups
        )
        room = max(
            getattr(g.worker, field) * min(g.workers_per_node, g.n_workers) for g in plan.groups
        )
        return pods_total + getattr(plan.scheduler, field) + room

    hard = one(docs, "ResourceQuota")["spec"]["hard"]
    assert hard["pods"] == str(total("pods"))
    assert hard["requests.cpu"] == f"{total('cpu_m')}m"
    assert hard["requests.memory"] == f"{total('memory_mib')}Mi"
    assert hard.get("requests.nvidia.com/gpu") == (str(total("gpus")) if total("gpus") else None)


def test_gpu_template_requests_gpus_and_advertises_them_to_dask() -> None:
    docs, _, plan = scenario("gpu")
    container = pods(docs)["default"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert option(container["args"], "--resources") == "MEMORY=57344,GPU=1"
    assert option(container["args"], "--nthreads") == "7"
    # 4 workers + 4 GPUs of headroom (one p3.8xlarge holds 4 workers).
    assert plan.groups[0].workers_per_node == 4
    assert one(docs, "ResourceQuota")["spec"]["hard"]["requests.nvidia.com/gpu"] == "8"


def test_memory_resource_set_by_the_spec_wins() -> None:
    docs, _, _ = scenario("highmem")
    args = pods(docs)["default"]["containers"][0]["args"]
    assert option(args, "--resources") == "MEMORY=28000"
    assert option(args, "--nthreads") == "3"  # 3.5 CPUs -> 3 threads


def test_worker_groups_get_their_own_node_groups() -> None:
    docs, _, _ = scenario("worker-groups")
    groups = {d["metadata"]["name"]: d for d in docs if d["kind"] == "DaskWorkerGroup"}
    assert set(groups) == {f"{NAME}-gpu", f"{NAME}-himem"}
    for group, replicas in (("gpu", 4), ("himem", 2)):
        spec = groups[f"{NAME}-{group}"]["spec"]
        assert spec["cluster"] == NAME and spec["worker"]["replicas"] == replicas
        pod = spec["worker"]["spec"]
        assert pod["nodeSelector"] == {NODEGROUP_LABEL: nodegroup_name(NAME, group)}
        assert pod["tolerations"][0]["value"] == NAME
    assert option(pods(docs)["gpu"]["containers"][0]["args"], "--resources") == "MEMORY=57344,GPU=1"
    assert pods(docs)["scheduler"]["nodeSelector"] == {NODEGROUP_LABEL: f"{NAME}-default"}
    assert one(docs, "DaskCluster")["spec"]["worker"]["replicas"] == 20


def test_source_branch_is_mounted_from_shared_storage() -> None:
    docs, _, _ = render(platform=NFS, source_git_branch="feature/RSH-1", env={"PYTHONPATH": "/x"})
    for pod in pods(docs).values():
        assert {
            "name": "source",
            "nfs": {"server": NFS.source_nfs_server, "path": "/recc/branches/feature/RSH-1",
                    "readOnly": True},
        } in pod["volumes"]  # fmt: skip
        assert {"name": "source", "mountPath": "/src", "readOnly": True} in (
            pod["containers"][0]["volumeMounts"]
        )
        assert env_of(pod)["PYTHONPATH"] == "/src:/x"


def test_source_branch_without_nfs_server_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"recc\.eks\.source-nfs-server"):
        render(source_git_branch="RSH-1234-feature-branch")
    docs, _, _ = render()
    assert all("PYTHONPATH" not in env_of(pod) for pod in pods(docs).values())


def test_names_that_cannot_name_the_scheduler_service_are_refused() -> None:
    # The spec refuses such names before anything else happens...
    with pytest.raises(SpecError, match="starting with a letter"):
        resolve_spec(name="1cluster")
    # ...and rendering still refuses a spec that bypassed validation.
    spec = resolve_spec().model_copy(update={"name": "1cluster"})
    plan = plan_cluster(spec, bundled_catalog())
    owner = Ownership("1cluster", "alice", "1cluster", CREATED)
    with pytest.raises(SpecError, match="must start with a letter"):
        render_manifests(spec, plan, owner, PlatformSettings())
    with pytest.raises(SpecError, match="name="):
        render_manifests(spec.replace(name="other"), plan, owner_of(spec), PlatformSettings())


def test_platform_settings_from_config() -> None:
    settings = {
        "recc.eks.operator-namespace": "ops",
        "recc.eks.worker-role-arn": "arn:aws:iam::123456789012:role/w",
        "recc.eks.allowed-client-cidrs": ["10.0.0.0/8"],
        "recc.eks.source-nfs-server": "nfs.example",
        "recc.eks.source-mount-path": "/code",
    }
    with dask.config.set(settings):
        platform = PlatformSettings.from_config()
    assert platform == PlatformSettings(
        operator_namespace="ops",
        worker_role_arn="arn:aws:iam::123456789012:role/w",
        allowed_client_cidrs=("10.0.0.0/8",),
        source_nfs_server="nfs.example",
        source_mount_path="/code",
    )


def test_rendering_is_pure() -> None:
    first, _, _ = scenario("worker-groups")
    second, _, _ = scenario("worker-groups")
    assert first == second


# ---- hostile values stay values -----------------------------------------------------------

HOSTILE = [
    'x", "evil": "y',
    "a: b\nkind: Secret\n---\napiVersion: v1\n",
    "}}\n  - name: INJECTED\n    value: x\n{{",
    "{{ 7 * 7 }}{% if true %}jinja{% endif %}{# c #}",
    "- item\n  - nested: [1, {a: b}]",
    "&anchor *alias !!python/object/apply:os.system ['id']",
    "'single' \"double\" `tick` #comment | > % @ \\",
    "\\u0041\\n\\x41 literal escapes",
    "\u2028line\x85separators\ufeffbom\U0001f600\x00\x1b[0m\t\r",
    "true",
    "1e3",
    "~",
    "",
]


def skeleton(value: Any) -> Any:
    """The structure of ``value`` with every string leaf blanked (keys are kept)."""
    if isinstance(value, dict):
        return {k: skeleton(v) for k, v in value.items()}
    if isinstance(value, list):
        return [skeleton(v) for v in value]
    return type(value).__name__


def strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_env_job_tag_and_user_values_cannot_change_the_structure(hostile: str) -> None:
    benign, _, _ = render(env={"PAYLOAD": "benign"}, job="job", tags={"team": "t"}, user="u")
    docs, _, _ = render(env={"PAYLOAD": hostile}, job=hostile, tags={"team": hostile}, user=hostile)
    assert skeleton(docs) == skeleton(benign)
    for pod in pods(docs).values():
        assert env_of(pod)["PAYLOAD"] == hostile
    namespace = one(docs, "Namespace")["metadata"]
    assert json.loads(namespace["annotations"]["recc.io/tags"]) == {"team": hostile}
    assert namespace["annotations"]["recc.io/user"] == hostile
    assert one(docs, "RoleBinding")["subjects"][0]["name"] == hostile
    assert namespace["labels"]["recc.io/job"] == (label_value(hostile) or "none")
    for doc in docs:
        validate(doc)


def test_random_strings_survive_rendering_exactly() -> None:
    rng = random.Random(20261122)
    alphabet = [chr(c) for c in range(0x250)] + ["\u2028", "\u2029", "\ufeff", "\U0001f600"]
    values = {f"V{i}": "".join(rng.choices(alphabet, k=rng.randrange(40))) for i in range(200)}
    docs, _, _ = render(env=values)
    rendered = env_of(pods(docs)["default"])
    assert {k: rendered[k] for k in values} == values


def test_a_spec_template_file_cannot_inject_yaml(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(
        "description: tries to break out of its values\n"
        "env:\n"
        '  EVIL: "}}\\n      - name: INJECTED\\n        value: x\\n{{ name }}"\n'
        '  SNEAKY: "\'\\n---\\nkind: ClusterRoleBinding\\n"\n'
        'job: "job\\nmetadata: {name: kube-system}"\n'
        'tags: {team: "a: b\\n---\\nkind: Secret"}\n'
    )
    benign = tmp_path / "benign.yaml"
    benign.write_text("env: {EVIL: e, SNEAKY: s}\njob: job\ntags: {team: t}\n")
    docs, spec, _ = render(hostile)
    expected, _, _ = render(benign)
    assert skeleton(docs) == skeleton(expected)
    assert [d["kind"] for d in docs] == [d["kind"] for d in expected]
    assert "ClusterRoleBinding" not in [d["kind"] for d in docs]
    assert env_of(pods(docs)["default"])["EVIL"] == spec.env["EVIL"]
    assert spec.env["EVIL"].startswith("}}\n") and spec.env["SNEAKY"] in strings(docs)


# ---- the rendered pods really run ---------------------------------------------------------


def test_rendered_settings_are_dask_config_and_cli_options() -> None:
    docs, _, _ = scenario("worker-groups")
    for role, pod in pods(docs).items():
        for name in env_of(pod):
            if name.startswith("DASK_DISTRIBUTED__"):  # a misspelt setting is silently ignored
                dask.config.get(name.removeprefix("DASK_").lower().replace("__", "."))
        container = pod["containers"][0]
        command = "scheduler" if role == "scheduler" else "worker"
        assert container["args"][:2] == ["dask", command]
        args = [a.replace("$(DASK_WORKER_NAME)", "w-0") for a in container["args"][2:]]
        cli = scheduler_cli if role == "scheduler" else worker_cli
        cli.make_context(f"dask {command}", args)  # raises on an unknown option or bad value


def test_a_rendered_worker_joins_a_tls_scheduler_configured_as_rendered(tmp_path: Path) -> None:
    """The Secret's files, the env and the worker's command line, run for real (TLS only)."""
    made = create_cluster_tls(NAME, tmp_path / "made")
    docs, _, _ = render(tls=TLSMaterial(*made.pem()))
    mount = tmp_path / "mount"  # what the kubelet would project from the Secret
    mount.mkdir()
    for key, value in one(docs, "Secret")["data"].items():
        (mount / key).write_bytes(base64.b64decode(value))
    by_role = pods(docs)

    def local(pod: dict[str, Any]) -> dict[str, str]:
        return {k: v.replace(TLS_MOUNT, str(mount)) for k, v in env_of(pod).items()}

    def as_config(env: dict[str, str], prefix: str = "") -> dict[str, Any]:
        """Dotted dask config keys, read from DASK_* variables the way dask reads them."""
        nested = dask.config.collect_env(env) if not prefix else env
        flat: dict[str, Any] = {}
        for key, value in nested.items():
            if isinstance(value, dict):
                flat.update(as_config(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = value
        return flat

    async def run() -> None:
        with dask.config.set(as_config(local(by_role["scheduler"]))):
            async with Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0",
                                 protocol="tls") as scheduler:  # fmt: skip
                assert scheduler.address.startswith("tls://")
                assert scheduler.idle_timeout is None  # the operator's idle check decides
                args = by_role["default"]["containers"][0]["args"]
                args = [scheduler.address if a.startswith("tls://") else a for a in args]
                args = [a.replace("$(DASK_WORKER_NAME)", "worker-0") for a in args]
                env = {**os.environ, **local(by_role["default"])}
                env["DASK_SCHEDULER_ADDRESS"] = scheduler.address
                dask_cli = shutil.which("dask", path=os.path.dirname(sys.executable))
                log = open(tmp_path / "worker.log", "wb")
                worker = subprocess.Popen(
                    [dask_cli, *args[1:]], env=env, cwd=tmp_path, stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    async with Client(scheduler.address, asynchronous=True) as client:
                        await client.wait_for_workers(1, timeout=90)
                        (info,) = (await client.scheduler.identity())["workers"].values()
                        assert info["name"] == "worker-0"
                        assert info["resources"] == {"MEMORY": 1536}
                        assert info["nthreads"] == 1 and info["memory_limit"] == 1536 * 2**20
                        future = client.submit(sum, [1, 1], resources={"MEMORY": 1000})
                        assert await future == 2
                    port = scheduler.http_server.port
                    body = await asyncio.to_thread(_https_get, f"https://127.0.0.1:{port}/health")
                    assert body == "ok"
                finally:
                    worker.terminate()
                    try:
                        worker.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        worker.kill()
                        worker.wait()
                    log.close()

    asyncio.run(run())


def _https_get(url: str) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the dashboard's certificate is the cluster's own
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return response.read().decode()
