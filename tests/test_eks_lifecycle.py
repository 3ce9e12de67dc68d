"""The EKS backend end to end on the emulated platform (moto, the real control plane with the
real dask-kubernetes operator, Dask pods as local processes): create, compute over TLS, read
everything back through boto3 and the kubernetes client, find again, scale, delete; and a
failure injected into every call of a create, each followed by a check that nothing is left."""

from __future__ import annotations

import base64
import json
import time

import boto3
import dask
import kubernetes.client
import pytest

from recc import RECCClient, RECCCluster
from recc.backends.eks import EKSBackend
from recc.catalog import bundled_catalog
from recc.errors import BackendError, ClusterNotFound, ConfigError
from recc.plan import plan_cluster
from recc.spec import resolve_spec
from recc.testing.platform import emulated_platform

pytestmark = pytest.mark.timeout(240)

FAST = {
    # An internal load balancer (the emulator gives it 127.0.0.1), short polls and timeouts.
    "recc.eks.allowed-client-cidrs": ["127.0.0.0/8"],
    "recc.eks.poll-interval": 0.3,
    "recc.eks.timeouts.nodegroup-active": 20,
    "recc.eks.timeouts.nodes-ready": 20,
    "recc.eks.timeouts.scheduler-reachable": 40,
    "recc.eks.timeouts.workers-joined": 60,
    "recc.eks.timeouts.nodegroup-deleted": 20,
    "recc.eks.request-timeout": 5,
    "recc.eks.user-map": {},
    # The plans below are compared with plan_cluster on the bundled catalogue.
    "recc.planning.catalog-source": "bundled",
}
SMALL = {"worker_memory": "1GiB", "worker_cpu": 1, "scheduler_memory_GiB": 1, "idle_timeout": None}


@pytest.fixture(scope="module")
def platform(kubernetes_platform):
    with emulated_platform(kubernetes=kubernetes_platform) as p, dask.config.set(FAST):
        yield p


@pytest.fixture
def kube(platform):
    with platform.api_client() as api:
        yield api


def recc_nodegroups(platform) -> list[str]:
    eks = boto3.client("eks")
    return [
        n
        for n in eks.list_nodegroups(clusterName=platform.eks_cluster_name)["nodegroups"]
        if n != "system"
    ]


def recc_launch_templates() -> list[str]:
    ec2 = boto3.client("ec2")
    found = ec2.describe_launch_templates(
        Filters=[{"Name": "tag:recc:managed-by", "Values": ["recc"]}]
    )
    return [t["LaunchTemplateName"] for t in found["LaunchTemplates"]]


def recc_namespaces(api) -> list[str]:
    core = kubernetes.client.CoreV1Api(api)
    found = core.list_namespace(label_selector="app.kubernetes.io/managed-by=recc").items
    return [ns.metadata.name for ns in found]


def wait_for_no_processes(platform, timeout: float = 20) -> list:
    # The emulated operator stops processes asynchronously, as the real one deletes pods.
    deadline = time.monotonic() + timeout
    while platform.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    return platform.processes()


def assert_nothing_left(platform, api, name: str | None = None) -> None:
    assert recc_nodegroups(platform) == []
    assert recc_launch_templates() == []
    assert recc_namespaces(api) == []
    assert wait_for_no_processes(platform) == []
    if name is not None:
        from recc import state

        assert not state.cluster_dir(name).exists()


def _dashboard_answers(cluster) -> bool:
    """The backend's dashboard link opens over HTTPS, verified against the cluster's CA."""
    import ssl
    import urllib.request

    link = cluster.record.dashboard_link
    assert link.startswith("https://")
    context = ssl.create_default_context(cafile=cluster.security.tls_ca_file)
    if cluster.record.details.get("route") == "load-balancer":
        # AWS names a load balancer after the certificate exists (the certificate carries the
        # region's ELB wildcard); the test platform's load balancers have bare loopback
        # addresses, so only the chain to the cluster's CA is checked, as Dask's TLS does.
        context.check_hostname = False
    with urllib.request.urlopen(link, context=context, timeout=20) as answer:
        return answer.status == 200


