"""What a platform engineer would check of the test Kubernetes platform before trusting it: the
session's real control plane with the node agent (``kubernetes_platform`` in conftest.py),
driven with kubectl and the API as they would drive an EKS cluster.

Containers run on this machine's Python (the agent ignores images; the field is required), so
every container here is ``python -c ...``. Each test works in namespaces of its own, deleted
when it ends, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import psutil
import pytest
import yaml
from helpers import wait_for
from kubernetes.client.exceptions import ApiException

IMAGE = "python:3.11"
SYSTEM_NODE = {"recc.io/pool": "system"}
WAIT = 120.0  # seconds: the bound of every wait for the platform to act

# A small HTTP server: says it is up on its output, then answers every GET with its greeting.
WEB_SERVER = """
import http.server, os, sys
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["GREETING"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.HTTPServer(("", 8080), Hello)
print("web is up on 8080", flush=True)
server.serve_forever()
"""


def unique(prefix: str = "kp") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def delete_namespace(core: kubernetes.client.CoreV1Api, name: str) -> None:
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


def create_namespace(core: kubernetes.client.CoreV1Api, name: str) -> str:
    """Create ``name`` and wait for its default ServiceAccount (Pods are refused before it)."""
    core.create_namespace({"metadata": {"name": name}})
    wait_for(
        lambda: (
            core.list_namespaced_service_account(name, field_selector="metadata.name=default").items
        ),
        WAIT,
        f"the default ServiceAccount of {name}",
    )
    return name


@pytest.fixture
def admin(kubernetes_platform) -> Iterator[kubernetes.client.ApiClient]:
    with kubernetes_platform.control_plane.api_client() as client:
        yield client


@pytest.fixture
def core(admin) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(admin)


def fresh_namespace(core) -> Iterator[str]:
    """A fresh namespace, deleted when the test ends."""
    name = unique()
    try:
        yield create_namespace(core, name)
    finally:
        delete_namespace(core, name)


namespace = pytest.fixture(fresh_namespace, name="namespace")
other_namespace = pytest.fixture(fresh_namespace, name="other_namespace")


def kubectl_env(kubernetes_platform) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBECONFIG")}
    env["KUBECONFIG"] = str(kubernetes_platform.kubeconfig)
    return env


def kubectl(
    kubernetes_platform, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(kubernetes_platform.control_plane.binaries["kubectl"]), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=kubectl_env(kubernetes_platform),
        timeout=WAIT + 30,
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done


class Streaming:
    """A long-running kubectl (``get -w``, ``port-forward``) whose output lines are read in a
    thread; :meth:`line` waits a bounded time for a line that matches."""

    def __init__(self, kubernetes_platform, *args: str) -> None:
        self.process = subprocess.Popen(
            [str(kubernetes_platform.control_plane.binaries["kubectl"]), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=kubectl_env(kubernetes_platform),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def line(self, pattern: str, timeout: float = WAIT, limit: int = 200) -> re.Match[str]:
        """The first line (of at most ``limit``) matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < limit:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"kubectl ended; its output: {self.seen}")
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r} in {self.seen}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def pod(
    name: str,
    code: str,
    *,
    restart: str = "Always",
    labels: dict[str, str] | None = None,
    ports: list[int] = (),
    **container: Any,
) -> dict[str, Any]:
    """A Pod of one ``python -c code`` container on the system node."""
    spec: dict[str, Any] = {
        "name": "main",
        "image": IMAGE,
        "command": ["python", "-c", code],
        **container,
    }
    if ports:
        spec["ports"] = [{"containerPort": p} for p in ports]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "restartPolicy": restart,
            "nodeSelector": SYSTEM_NODE,
            "terminationGracePeriodSeconds": 5,
            "containers": [spec],
        },
    }


def wait_phase(
    core: kubernetes.client.CoreV1Api, namespace: str, name: str, *phases: str
) -> kubernetes.client.V1Pod:
    def reached() -> kubernetes.client.V1Pod | None:
        found = core.read_namespaced_pod(name, namespace)
        return found if found.status.phase in phases else None

    return wait_for(reached, WAIT, f"pod {namespace}/{name} to be {' or '.join(phases)}")


