"""The emulated platform: moto, the real control plane with the real dask-kubernetes operator,
and the node agent; set up and restored around a block, served to other processes, with
failure injection into AWS and Kubernetes calls, and RECC's EKS backend end to end on it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import dask.config
import kubernetes.client
import psutil
import pytest
from helpers import processes_under, wait_for
from kubernetes.client.rest import ApiException

from recc.testing import emulated_platform
from recc.testing.controlplane import audited_calls
from recc.testing.platform import RESEARCHER_GROUP


def with_children(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def test_serve_prints_exports_that_other_processes_use_and_stops_on_sigterm(tmp_path: Path):
    stderr = open(tmp_path / "serve.err", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "recc.testing", "serve", "--port-file", str(tmp_path / "env")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
    )
    try:
        # The server closes its stdout after the exports: read to the end, then close.
        with server.stdout:
            text = server.stdout.read().decode()
        env = {}
        for line in text.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            env[name] = shlex.split(value)[0]
        assert env["DASK_RECC__BACKEND"] == "eks"
        assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert (tmp_path / "env").read_text() == text
        client = textwrap.dedent(
            """
            import json, boto3, kubernetes.client
            from recc import config
            from recc.kube.client import api_client
            eks = boto3.client("eks")
            clusters = eks.list_clusters()["clusters"]
            groups = eks.list_nodegroups(clusterName=config.get("eks.cluster-name"))["nodegroups"]
            core = kubernetes.client.CoreV1Api(api_client())  # as the researcher, by EKS token
            core.create_namespace({"metadata": {"name": "recc-from-another-process",
                "labels": {"app.kubernetes.io/managed-by": "recc"}}})
            print(json.dumps({
                "clusters": clusters, "nodegroups": groups,
                "subnets": config.get("eks.subnets"), "backend": config.get("backend"),
                "namespaces": [n.metadata.name for n in core.list_namespace().items],
            }))
            """
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DASK_RECC"))}
        result = subprocess.run(
            [sys.executable, "-c", client],
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen["clusters"] == ["recc-emulated"]
        assert seen["nodegroups"] == ["system"]
        assert seen["subnets"] == json.loads(env["DASK_RECC__EKS__SUBNETS"])
        assert seen["backend"] == "eks"
        assert "recc-from-another-process" in seen["namespaces"]
        nodes = subprocess.run(
            ["kubectl", "get", "nodes", "-o", "name"],
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert nodes.stdout.split() == ["node/system-node-0"], nodes.stderr
        workdir = Path(env["DASK_RECC__STATE_DIR"]).parent
        children = with_children([server.pid])
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive
        assert not processes_under(workdir)
        assert not workdir.exists()
        assert not (tmp_path / "env").exists()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        stderr.close()


def test_platform_sets_up_aws_and_kubernetes_and_restores_everything_even_when_the_body_raises(
    kubernetes_platform, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("AWS_PROFILE", "production")
    before = dict(os.environ)
    with pytest.raises(RuntimeError, match="body failed"):
        with emulated_platform(kubernetes=kubernetes_platform) as platform:
            assert "AWS_PROFILE" not in os.environ
            assert os.environ["AWS_ENDPOINT_URL"] == platform.aws_endpoint_url
            assert dask.config.get("recc.eks.endpoint") == kubernetes_platform.faults.url
            identity = boto3.client("sts").get_caller_identity()
            assert identity["Arn"] == platform.caller_arn == (
                f"arn:aws:iam::{platform.account_id}:user/researcher"
            )
            assert boto3.client("eks").list_clusters()["clusters"] == ["recc-emulated"]
            with pytest.raises(RuntimeError, match="already running"):
                with emulated_platform(kubernetes=kubernetes_platform):
                    pass
            raise RuntimeError("body failed")
    assert dict(os.environ) == before
    assert dask.config.get("recc.eks.endpoint", default=None) != kubernetes_platform.faults.url
    with emulated_platform(kubernetes=kubernetes_platform) as again:  # the lock was released
        assert boto3.client("eks").list_clusters()["clusters"] == [again.eks_cluster_name]


# -- tests sharing one platform ---------------------------------------------------------------


@pytest.fixture(scope="module")
def platform(kubernetes_platform) -> Any:
    with emulated_platform(kubernetes=kubernetes_platform) as running:
        yield running


@pytest.fixture
def apis(platform: Any) -> tuple[kubernetes.client.CoreV1Api, kubernetes.client.CustomObjectsApi]:
    api = platform.api_client()
    return kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)


def node_names(core: kubernetes.client.CoreV1Api, nodegroup: str) -> list[str]:
    nodes = core.list_node(label_selector=f"eks.amazonaws.com/nodegroup={nodegroup}").items
    return sorted(n.metadata.name for n in nodes)


def test_node_groups_created_scaled_and_deleted_through_boto3_become_nodes(platform, apis):
    core, _ = apis
    eks = boto3.client("eks")
    eks.create_nodegroup(
        clusterName=platform.eks_cluster_name,
        nodegroupName="c1-gpu",
        nodeRole=platform.node_role_arn,
        subnets=list(platform.subnets),
        instanceTypes=["c5.xlarge"],
        capacityType="SPOT",
        scalingConfig={"minSize": 0, "desiredSize": 3, "maxSize": 3},
        labels={"recc.io/nodegroup": "c1-gpu", "recc.io/cluster": "c1"},
        taints=[{"key": "recc.io/cluster", "value": "c1", "effect": "NO_SCHEDULE"}],
    )
    names = wait_for(lambda: len(node_names(core, "c1-gpu")) == 3 and node_names(core, "c1-gpu"))
    node = core.read_node(names[0])
    assert node.metadata.labels["recc.io/nodegroup"] == "c1-gpu"
    assert node.metadata.labels["recc.io/cluster"] == "c1"
    assert node.metadata.labels["eks.amazonaws.com/capacityType"] == "SPOT"
    assert node.metadata.labels["node.kubernetes.io/instance-type"] == "c5.xlarge"
    # The node lifecycle controller lifts its not-ready taint once it sees the node Ready.
    wanted = [("recc.io/cluster", "c1", "NoSchedule")]
    wait_for(
        lambda: [(t.key, t.value, t.effect) for t in core.read_node(names[0]).spec.taints]
        == wanted,
        what="the node's own taints only",
    )
    assert [(c.type, c.status) for c in node.status.conditions] == [("Ready", "True")]
    assert node.status.capacity["cpu"] == "4"

    eks.update_nodegroup_config(
        clusterName=platform.eks_cluster_name,
        nodegroupName="c1-gpu",
        scalingConfig={"minSize": 0, "desiredSize": 1, "maxSize": 3},
    )
    wait_for(lambda: len(node_names(core, "c1-gpu")) == 1, what="scale down to 1 node")
    eks.delete_nodegroup(clusterName=platform.eks_cluster_name, nodegroupName="c1-gpu")
    wait_for(lambda: node_names(core, "c1-gpu") == [], what="nodes of a deleted node group gone")
    assert node_names(core, "system") == ["system-node-0"]  # the platform's own, untouched


def test_aws_failure_injection_fails_exactly_times_calls_then_succeeds(platform):
    eks = boto3.client("eks")
    platform.clear_calls()
    platform.inject_failure(aws=("eks", "ListClusters"), times=2)
    for _ in range(2):
        with pytest.raises(botocore.exceptions.ClientError) as failed:
            eks.list_clusters()
        assert failed.value.response["Error"]["Code"] == "InternalFailure"
    assert eks.list_clusters()["clusters"] == [platform.eks_cluster_name]
    assert platform.calls == [("aws", "eks", "ListClusters")] * 3

    # A modelled error code raises the service's own exception class.
    platform.inject_failure(
        aws=("eks", "DescribeCluster"), code="ResourceNotFoundException", status=404
    )
    with pytest.raises(eks.exceptions.ResourceNotFoundException):
        eks.describe_cluster(name=platform.eks_cluster_name)
    assert eks.describe_cluster(name=platform.eks_cluster_name)["cluster"]["status"] == "ACTIVE"

    platform.inject_failure(aws=("sts", "GetCallerIdentity"), hang=True, hang_seconds=0.2)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        boto3.client("sts").get_caller_identity()
    assert boto3.client("sts").get_caller_identity()["Account"] == platform.account_id

    with pytest.raises(ValueError, match="CreateNodegroup"):
        platform.inject_failure(aws=("eks", "CreateNodeGroup"))
    with pytest.raises(ValueError, match="exactly one"):
        platform.inject_failure(aws=("eks", "ListClusters"), kube=("create", "namespaces"))


FLAKY = {"metadata": {"name": "recc-flaky", "labels": {"app.kubernetes.io/managed-by": "recc"}}}


def test_kube_failure_injection_and_calls_in_order_across_aws_and_kubernetes(platform, apis):
    # Calls through recc.eks.endpoint (the fault proxy) as the researcher RECC acts as.
    from recc.kube.client import api_client

    core = kubernetes.client.CoreV1Api(api_client())
    platform.clear_calls()
    platform.inject_failure(kube=("create", "namespaces"), times=1, status=503)
    with pytest.raises(ApiException) as failed:
        core.create_namespace(FLAKY)
    assert failed.value.status == 503
    boto3.client("eks").list_nodegroups(clusterName=platform.eks_cluster_name)
    core.create_namespace(FLAKY)
    core.delete_namespace("recc-flaky")
    assert platform.calls == [
        ("kube", "create", "namespaces"),
        ("aws", "eks", "ListNodegroups"),
        ("kube", "create", "namespaces"),
        ("kube", "delete", "namespaces"),
    ]


def test_recc_cluster_on_the_eks_backend_runs_end_to_end_and_leaves_nothing(platform, apis):
    """The issue's check: RECCCluster(backend="eks") creates node group, namespace and Dask
    objects, connects over TLS (here through the port-forward: the platform's Services are
    ClusterIP), computes, and on close nothing is left in AWS, Kubernetes or the process table."""
    from recc import RECCClient, RECCCluster

    core, _ = apis
    eks, ec2 = boto3.client("eks"), boto3.client("ec2")
    timeouts = {
        f"recc.eks.timeouts.{phase}": 60
        for phase in ("nodegroup-active", "nodes-ready", "scheduler-reachable", "workers-joined")
    }
    managed = "app.kubernetes.io/managed-by=recc"
    audit = platform.kubernetes.control_plane
    seen = len(audit.audit_events(group=RESEARCHER_GROUP))
    with dask.config.set(timeouts):
        with RECCCluster(backend="eks", n_workers=4) as cluster, RECCClient(cluster) as client:
            name = cluster.name
            assert client.submit(sum, client.map(lambda x: x**2, range(10))).result() == 285
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 4
            assert (
                f"{name}-default"
                in eks.list_nodegroups(clusterName=platform.eks_cluster_name)["nodegroups"]
            )
            service = core.read_namespaced_service(f"{name}-scheduler", name)
            assert service.spec.type == "ClusterIP"
            assert ("kube", "get", "pods/portforward") in platform.calls
            # The operator's own builders: a Deployment for the scheduler and one per worker.
            apps = kubernetes.client.AppsV1Api(platform.api_client())
            deployments = apps.list_namespaced_deployment(name).items
            assert len(deployments) == 5
            pods = core.list_namespaced_pod(name).items
            assert all(p.metadata.owner_references[0].kind == "ReplicaSet" for p in pods)
            assert len(platform.processes()) == 5
    wait_for(lambda: platform.processes() == [], what="the cluster's processes to stop")
    groups = eks.list_nodegroups(clusterName=platform.eks_cluster_name)["nodegroups"]
    assert groups == ["system"]
    templates = ec2.describe_launch_templates(
        Filters=[{"Name": "tag:recc:managed-by", "Values": ["recc"]}]
    )["LaunchTemplates"]
    assert templates == []
    assert core.list_namespace(label_selector=managed).items == []
    wait_for(lambda: node_names(core, f"{name}-default") == [], what="the cluster's nodes")
    # Every call RECC made ran as the researcher (its EKS token, its access entry's group and
    # namespaced admin policy) and none was refused: the role RECC's Terraform and platform
    # install grant is enough for the whole lifecycle.
    calls = audited_calls(audit.audit_events(group=RESEARCHER_GROUP)[seen:])
    refused = [call for call in calls if call[2] in (401, 403)]
    assert not refused, refused
    made = {(verb, resource) for verb, resource, _ in calls}
    assert {
        ("create", "namespaces"),
        ("create", "secrets"),
        ("create", "rolebindings"),
        ("create", "daskclusters"),
        ("delete", "namespaces"),
    } <= made, made


def test_scale_down_through_the_real_operator_retires_workers_gracefully_and_loses_no_task(
    platform, apis
):
    """The operator retires workers through the scheduler's plain-HTTP API port (in-cluster
    only); the dashboard and Dask stay TLS-only for clients."""
    from recc import RECCClient, RECCCluster

    core, _ = apis
    small = {"worker_memory": "1GiB", "worker_cpu": 1, "scheduler_memory_GiB": 1}
    with RECCCluster(backend="eks", n_workers=4, **small) as cluster, RECCClient(cluster) as client:
        futures = client.map(lambda x: (__import__("time").sleep(0.3), x)[1], range(40))
        cluster.scale(2)
        wait_for(
            lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 2,
            what="two workers after scale(2)",
        )
        assert sum(client.gather(futures)) == sum(range(40))
        selector = "dask.org/component=worker"
        wait_for(
            lambda: len(core.list_namespaced_pod(cluster.name, label_selector=selector).items)
            == 2,
            what="two worker Pods",
        )
        cluster.scale(4)
        client.wait_for_workers(4, timeout=120)
        # Plain HTTP answers on the operator's port only, inside the cluster; clients get TLS.
        service = core.read_namespaced_service(f"{cluster.name}-scheduler", cluster.name)
        assert {p.name for p in service.spec.ports} == {
            "tcp-comm",
            "https-dashboard",
            "http-dashboard",
        }
    wait_for(lambda: platform.processes() == [], what="the cluster's processes to stop")


def test_an_idle_cluster_is_shut_down_by_the_operator(platform, apis):
    """spec.idleTimeout: the operator's own idle check reaches the scheduler's API and deletes
    the DaskCluster; RECC's harvester then finds the rest (see test_harvest_eks)."""
    from recc import RECCCluster

    custom = kubernetes.client.CustomObjectsApi(platform.api_client())
    small = {"worker_memory": "1GiB", "worker_cpu": 1, "scheduler_memory_GiB": 1}
    # Longer than the start takes: the operator's idle check runs from the scheduler's start.
    cluster = RECCCluster(backend="eks", n_workers=1, idle_timeout="30s", **small)
    try:

        def gone() -> bool:
            try:
                custom.get_namespaced_custom_object(
                    "kubernetes.dask.org", "v1", cluster.name, "daskclusters", cluster.name
                )
            except ApiException as e:
                return e.status == 404
            return False

        wait_for(gone, timeout=180, what="the idle cluster's DaskCluster to be deleted")
        wait_for(
            lambda: not [p for p in platform.processes() if p[0] == cluster.name],
            what="the idle cluster's Pods to stop",
        )
    finally:
        cluster.close()