# -- the whole life of a cluster ----------------------------------------------------------


def test_create_compute_read_back_find_scale_and_delete(platform, kube, tmp_path):
    seen = []
    with RECCCluster(
        backend="eks", n_workers=4, name="recc-e2e", progress=lambda *a: seen.append(a), **SMALL
    ) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        with RECCClient(cluster) as client:
            assert client.submit(lambda x: x + 1, 41).result() == 42
            assert sum(client.gather(client.map(lambda x: x * x, range(20)))) == 2470
            assert len(client.scheduler_info()["workers"]) == 4
        assert _dashboard_answers(cluster)
        phases = [p for p, done, total in seen if done == total]
        assert phases[-4:] == [
            "node groups active",
            "nodes ready",
            "scheduler reachable",
            "workers joined",
        ]

        # AWS, through boto3: the node group and its launch template.
        eks, ec2 = boto3.client("eks"), boto3.client("ec2")
        ng = eks.describe_nodegroup(
            clusterName=platform.eks_cluster_name, nodegroupName="recc-e2e-default"
        )["nodegroup"]
        plan = plan_cluster(resolve_spec(n_workers=4, name="recc-e2e", **SMALL), bundled_catalog())
        size = plan.groups[0].instances
        assert ng["scalingConfig"] == {"minSize": size, "maxSize": size, "desiredSize": size}
        tags = ng["tags"]
        assert tags["recc:managed-by"] == "recc" and tags["recc:cluster"] == "recc-e2e"
        assert tags["recc:namespace"] == "recc-e2e" and tags["recc:user"] == cluster.record.owner
        assert ng["labels"] == {
            "recc.io/nodegroup": "recc-e2e-default",
            "recc.io/cluster": "recc-e2e",
        }
        assert ng["taints"] == [
            {"key": "recc.io/cluster", "value": "recc-e2e", "effect": "NO_SCHEDULE"}
        ]
        assert ng["capacityType"] == "ON_DEMAND" and ng["instanceTypes"] == ["c5.xlarge"]
        assert ng["subnets"] == list(platform.subnets) and ng["nodeRole"] == platform.node_role_arn
        versions = ec2.describe_launch_template_versions(
            LaunchTemplateId=ng["launchTemplate"]["id"]
        )
        data = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        specs = {
            s["ResourceType"]: {t["Key"]: t["Value"] for t in s["Tags"]}
            for s in data["TagSpecifications"]
        }
        assert specs["instance"] == tags and specs["volume"] == tags

        # Kubernetes, through the client: namespace, quota, network policy, DaskCluster.
        core = kubernetes.client.CoreV1Api(kube)
        namespace = core.read_namespace("recc-e2e")
        assert namespace.metadata.labels["app.kubernetes.io/managed-by"] == "recc"
        assert json.loads(namespace.metadata.annotations["recc.io/spec"])["n_workers"] == 4
        quota = core.read_namespaced_resource_quota("recc-quota", "recc-e2e")
        assert int(quota.spec.hard["pods"]) >= 5
        policies = kubernetes.client.NetworkingV1Api(kube).list_namespaced_network_policy(
            "recc-e2e"
        )
        deny = {p.metadata.name: p for p in policies.items}["default-deny"]
        assert deny.spec.pod_selector.to_dict() == {"match_expressions": None, "match_labels": None}
        assert deny.spec.policy_types == ["Ingress", "Egress"]
        dask_cluster = kubernetes.client.CustomObjectsApi(kube).get_namespaced_custom_object(
            "kubernetes.dask.org", "v1", "recc-e2e", "daskclusters", "recc-e2e"
        )
        worker = dask_cluster["spec"]["worker"]
        assert worker["replicas"] == 4
        assert worker["spec"]["nodeSelector"] == {"recc.io/nodegroup": "recc-e2e-default"}
        assert {
            "key": "recc.io/cluster",
            "operator": "Equal",
            "value": "recc-e2e",
            "effect": "NoSchedule",
        } in worker["spec"]["tolerations"]
        assert dask_cluster["spec"]["scheduler"]["service"]["type"] == "LoadBalancer"
        assert dask_cluster["status"]["phase"] == "Running"
        secret = core.read_namespaced_secret("recc-e2e-tls", "recc-e2e")
        assert base64.b64decode(secret.data["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE")

        # Another machine, outside the load balancer's reach: no local files, only the
        # platform. Found from labels and tags, the TLS material read from the Secret, reached
        # through a port-forward; closing it leaves the cluster running.
        elsewhere = {
            "recc.state-dir": str(tmp_path / "elsewhere"),
            "recc.eks.connect": "port-forward",
        }
        with dask.config.set(elsewhere):
            backend = EKSBackend()
            assert "recc-e2e" in [r.name for r in backend.list()]
            with RECCCluster.from_name("recc-e2e", backend="eks") as other, RECCClient(other) as c2:
                assert other.record.details["route"] == "port-forward"
                assert other.scheduler_address.startswith("tls://127.0.0.1:")
                assert c2.submit(sum, [1, 2]).result() == 3
                assert _dashboard_answers(other)  # through its own port-forward
                assert other.spec.n_workers == 4 and other.record.owner == cluster.record.owner
            assert (tmp_path / "elsewhere" / "clusters" / "recc-e2e" / "tls" / "key.pem").is_file()
            assert ("kube", "get", "pods/portforward") in platform.calls
            status = backend.status(backend.find("recc-e2e"))
            assert (status.state, status.workers_running) == ("running", 4)
        assert "recc-e2e" in recc_namespaces(kube)

        cluster.scale(5)
        with RECCClient(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 5
        ng = eks.describe_nodegroup(
            clusterName=platform.eks_cluster_name, nodegroupName="recc-e2e-default"
        )["nodegroup"]
        bigger = plan_cluster(
            resolve_spec(n_workers=5, name="recc-e2e", **SMALL), bundled_catalog()
        )
        assert ng["scalingConfig"]["desiredSize"] == max(size, bigger.groups[0].instances)
        logs = EKSBackend().logs(cluster.record)
        assert any("scheduler" in pod for pod in logs)

    assert_nothing_left(platform, kube, "recc-e2e")
    assert EKSBackend().delete("recc-e2e") is False  # idempotent: nothing to remove now
    with pytest.raises(ClusterNotFound):
        EKSBackend().find("recc-e2e")


# -- failures -------------------------------------------------------------------------------


def test_missing_platform_setting_fails_before_any_call(platform, kube):
    record, estimate = _record_and_estimate("recc-noconf")
    platform.clear_calls()
    with dask.config.set({"recc.eks.node-role-arn": None}):
        with pytest.raises(ConfigError, match="recc.eks.node-role-arn"):
            EKSBackend().create(record, estimate)
    assert platform.calls == []
    assert_nothing_left(platform, kube, "recc-noconf")


def _record_and_estimate(name: str, n_workers: int = 1):
    from recc.cluster import cluster_estimate
    from recc.state import ClusterRecord

    spec = resolve_spec(n_workers=n_workers, name=name, **SMALL)
    estimate = cluster_estimate(spec, "eks")
    record = ClusterRecord(
        name, "eks", "me", "2026-01-01T00:00:00Z", spec.to_dict(), estimate.cost.usd_per_hour
    )
    return record, estimate


def test_an_existing_cluster_name_is_refused_and_left_alone(platform, kube):
    core = kubernetes.client.CoreV1Api(kube)
    labels = {"app.kubernetes.io/managed-by": "recc", "recc.io/cluster": "recc-taken"}
    core.create_namespace({"metadata": {"name": "recc-taken", "labels": labels}})
    try:
        with pytest.raises(BackendError, match="exists already"):
            EKSBackend().create(*_record_and_estimate("recc-taken"))
        assert core.read_namespace("recc-taken").metadata.name == "recc-taken"
    finally:
        core.delete_namespace("recc-taken")


def test_delete_leaves_namespaces_recc_did_not_make(platform, kube):
    core = kubernetes.client.CoreV1Api(kube)
    core.create_namespace({"metadata": {"name": "recc-theirs", "labels": {"team": "risk"}}})
    try:
        assert EKSBackend().delete("recc-theirs") is False
        assert core.read_namespace("recc-theirs").metadata.name == "recc-theirs"
    finally:
        core.delete_namespace("recc-theirs")


def test_plans_for_100_workers_are_the_node_group_sizes_requested(platform, kube):
    # Hold the Kubernetes branch at its Secret (so no Dask pod ever starts), read the node
    # group back while the create is under way, then let the create fail and roll back.
    requested = []

    def progress(phase, done, total):
        if phase == "resources created" and recc_nodegroups(platform) and not requested:
            ng = boto3.client("eks").describe_nodegroup(
                clusterName=platform.eks_cluster_name, nodegroupName="recc-hundred-default"
            )
            requested.append(ng["nodegroup"]["scalingConfig"])

    platform.inject_failure(kube=("create", "secrets"), hang=True, hang_seconds=2)
    record, estimate = _record_and_estimate("recc-hundred", n_workers=100)
    with pytest.raises(BackendError, match="failed at step 'Secret recc-hundred/recc-hundred-tls'"):
        EKSBackend().create(record, estimate, progress)
    expected = (
        plan_cluster(resolve_spec(n_workers=100, **SMALL), bundled_catalog()).groups[0].instances
    )
    assert estimate.plan.groups[0].instances == expected
    assert requested == [{"minSize": expected, "maxSize": expected, "desiredSize": expected}]
    assert_nothing_left(platform, kube, "recc-hundred")


def _distinct_create_calls(platform, kube) -> list[tuple[str, str, str]]:
    """The AWS and Kubernetes calls of one successful create, each kind once, in order."""
    platform.clear_calls()
    record, estimate = _record_and_estimate("recc-calls")
    EKSBackend().create(record, estimate)
    calls = list(dict.fromkeys(platform.calls))
    EKSBackend().delete("recc-calls")
    assert_nothing_left(platform, kube, "recc-calls")
    return calls


def _fault(call: tuple[str, str, str]) -> dict:
    """A 500 for calls that make something (so it may have happened: the undo must run
    anyway), a 403 for looks (a refusal the waits do not retry, so the create stops there)."""
    source, a, b = call
    makes = b.startswith(("Create", "Update", "Delete")) or a in ("create", "patch", "delete")
    if makes:
        return {source: (a, b), "status": 500}
    return {source: (a, b), "status": 403, "code": "AccessDeniedException"}


# Every distinct call a create makes, in order (checked against a real create below), each
# failed in a test of its own: one create and rollback per call, each within the timeout.
CREATE_CALLS = [
    ("kube", "get", "namespaces"),  # is the name free
    ("aws", "eks", "ListNodegroups"),
    ("aws", "ec2", "DescribeLaunchTemplates"),
    ("aws", "sts", "GetCallerIdentity"),
    ("aws", "ec2", "CreateLaunchTemplate"),
    ("kube", "create", "namespaces"),
    ("aws", "eks", "CreateNodegroup"),
    ("kube", "create", "serviceaccounts"),
    ("kube", "create", "rolebindings"),
    ("kube", "create", "resourcequotas"),
    ("kube", "create", "networkpolicies"),
    ("kube", "create", "secrets"),
    ("kube", "create", "daskclusters"),
    ("aws", "eks", "DescribeNodegroup"),
    ("kube", "list", "nodes"),
    ("kube", "list", "replicasets"),  # are the pods admitted
    ("kube", "get", "services"),
]
# Where a failure of these calls must stop the create.
FAILED_STEP = {
    ("aws", "sts", "GetCallerIdentity"): "at step 'identity'",
    ("aws", "eks", "CreateNodegroup"): "at step 'node group recc-fault",
    ("kube", "create", "daskclusters"): "at step 'DaskCluster recc-fault",
    ("kube", "list", "nodes"): "at step 'nodes ready'",
    ("kube", "get", "services"): "at step 'scheduler reachable'",
}


def test_the_fault_tests_cover_every_call_a_create_makes(platform, kube):
    calls = _distinct_create_calls(platform, kube)
    assert set(calls) <= set(CREATE_CALLS), sorted(set(calls) - set(CREATE_CALLS))


@pytest.mark.parametrize("call", CREATE_CALLS, ids=lambda c: " ".join(c[1:]))
def test_a_failure_in_any_create_call_leaves_nothing_behind(platform, kube, call):
    name = f"recc-fault-{CREATE_CALLS.index(call)}"
    platform.inject_failure(**_fault(call))
    try:
        with pytest.raises(BackendError) as info:
            EKSBackend().create(*_record_and_estimate(name))
    finally:
        platform.clear_failures()
    message = str(info.value)
    assert "nothing was left behind" in message, message
    assert FAILED_STEP.get(call, "") in message, message
    assert_nothing_left(platform, kube, name)


@pytest.mark.parametrize(
    "fault, remains",
    [
        # The Dask resources: their namespace takes them along anyway.
        ({"kube": ("delete", "daskclusters"), "status": 500}, None),
        # The node group: it and its launch template stay; the rest goes.
        (
            {
                "aws": ("eks", "UpdateNodegroupConfig"),
                "status": 403,
                "code": "AccessDeniedException",
            },
            "aws eks delete-nodegroup --cluster-name",
        ),
        (
            {"aws": ("eks", "DeleteNodegroup"), "status": 403, "code": "AccessDeniedException"},
            "aws eks delete-nodegroup --cluster-name",
        ),
        # The launch template.
        (
            {"aws": ("ec2", "DeleteLaunchTemplate"), "status": 500},
            "aws ec2 delete-launch-template --launch-template-name",
        ),
        # The namespace.
        ({"kube": ("delete", "namespaces"), "status": 500}, "kubectl delete namespace"),
    ],
    ids=["dask-resources", "nodegroup-scale", "nodegroup-delete", "launch-template", "namespace"],
)
def test_a_failure_at_any_delete_step_is_reported_and_a_rerun_finishes(
    platform, kube, fault, remains
):
    name = f"recc-del-{fault.get('kube', fault.get('aws'))[1].lower()}"
    EKSBackend().create(*_record_and_estimate(name))
    if remains == "kubectl delete namespace":
        # While at it: a failure to look the cluster up removes nothing and says so.
        platform.inject_failure(kube=("get", "namespaces"))
        with pytest.raises(BackendError, match="Nothing was removed"):
            EKSBackend().delete(name)
        assert name in recc_namespaces(kube)
    platform.inject_failure(**fault)
    try:
        if remains is None:
            assert EKSBackend().delete(name) is True
        else:
            with pytest.raises(BackendError) as info:
                EKSBackend().delete(name)
            message = str(info.value)
            assert f"deleting cluster {name!r} failed at step" in message
            assert remains in message and f"recc down {name}" in message
            assert EKSBackend().delete(name) is True  # the re-run removes the rest
    finally:
        platform.clear_failures()
    assert_nothing_left(platform, kube, name)


def test_a_phase_timeout_rolls_back_and_names_its_setting(platform, kube):
    with dask.config.set({"recc.eks.timeouts.scheduler-reachable": 0.2}):
        with pytest.raises(BackendError) as info:
            EKSBackend().create(*_record_and_estimate("recc-slow"))
    message = str(info.value)
    assert "failed at step 'scheduler reachable'" in message
    assert "recc.eks.timeouts.scheduler-reachable" in message
    assert "nothing was left behind" in message
    assert_nothing_left(platform, kube, "recc-slow")


def test_a_hanging_call_times_out_and_rolls_back(platform, kube):
    # The API server never answers the DaskCluster's creation; the request timeout ends it.
    # The timeout leaves every other call (answered in milliseconds) ample room even on a
    # loaded machine: only the hung one may be the step that fails.
    platform.inject_failure(kube=("create", "daskclusters"), hang=True, hang_seconds=20)
    with dask.config.set({"recc.eks.request-timeout": 4}):
        with pytest.raises(BackendError) as info:
            EKSBackend().create(*_record_and_estimate("recc-hang"))
    assert "failed at step 'DaskCluster recc-hang/recc-hang'" in str(info.value)
    assert "nothing was left behind" in str(info.value)
    assert_nothing_left(platform, kube, "recc-hang")