def wait_ready(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> None:
    def ready() -> bool:
        conditions = core.read_namespaced_pod(name, namespace).status.conditions or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    wait_for(ready, WAIT, f"pod {namespace}/{name} to be Ready")


def no_proxy_open(url: str, timeout: float = 10) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as answer:
        return answer.read()


# -- kubectl ----------------------------------------------------------------------------------


def web_manifests(namespace: str) -> str:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "nodeSelector": SYSTEM_NODE,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [
                        {
                            "name": "web",
                            "image": IMAGE,
                            "command": ["python", "-c", WEB_SERVER],
                            "env": [{"name": "GREETING", "value": "hello from web"}],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }
    return yaml.safe_dump_all([deployment, service])


@pytest.fixture(scope="module")
def web(kubernetes_platform, tmp_path_factory) -> Iterator[str]:
    """A namespace made with ``kubectl create ns`` holding a Deployment and a Service applied
    with ``kubectl apply -f``; its name."""
    name = unique("kp-web")
    manifest = tmp_path_factory.mktemp("web") / "web.yaml"
    manifest.write_text(web_manifests(name))
    try:
        created = kubectl(kubernetes_platform, "create", "ns", name)
        assert created.stdout.strip() == f"namespace/{name} created"
        applied = kubectl(kubernetes_platform, "apply", "-f", str(manifest))
        assert applied.stdout.split("\n")[:2] == [
            "deployment.apps/web created",
            "service/web created",
        ]
        yield name
    finally:
        kubectl(kubernetes_platform, "delete", "ns", name, "--wait=false", check=False)


def test_kubectl_get_pods_watch_shows_the_pod_go_running(kubernetes_platform, web) -> None:
    watch = Streaming(kubernetes_platform, "get", "pods", "-n", web, "-w")
    try:
        found = watch.line(r"^(web-\S+)\s+\d/\d\s+Running\s")
    finally:
        watch.stop()
    assert found.group(1).startswith("web-")
    assert watch.seen[0].split()[:3] == ["NAME", "READY", "STATUS"]


def wait_available(kubernetes_platform, namespace: str) -> subprocess.CompletedProcess[str]:
    wait = ["wait", "-n", namespace, "--for=condition=Available", f"--timeout={WAIT:.0f}s"]
    return kubectl(kubernetes_platform, *wait, "deployment/web")


def test_kubectl_waits_for_the_deployment_to_be_available(kubernetes_platform, web) -> None:
    done = wait_available(kubernetes_platform, web)
    assert done.stdout.strip() == "deployment.apps/web condition met"
    ready = kubectl(
        kubernetes_platform, "get", "deployment", "web", "-n", web, "-o", "jsonpath={.status}"
    )
    assert json.loads(ready.stdout)["availableReplicas"] == 1


def test_kubectl_logs_returns_the_containers_output(kubernetes_platform, web) -> None:
    wait_available(kubernetes_platform, web)
    logs = kubectl(kubernetes_platform, "logs", "-n", web, "deployment/web")
    assert "web is up on 8080" in logs.stdout.splitlines()


def test_kubectl_port_forward_reaches_the_pod(kubernetes_platform, web) -> None:
    wait_available(kubernetes_platform, web)
    # Through the Service: kubectl maps its port 80 to the Pod's targetPort (named http: 8080).
    forward = Streaming(kubernetes_platform, "port-forward", "-n", web, "svc/web", ":80")
    try:
        port = int(forward.line(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080").group(1))
        assert no_proxy_open(f"http://127.0.0.1:{port}/") == b"hello from web"
        assert no_proxy_open(f"http://127.0.0.1:{port}/again") == b"hello from web"
    finally:
        forward.stop()


def test_auth_can_i_says_no_for_a_user_without_bindings(kubernetes_platform, namespace) -> None:
    admin = kubectl(kubernetes_platform, "auth", "can-i", "create", "pods", "-n", namespace)
    assert admin.stdout.strip() == "yes"
    nobody = unique("nobody")
    for verb, resource in (("create", "pods"), ("get", "secrets"), ("list", "namespaces")):
        done = kubectl(
            kubernetes_platform,
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            namespace,
            "--as",
            nobody,
            check=False,
        )
        # "no", then the authorizers' reason when one gave it.
        assert (done.returncode, done.stdout.split()[:1]) == (1, ["no"]), (verb, resource, done)


def test_a_client_certificate_user_without_rbac_is_refused(
    kubernetes_platform, namespace, tmp_path
) -> None:
    stranger = unique("stranger")
    with kubernetes_platform.control_plane.api_client(user=stranger) as client:
        with pytest.raises(ApiException) as refused:
            kubernetes.client.CoreV1Api(client).list_namespaced_pod(namespace)
    assert refused.value.status == 403
    status = json.loads(refused.value.body)
    assert status["reason"] == "Forbidden"
    assert f'User "{stranger}" cannot list resource "pods"' in status["message"]

    config = kubernetes_platform.control_plane.kubeconfig(tmp_path / "stranger", stranger)
    done = subprocess.run(
        [str(kubernetes_platform.control_plane.binaries["kubectl"]), "get", "pods", "-n",
         namespace],
        capture_output=True,
        text=True,
        env={**kubectl_env(kubernetes_platform), "KUBECONFIG": str(config)},
        timeout=WAIT,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Forbidden" in done.stderr and stranger in done.stderr


# -- Pods ---------------------------------------------------------------------------------------


def test_env_expansion_and_a_secret_volume_reach_the_container(core, namespace) -> None:
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t-value"}}
    )
    code = """
import json, os, sys
path = "/etc/kp-secret/token"
try:
    open(path, "a").close()
    writable = True
except OSError:
    writable = False
print(json.dumps({
    "env": {k: os.environ.get(k) for k in ("MESSAGE", "ESCAPED", "UNKNOWN", "POD", "TOKEN")},
    "argv": sys.argv[1:],
    "file": open(path).read(),
    "writable": writable,
}))
"""
    env = [
        {"name": "GREETING", "value": "hello"},
        {"name": "NAME", "value": "world"},
        {"name": "MESSAGE", "value": "$(GREETING), $(NAME)"},
        {"name": "ESCAPED", "value": "$$(NAME)"},
        {"name": "UNKNOWN", "value": "$(NOT_DEFINED)"},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
        },
    ]
    manifest = pod(
        "printer",
        code,
        restart="Never",
        env=env,
        volumeMounts=[{"name": "creds", "mountPath": "/etc/kp-secret", "readOnly": True}],
    )
    manifest["spec"]["containers"][0]["command"].append("$(MESSAGE)!")
    manifest["spec"]["volumes"] = [{"name": "creds", "secret": {"secretName": "creds"}}]
    core.create_namespaced_pod(namespace, manifest)

    done = wait_phase(core, namespace, "printer", "Succeeded", "Failed")
    log = core.read_namespaced_pod_log("printer", namespace)
    assert done.status.phase == "Succeeded", log
    printed = json.loads(log.strip().splitlines()[-1])
    assert printed["env"] == {
        "MESSAGE": "hello, world",
        "ESCAPED": "$(NAME)",
        "UNKNOWN": "$(NOT_DEFINED)",
        "POD": "printer",
        "TOKEN": "s3cr3t-value",
    }
    assert printed["argv"] == ["hello, world!"]
    assert printed["file"] == "s3cr3t-value"
    assert printed["writable"] is False
    assert not Path("/etc/kp-secret").exists()  # mounted in the container's view only


def test_a_service_name_resolves_from_a_pod_in_another_namespace(
    core, namespace, other_namespace
) -> None:
    server = pod(
        "echo",
        "import socketserver\n"
        "class Echo(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(b'echo: ' + self.rfile.readline())\n"
        "socketserver.TCPServer(('', 7000), Echo).serve_forever()\n",
        ports=[7000],
        readinessProbe={"tcpSocket": {"port": 7000}, "periodSeconds": 1},
    )
    core.create_namespaced_pod(namespace, server)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "echo"},
            "spec": {"selector": {"app": "echo"}, "ports": [{"port": 70, "targetPort": 7000}]},
        },
    )
    wait_ready(core, namespace, "echo")
    host = f"echo.{namespace}.svc.cluster.local"
    client = pod(
        "client",
        "import socket, sys, time\n"
        "deadline = time.monotonic() + 60\n"
        "while True:\n"  # the Service's listener may lag the Pod's readiness by a round
        "    try:\n"
        "        address = socket.gethostbyname(sys.argv[1])\n"
        "        with socket.create_connection((sys.argv[1], 70), timeout=5) as s:\n"
        "            s.sendall(b'ping\\n')\n"
        "            print(address, s.makefile().readline().strip(), flush=True)\n"
        "        break\n"
        "    except OSError as e:\n"
        "        if time.monotonic() > deadline:\n"
        "            raise\n"
        "        time.sleep(0.5)\n",
        restart="Never",
    )
    client["spec"]["containers"][0]["command"].append(host)
    core.create_namespaced_pod(other_namespace, client)

    done = wait_phase(core, other_namespace, "client", "Succeeded", "Failed")
    log = core.read_namespaced_pod_log("client", other_namespace).strip()
    assert done.status.phase == "Succeeded", log
    address, answer = log.splitlines()[-1].split(" ", 1)
    assert answer == "echo: ping"
    assert address.startswith("127.")  # the Service's address, not the Pod's
    assert address != core.read_namespaced_pod("echo", namespace).status.pod_ip
    # A name that is no Service does not resolve (there is no other DNS).
    assert not _resolves_in_pod(core, other_namespace, f"nope.{namespace}.svc.cluster.local")


