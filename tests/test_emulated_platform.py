"""The emulated platform (recc.testing): moto + the fake Kubernetes API + the emulated Dask
operator, in-process and served to other processes.

One platform serves most tests of this module (its start costs seconds); the tests that need
their own platform, or none in this process, come first, because only one platform can run in
a process at a time.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import botocore.handlers
import dask.config
import kubernetes.client
import psutil
import pytest
from helpers import processes_under, wait_for
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward

from recc.testing import emulated_platform, fake_kubernetes
from recc.tls import TLSFiles, create_cluster_tls

DASK = ("kubernetes.dask.org", "v1")


def with_children(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return procs


def tls_secret(name: str, tls: TLSFiles) -> dict[str, Any]:
    ca, cert, key = tls.pem()
    data = {"ca.crt": ca, "tls.crt": cert, "tls.key": key}
    return {
        "metadata": {"name": f"{name}-tls"},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def dask_cluster(
    name: str, replicas: int, worker_args: list[str], service_type: str = "LoadBalancer"
) -> dict[str, Any]:
    """A minimal valid DaskCluster, shaped like RECC's rendered one (Secret volume, TLS env)."""
    tls_env = [
        {"name": "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "value": "True"},
        {"name": "DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "value": "/etc/tls/ca.crt"},
    ]
    volumes = [{"name": "tls", "secret": {"secretName": f"{name}-tls"}}]
    mounts = [{"name": "tls", "mountPath": "/etc/tls", "readOnly": True}]

    def pod(container: str, args: list[str]) -> dict[str, Any]:
        return {
            "volumes": volumes,
            "containers": [
                {
                    "name": container,
                    "image": "ghcr.io/dask/dask:latest",
                    "args": args,
                    "env": [*tls_env, {"name": "EMULATED_GREETING", "value": "hello"}],
                    "volumeMounts": mounts,
                }
            ],
        }

    ports = [
        {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
        {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"},
    ]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name, "labels": {"recc.io/cluster": name}},
        "spec": {
            "scheduler": {
                "spec": pod("scheduler", ["dask", "scheduler"]),
                "service": {"type": service_type, "ports": ports},
            },
            "worker": {
                "replicas": replicas,
                "spec": pod(
                    "worker", ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", *worker_args]
                ),
            },
        },
    }


def scheduler_port(core: kubernetes.client.CoreV1Api, name: str, require_ingress: bool) -> int:
    def ready() -> int | None:
        try:
            svc = core.read_namespaced_service(f"{name}-scheduler", name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        ports = {p.name: p.port for p in svc.spec.ports or []}
        ingress = svc.status and svc.status.load_balancer and svc.status.load_balancer.ingress
        if ports.get("tcp-comm", 8786) == 8786 or (require_ingress and not ingress):
            return None  # the operator has not published the bound port yet
        return ports["tcp-comm"]

    return wait_for(ready, what=f"the scheduler Service of {name}")


# -- tests that need their own platform (or none in this process) ---------------------------


def test_platform_sets_up_aws_and_kubernetes_and_restores_everything_even_when_the_body_raises(
    tmp_path: Path,
):
    key_before = os.environ.get("AWS_ACCESS_KEY_ID")
    import moto.core.models  # noqa: F401  (moto adds its own handler once, on import)

    handlers_before = list(botocore.handlers.BUILTIN_HANDLERS)
    endpoint_before = dask.config.get("recc.eks.endpoint", None)
    started: list[psutil.Process] = []
    workdir = None
    with pytest.raises(RuntimeError, match="the body failed"):
        with emulated_platform(require_nodes=False) as platform:
            url = platform.kube.url
            workdir = platform.operator.directory.parent
            assert boto3.client("sts").get_caller_identity()["Account"] == platform.account_id
            assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
            assert dask.config.get("recc.eks.endpoint") == url
            assert dask.config.get("recc.eks.cluster-name") == platform.eks_cluster_name
            eks = boto3.client("eks")
            cluster = eks.describe_cluster(name=platform.eks_cluster_name)["cluster"]
            assert cluster["resourcesVpcConfig"]["subnetIds"] == list(platform.subnets)
            assert dask.config.get("recc.eks.subnets") == list(platform.subnets)
            with pytest.raises(RuntimeError, match="already running"):
                with emulated_platform():
                    pass

            core = kubernetes.client.CoreV1Api(platform.api_client())
            core.create_namespace({"metadata": {"name": "raises"}})
            tls = create_cluster_tls("raises", tmp_path / "tls")
            core.create_namespaced_secret("raises", tls_secret("raises", tls))
            kubernetes.client.CustomObjectsApi(
                platform.api_client()
            ).create_namespaced_custom_object(
                *DASK, "raises", "daskclusters", dask_cluster("raises", 1, ["--nthreads", "1"])
            )
            wait_for(lambda: len(platform.processes()) == 2, what="scheduler and worker")
            started = with_children([p.pid for p in platform.processes()])
            raise RuntimeError("the body failed")

    gone, alive = psutil.wait_procs(started, timeout=15)
    assert not alive
    assert len(gone) >= 2
    assert not processes_under(workdir)
    assert not workdir.exists()
    assert os.environ.get("AWS_ACCESS_KEY_ID") == key_before
    assert botocore.handlers.BUILTIN_HANDLERS == handlers_before
    assert dask.config.get("recc.eks.endpoint", None) == endpoint_before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=2).close()
    with emulated_platform() as again:  # the process-wide lock was released
        assert again.kube.url != url


def test_fake_kube_streams_pod_logs_and_port_forwards_to_the_pod_ip():
    """pods/<name>/log and the portforward websocket, through the real kubernetes client."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    with fake_kubernetes() as kube:
        kube.pod_logs = lambda namespace, pod: f"{namespace}/{pod} line 1\nline 2\nline 3\n"
        core = kubernetes.client.CoreV1Api(kube.api_client())
        pod = {
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }
        core.create_namespaced_pod("default", pod)
        assert core.read_namespaced_pod_log("p", "default") == "default/p line 1\nline 2\nline 3\n"
        assert core.read_namespaced_pod_log("p", "default", tail_lines=1) == "line 3\n"
        with pytest.raises(ApiException) as missing:
            core.read_namespaced_pod_log("nope", "default")
        assert missing.value.status == 404

        with pytest.raises(ApiException, match="not running"):
            portforward(
                core.connect_get_namespaced_pod_portforward, "p", "default", ports=str(port)
            )
        kube.patch_object(
            "pods", "p", {"status": {"phase": "Running", "podIP": "127.0.0.1"}}, "default"
        )
        forward = portforward(
            core.connect_get_namespaced_pod_portforward, "p", "default", ports=str(port)
        )
        stream = forward.socket(port)
        stream.settimeout(10)
        payload = b"tls bytes " * 10_000  # larger than one frame and one recv
        stream.sendall(payload)
        received = b""
        while len(received) < len(payload):
            received += stream.recv(65536)
        assert received == payload.upper()
        stream.close()
        assert kube.count("get", "pods/portforward") == 2
        assert kube.count("get", "pods/log") == 3
    listener.close()


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
            eks = boto3.client("eks")
            clusters = eks.list_clusters()["clusters"]
            groups = eks.list_nodegroups(clusterName=config.get("eks.cluster-name"))["nodegroups"]
            api = kubernetes.client.ApiClient(
                kubernetes.client.Configuration(host=config.get("eks.endpoint")))
            core = kubernetes.client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": "from-another-process"}})
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
        assert "from-another-process" in seen["namespaces"]
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


# -- tests sharing one platform ---------------------------------------------------------------


@pytest.fixture(scope="module")
def platform() -> Iterator[Any]:
    with emulated_platform() as running:
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
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
        ("recc.io/cluster", "c1", "NoSchedule")
    ]
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


def test_kube_failure_injection_and_calls_in_order_across_aws_and_kubernetes(platform, apis):
    core, _ = apis
    platform.clear_calls()
    platform.inject_failure(kube=("create", "namespaces"), times=1, status=503)
    with pytest.raises(ApiException) as failed:
        core.create_namespace({"metadata": {"name": "flaky"}})
    assert failed.value.status == 503
    boto3.client("eks").list_nodegroups(clusterName=platform.eks_cluster_name)
    core.create_namespace({"metadata": {"name": "flaky"}})
    core.delete_namespace("flaky")
    assert platform.calls == [
        ("kube", "create", "namespaces"),
        ("aws", "eks", "ListNodegroups"),
        ("kube", "create", "namespaces"),
        ("kube", "delete", "namespaces"),
    ]


def test_a_dask_cluster_becomes_a_tls_scheduler_with_workers_that_scale_and_stop(
    platform, apis, tmp_path: Path
):
    from distributed import Client

    core, custom = apis
    name = "emu-a"
    core.create_namespace({"metadata": {"name": name}})
    tls = create_cluster_tls(name, tmp_path / "tls", hostnames=("localhost", "127.0.0.1"))
    core.create_namespaced_secret(name, tls_secret(name, tls))
    worker_args = ["--nthreads", "2", "--memory-limit", "1GiB", "--resources", "MEMORY=1024 GPU=1"]
    custom.create_namespaced_custom_object(
        *DASK, name, "daskclusters", dask_cluster(name, 2, worker_args)
    )
    port = scheduler_port(core, name, require_ingress=True)
    svc = core.read_namespaced_service(f"{name}-scheduler", name)
    assert svc.status.load_balancer.ingress[0].ip == "127.0.0.1"
    dc = custom.get_namespaced_custom_object(*DASK, name, "daskclusters", name)
    assert dc["status"]["phase"] == "Running"

    # Another cluster's certificates do not open this one.
    other = create_cluster_tls("other", tmp_path / "other").security()
    with pytest.raises((OSError, TimeoutError)):
        with Client(f"tls://127.0.0.1:{port}", security=other, timeout=3):
            pass
    with Client(f"tls://127.0.0.1:{port}", security=tls.security(), timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        assert sorted((w["nthreads"], w["memory_limit"]) for w in workers) == [(2, 2**30)] * 2
        assert all(w["resources"] == {"MEMORY": 1024, "GPU": 1} for w in workers)
        names = {w["name"] for w in workers}
        pods = core.list_namespaced_pod(name, label_selector="dask.org/component=worker").items
        assert {p.metadata.name for p in pods} == names
        assert all(p.status.phase == "Running" and p.spec.node_name for p in pods)
        # The container's env reaches the process (and mount paths point at local copies).
        env = client.run(lambda: dict(os.environ))
        assert all(e["EMULATED_GREETING"] == "hello" for e in env.values())
        assert all(Path(e["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"]).is_file() for e in env.values())
        square = client.submit(lambda x: x * x, 7, resources={"GPU": 1})
        assert square.result(timeout=60) == 49

        # An extra worker group (as rendered for another pool) joins the same scheduler.
        group = {
            "apiVersion": "kubernetes.dask.org/v1",
            "kind": "DaskWorkerGroup",
            "metadata": {"name": f"{name}-big"},
            "spec": {
                "cluster": name,
                "worker": {
                    "replicas": 1,
                    "spec": dask_cluster(name, 1, ["--resources", "BIG=1"])["spec"]["worker"][
                        "spec"
                    ],
                },
            },
        }
        custom.create_namespaced_custom_object(*DASK, name, "daskworkergroups", group)
        client.wait_for_workers(3, timeout=60)

        custom.patch_namespaced_custom_object(
            *DASK, name, "daskclusters", name, {"spec": {"worker": {"replicas": 1}}}
        )
        wait_for(
            lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 2,
            what="scale down to 1 default worker",
        )
        default = custom.get_namespaced_custom_object(
            *DASK, name, "daskworkergroups", f"{name}-default"
        )
        assert default["spec"]["worker"]["replicas"] == 1
        resources = [
            w["resources"] for w in client.scheduler_info(n_workers=-1)["workers"].values()
        ]
        assert sorted(resources, key=str) == [{"BIG": 1}, {"GPU": 1, "MEMORY": 1024}]
        assert len(platform.processes()) == 3

        # Scaling the default worker group itself (as KubeCluster.scale does) holds: only a
        # change of the DaskCluster's replicas is copied into it.
        custom.patch_namespaced_custom_object(
            *DASK,
            name,
            "daskworkergroups",
            f"{name}-default",
            {"spec": {"worker": {"replicas": 2}}},
        )
        client.wait_for_workers(3, timeout=60)
        dc = custom.get_namespaced_custom_object(*DASK, name, "daskclusters", name)
        assert dc["spec"]["worker"]["replicas"] == 1
        assert len(platform.processes()) == 4
    log = core.read_namespaced_pod_log(
        core.list_namespaced_pod(name, label_selector="dask.org/component=scheduler")
        .items[0]
        .metadata.name,
        name,
    )
    assert "Scheduler at:" in log

    started = with_children([p.pid for p in platform.processes()])
    core.delete_namespace(name)
    wait_for(lambda: platform.processes() == [], what="processes of the deleted namespace")
    gone, alive = psutil.wait_procs(started, timeout=15)
    assert not alive
    assert platform.operator.errors == []


def test_pods_wait_for_their_node_group_and_port_forward_reaches_a_cluster_ip_scheduler(
    platform, apis, tmp_path: Path
):
    """A nodeSelector'd pod stays Pending until its node group's Nodes exist; a ClusterIP
    scheduler (no load balancer) is reached through the API server's port-forward."""
    from distributed import Client

    from recc.kube.connect import PortForwarder, kubernetes_opener

    core, custom = apis
    name = "emu-b"
    core.create_namespace({"metadata": {"name": name}})
    tls = create_cluster_tls(name, tmp_path / "tls")
    core.create_namespaced_secret(name, tls_secret(name, tls))
    cluster = dask_cluster(name, 1, ["--nthreads", "1"], service_type="ClusterIP")
    for part in ("scheduler", "worker"):
        cluster["spec"][part]["spec"] |= {
            "nodeSelector": {"recc.io/nodegroup": f"{name}-default"},
            "tolerations": [
                {
                    "key": "recc.io/cluster",
                    "operator": "Equal",
                    "value": name,
                    "effect": "NoSchedule",
                }
            ],
        }
    custom.create_namespaced_custom_object(*DASK, name, "daskclusters", cluster)

    def scheduler_pod() -> Any:
        pods = core.list_namespaced_pod(name, label_selector="dask.org/component=scheduler")
        return pods.items[0] if pods.items else None

    pending = wait_for(lambda: (p := scheduler_pod()) and p.status.message and p)
    assert pending.status.phase == "Pending"
    assert "node selector" in pending.status.message
    assert platform.processes() == []

    boto3.client("eks").create_nodegroup(
        clusterName=platform.eks_cluster_name,
        nodegroupName=f"{name}-default",
        nodeRole=platform.node_role_arn,
        subnets=list(platform.subnets),
        scalingConfig={"minSize": 1, "desiredSize": 1, "maxSize": 1},
        labels={"recc.io/nodegroup": f"{name}-default"},
        taints=[{"key": "recc.io/cluster", "value": name, "effect": "NO_SCHEDULE"}],
    )
    port = scheduler_port(core, name, require_ingress=False)
    svc = core.read_namespaced_service(f"{name}-scheduler", name)
    assert not (svc.status and svc.status.load_balancer and svc.status.load_balancer.ingress)
    pod = wait_for(lambda: (p := scheduler_pod()) and p.status.phase == "Running" and p)
    assert pod.spec.node_name == f"{name}-default-node-0"

    forward = PortForwarder(kubernetes_opener(platform.api_client(), name, pod.metadata.name, port))
    try:
        with Client(f"tls://127.0.0.1:{forward.port}", security=tls.security(), timeout=30) as c:
            c.wait_for_workers(1, timeout=60)
            assert c.submit(sum, [1, 2, 3]).result(timeout=60) == 6
    finally:
        forward.stop()
    core.delete_namespace(name)
    wait_for(lambda: platform.processes() == [], what="processes of the deleted namespace")
    boto3.client("eks").delete_nodegroup(
        clusterName=platform.eks_cluster_name, nodegroupName=f"{name}-default"
    )


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


def test_an_idle_scheduler_exits_and_its_dask_cluster_is_deleted(platform, apis, tmp_path: Path):
    """spec.idleTimeout: the scheduler stops itself when idle, and the DaskCluster goes with
    it, as the operator's autoshutdown does; the Service and worker group are collected."""
    core, custom = apis
    name = "emu-idle"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_secret(name, tls_secret(name, create_cluster_tls(name, tmp_path)))
    cluster = dask_cluster(name, 0, [])
    cluster["spec"]["idleTimeout"] = 2
    custom.create_namespaced_custom_object(*DASK, name, "daskclusters", cluster)
    wait_for(lambda: platform.processes(), what="the scheduler to start")

    def gone() -> bool:
        try:
            custom.get_namespaced_custom_object(*DASK, name, "daskclusters", name)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, what="the idle cluster's DaskCluster to be deleted")
    wait_for(lambda: platform.processes() == [], what="the idle scheduler to be gone")
    assert core.list_namespaced_service(name).items == []
    assert custom.list_namespaced_custom_object(*DASK, name, "daskworkergroups")["items"] == []
    core.delete_namespace(name)