def test_down_then_up_of_one_name_at_once(platform, apis):
    """Kubernetes keeps a deleted namespace Terminating while it finalizes its content: `recc
    down` returns only once it is gone, so the same name can be created again at once."""
    from recc import RECCClient, RECCCluster
    from recc.clusters import delete_cluster

    small = {"worker_memory": "1GiB", "worker_cpu": 1, "scheduler_memory_GiB": 1}
    first = RECCCluster(backend="eks", name="recc-again", n_workers=1, **small)
    first.shutdown_on_close = False
    first.close()
    assert delete_cluster("recc-again", "eks")
    with RECCCluster(backend="eks", name="recc-again", n_workers=1, **small) as again:
        with RECCClient(again) as client:
            assert client.submit(sum, [20, 22]).result() == 42


def component_pods(core, namespace: str, component: str) -> list:
    selector = f"dask.org/component={component}"
    return core.list_namespaced_pod(namespace, label_selector=selector).items


def replica_failures(platform, namespace: str) -> str | None:
    from recc.backends.eks import pods_refused

    apps = kubernetes.client.AppsV1Api(platform.api_client())
    replica_sets = apps.list_namespaced_replica_set(namespace).items
    return pods_refused([platform.api_client().sanitize_for_serialization(r) for r in replica_sets])