def _resolves_in_pod(core: kubernetes.client.CoreV1Api, namespace: str, host: str) -> bool:
    probe = pod(
        "resolver",
        "import socket, sys\n"
        "try:\n"
        "    socket.gethostbyname(sys.argv[1])\n"
        "    print('resolved')\n"
        "except OSError:\n"
        "    print('unresolved')\n",
        restart="Never",
    )
    probe["spec"]["containers"][0]["command"].append(host)
    core.create_namespaced_pod(namespace, probe)
    wait_phase(core, namespace, "resolver", "Succeeded", "Failed")
    return core.read_namespaced_pod_log("resolver", namespace).strip() == "resolved"


def test_a_pod_that_exits_3_without_restarts_ends_failed_with_exit_code_3(core, namespace) -> None:
    core.create_namespaced_pod(
        namespace,
        pod("quitter", "import sys; print('leaving', flush=True); sys.exit(3)", restart="Never"),
    )
    done = wait_phase(core, namespace, "quitter", "Failed", "Succeeded")
    assert done.status.phase == "Failed"
    (status,) = done.status.container_statuses
    assert status.state.terminated.exit_code == 3
    assert status.state.terminated.reason == "Error"
    assert status.restart_count == 0
    assert core.read_namespaced_pod_log("quitter", namespace).strip() == "leaving"


def test_a_pod_the_agent_cannot_start_waits_and_holds_up_no_other_pod(core, namespace) -> None:
    """No command and an image whose entrypoint the agent does not know: the Pod waits in
    ContainerCreating saying so (a kubelet would run the image's entrypoint), and Pods after it
    still run."""
    unknown = pod("unknown", "unused", restart="Never")
    del unknown["spec"]["containers"][0]["command"]
    unknown["spec"]["containers"][0]["image"] = "busybox:1.36"
    core.create_namespaced_pod(namespace, unknown)

    def waiting_message() -> str | None:
        statuses = core.read_namespaced_pod("unknown", namespace).status.container_statuses
        waiting = statuses and statuses[0].state.waiting
        return waiting.message if waiting and waiting.message else None

    message = wait_for(waiting_message, WAIT, "the Pod's waiting reason")
    assert "neither command nor args" in message and "busybox:1.36" in message

    core.create_namespaced_pod(namespace, pod("after", "print('ran')", restart="Never"))
    assert wait_phase(core, namespace, "after", "Succeeded", "Failed").status.phase == "Succeeded"
    assert core.read_namespaced_pod("unknown", namespace).status.phase == "Pending"


def test_deleting_a_namespace_terminates_it_stops_its_pods_and_then_it_is_gone(
    kubernetes_platform, core, namespace
) -> None:
    agent = kubernetes_platform.agent
    core.create_namespaced_pod(
        namespace, pod("sleeper", "import time; print('up', flush=True); time.sleep(3600)")
    )
    wait_phase(core, namespace, "sleeper", "Running")
    started = wait_for(
        lambda: [pid for ns, name, pid in agent.pods.running() if ns == namespace],
        WAIT,
        "the sleeper's process",
    )

    # The container's processes: what the agent started and what that started (the command).
    def container_processes() -> list[psutil.Process]:
        found = [p for pid in started for p in _with_children(pid)]
        return found if any("time.sleep(3600)" in _command(p) for p in found) else []

    processes = wait_for(container_processes, WAIT, "the container's command to run")
    # A finalizer of ours holds the namespace in Terminating until the test lets it go.
    hold = {"metadata": {"name": "hold", "finalizers": ["kp.test/hold"]}}
    core.create_namespaced_config_map(namespace, hold)
    try:
        core.delete_namespace(namespace)
        terminating = core.read_namespace(namespace)
        assert terminating.status.phase == "Terminating"
        assert terminating.metadata.deletion_timestamp is not None

        wait_for(
            lambda: not [p for p in agent.pods.running() if p[0] == namespace],
            WAIT,
            "the agent to stop the namespace's containers",
        )
        wait_for(
            lambda: not any(_alive(p) for p in processes), WAIT, "the container's processes to end"
        )
        wait_for(
            lambda: not core.list_namespaced_pod(namespace).items,
            WAIT,
            "the namespace's pods to be gone",
        )
        assert core.read_namespace(namespace).status.phase == "Terminating"  # our finalizer
    finally:
        _release(core, namespace, "hold")
    wait_for(lambda: _gone(core, namespace), WAIT, f"namespace {namespace} to be gone")