def test_the_quota_admits_a_scheduler_restart_and_a_worker_replacement(platform, apis):
    """The ResourceQuota RECC renders holds every pod of the plan and room for replacements
    while the old pods terminate: a scheduler and a worker deleted at once are both replaced,
    and the client, whose port-forward follows the new scheduler pod, computes again."""
    from recc import RECCClient, RECCCluster
    from recc.backends.eks import pod_ready

    core, _ = apis
    with RECCCluster(backend="eks", n_workers=2) as cluster, RECCClient(cluster) as client:
        name = cluster.name
        [scheduler] = component_pods(core, name, "scheduler")
        worker = component_pods(core, name, "worker")[0]
        for pod in (scheduler, worker):
            core.delete_namespaced_pod(pod.metadata.name, name)
        gone = {scheduler.metadata.name, worker.metadata.name}

        def replaced() -> bool:
            fresh = [
                p
                for p in component_pods(core, name, "scheduler")
                + component_pods(core, name, "worker")
                if p.metadata.name not in gone
            ]
            ready = [p for p in fresh if pod_ready(client_api.sanitize_for_serialization(p))]
            return len(ready) == 3

        client_api = platform.api_client()
        wait_for(replaced, 120, "a new scheduler pod and two Ready worker pods")
        assert replica_failures(platform, name) is None
        quota = core.read_namespaced_resource_quota("recc-quota", name)
        assert int(quota.status.used["pods"]) <= int(quota.spec.hard["pods"])
        # The new scheduler starts empty; the workers find it through its Service.
        wait_for(
            lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 2,
            120,
            "both workers to join the restarted scheduler",
        )
        assert client.submit(sum, [1, 2], pure=False).result(timeout=60) == 3


def test_a_cluster_its_quota_refuses_fails_in_up_with_a_clear_error_and_leaves_nothing(
    platform, apis, monkeypatch
):
    """When the quota is smaller than the pods (a platform's sidecar injector or policy
    adds to each pod's requests; here the rendered quota is cut by hand), `recc up` says the
    API server refused the pods and why, rolls back, and leaves nothing."""
    import dataclasses

    from helpers import run_cli

    from recc import render

    sized = render._quota
    monkeypatch.setattr(
        render, "_quota", lambda plan: dataclasses.replace(sized(plan), pods=2)
    )
    core, _ = apis
    code, output = run_cli(
        "up", "--backend", "eks", "--name", "recc-overquota", "--n-workers", "3", "--yes"
    )
    assert code != 0, output
    assert "refuses to create the pods of cluster recc-overquota" in output, output
    assert "exceeded quota: recc-quota" in output, output
    assert "Traceback" not in output
    eks = boto3.client("eks")
    groups = eks.list_nodegroups(clusterName=platform.eks_cluster_name)["nodegroups"]
    assert groups == ["system"]
    assert [n for n in core.list_namespace().items if n.metadata.name == "recc-overquota"] == []
    wait_for(lambda: platform.processes() == [], what="the cluster's processes to stop")