def _with_children(pid: int) -> list[psutil.Process]:
    try:
        process = psutil.Process(pid)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def _release(core: kubernetes.client.CoreV1Api, namespace: str, config_map: str) -> None:
    try:
        core.patch_namespaced_config_map(config_map, namespace, {"metadata": {"finalizers": None}})
    except ApiException as e:
        if e.status != 404:
            raise


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(core: kubernetes.client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespace(namespace)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def test_a_resource_quota_refuses_a_pod_over_it(core, namespace) -> None:
    core.create_namespaced_resource_quota(
        namespace, {"metadata": {"name": "small"}, "spec": {"hard": {"requests.memory": "64Mi"}}}
    )
    # The quota controller fills in status.hard; until then admission refuses every Pod.
    wait_for(
        lambda: core.read_namespaced_resource_quota("small", namespace).status.hard or {},
        WAIT,
        "the quota's status",
    )

    def sized(name: str, memory: str) -> dict[str, Any]:
        return pod(name, "print('ok')", restart="Never",
                   resources={"requests": {"memory": memory}})  # fmt: skip

    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(namespace, sized("big", "128Mi"))
    assert refused.value.status == 403
    status = json.loads(refused.value.body)
    assert status["reason"] == "Forbidden"
    assert "exceeded quota: small" in status["message"]
    assert "requested: requests.memory=128Mi" in status["message"]

    core.create_namespaced_pod(namespace, sized("small", "32Mi"))  # within the quota: admitted
    assert wait_phase(core, namespace, "small", "Succeeded", "Failed").status.phase == "Succeeded"


def test_delete_with_a_stale_uid_precondition_is_a_conflict(core, namespace) -> None:
    def config_map() -> str:
        made = core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "settings"}, "data": {"k": "v"}}
        )
        return made.metadata.uid

    def delete(uid: str) -> None:
        core.delete_namespaced_config_map(
            "settings",
            namespace,
            body=kubernetes.client.V1DeleteOptions(
                preconditions=kubernetes.client.V1Preconditions(uid=uid)
            ),
        )

    first = config_map()
    delete(first)
    second = config_map()  # the same name again: a new object, a new uid
    assert second != first

    with pytest.raises(ApiException) as conflict:
        delete(first)
    assert conflict.value.status == 409
    status = json.loads(conflict.value.body)
    assert status["reason"] == "Conflict"
    assert f"the UID in the precondition ({first}) does not match" in status["message"]
    assert core.read_namespaced_config_map("settings", namespace).metadata.uid == second

    delete(second)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("settings", namespace)
    assert gone.value.status == 404


SLOW_SERVER = """
import socket, time
time.sleep(4)  # a slow start: longer than the readiness probe's failures allow
server = socket.create_server(("0.0.0.0", 7100))
while True:
    server.accept()[0].close()
"""


def test_a_liveness_probe_waits_its_own_initial_delay(core, namespace) -> None:
    """Each probe runs on its own schedule: a liveness probe waits its initialDelaySeconds
    whatever the readiness probe does, so a slow starter is not killed while it starts."""
    slow = pod(
        "slow",
        SLOW_SERVER,
        ports=[7100],
        readinessProbe={"tcpSocket": {"port": 7100}, "periodSeconds": 1, "failureThreshold": 1},
        livenessProbe={
            "tcpSocket": {"port": 7100},
            "initialDelaySeconds": 30,
            "periodSeconds": 5,
            "failureThreshold": 1,
        },
    )
    core.create_namespaced_pod(namespace, slow)
    wait_ready(core, namespace, "slow")
    (status,) = core.read_namespaced_pod("slow", namespace).status.container_statuses
    assert status.restart_count == 0


def test_a_failing_liveness_probe_restarts_the_container(core, namespace) -> None:
    dead = pod(
        "deaf",
        "import time; time.sleep(600)",
        livenessProbe={"tcpSocket": {"port": 7101}, "periodSeconds": 1, "failureThreshold": 2},
    )
    core.create_namespaced_pod(namespace, dead)

    def restarts() -> int:
        statuses = core.read_namespaced_pod("deaf", namespace).status.container_statuses or []
        return statuses[0].restart_count if statuses else 0

    wait_for(lambda: restarts() >= 1, WAIT, "the container's restart")
    (status,) = core.read_namespaced_pod("deaf", namespace).status.container_statuses
    assert status.last_state.terminated.exit_code == 137
