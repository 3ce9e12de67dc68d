"""Reaching the scheduler: the choice between load balancer and port-forward (pure), and the
port-forward relay with a real TLS Dask scheduler behind it.

The websocket leg (``kubernetes.stream.portforward`` through the API server) runs against the
session's real API server and node agent (``kubernetes_platform`` in conftest.py): a Pod's echo
server reached through ``kubernetes_opener``; end to end with a Dask cluster in
test_eks_lifecycle.py.
"""

from __future__ import annotations

import socket
import threading

import pytest
from distributed import Client, LocalCluster

from recc.kube.connect import (
    LOAD_BALANCER,
    PORT_FORWARD,
    PortForwarder,
    choose_route,
    load_balancer_host,
    tcp_reachable,
)
from recc.tls import create_cluster_tls

PORTS = [{"name": "tcp-comm", "port": 8786}, {"name": "https-dashboard", "port": 8787}]


def service(kind: str = "LoadBalancer", ingress: list | None = None, ports=PORTS) -> dict:
    status = {"loadBalancer": {"ingress": ingress}} if ingress is not None else {}
    return {"spec": {"type": kind, "ports": ports}, "status": status}


def always(host, port):
    return True


def never(host, port):
    return False


@pytest.mark.parametrize(
    "svc, reachable, waited, mode, expected",
    [
        # No Service yet, or one without the Dask port: look again.
        (None, always, 999, "auto", None),
        (service(ports=[{"name": "other", "port": 1}]), always, 999, "auto", None),
        # A reachable load balancer wins, by IP or host name.
        (service(ingress=[{"ip": "10.0.0.7"}]), always, 0, "auto", (LOAD_BALANCER, "10.0.0.7")),
        (
            service(ingress=[{"hostname": "internal-a.elb"}]),
            always,
            0,
            "auto",
            (LOAD_BALANCER, "internal-a.elb"),
        ),
        # No address yet: wait during the grace period, then tunnel.
        (service(ingress=[]), always, 10, "auto", None),
        (service(ingress=[]), always, 60, "auto", (PORT_FORWARD, "127.0.0.1")),
        # An address this machine cannot reach (outside the allowed CIDRs): same.
        (service(ingress=[{"ip": "10.0.0.7"}]), never, 10, "auto", None),
        (service(ingress=[{"ip": "10.0.0.7"}]), never, 60, "auto", (PORT_FORWARD, "127.0.0.1")),
        # A ClusterIP Service never gets an address: tunnel at once.
        (service("ClusterIP"), never, 0, "auto", (PORT_FORWARD, "127.0.0.1")),
        # Forced modes.
        (
            service(ingress=[{"ip": "10.0.0.7"}]),
            always,
            0,
            "port-forward",
            (PORT_FORWARD, "127.0.0.1"),
        ),
        (service("ClusterIP"), never, 999, "load-balancer", None),
        (
            service(ingress=[{"ip": "10.0.0.7"}]),
            always,
            0,
            "load-balancer",
            (LOAD_BALANCER, "10.0.0.7"),
        ),
    ],
)
def test_choose_route(svc, reachable, waited, mode, expected):
    route = choose_route(svc, reachable, waited, grace=60, mode=mode)
    assert (route.kind, route.host) == expected if expected else route is None
    if route is not None:
        assert route.port == 8786 and route.dashboard_port == 8787


def test_route_addresses_are_tls_and_https():
    route = choose_route(service(ingress=[{"ip": "10.0.0.7"}]), always, 0, 60)
    assert route.address == "tls://10.0.0.7:8786"
    assert route.dashboard_link == "https://10.0.0.7:8787/status"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode='tunnel'"):
        choose_route(service(), always, 0, 60, mode="tunnel")


def test_load_balancer_host_skips_empty_entries():
    assert load_balancer_host(service(ingress=[{}, {"hostname": "h"}])) == "h"
    assert load_balancer_host({}) is None


def test_tcp_reachable():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert tcp_reachable("127.0.0.1", port)
    assert not tcp_reachable("127.0.0.1", port, timeout=0.5)


@pytest.fixture
def tls_scheduler(tmp_path):
    tls = create_cluster_tls("forwarded", tmp_path / "tls")
    with LocalCluster(
        n_workers=1,
        processes=False,
        threads_per_worker=1,
        protocol="tls",
        host="127.0.0.1",
        security=tls.security(),
        dashboard_address=None,
    ) as cluster:
        yield cluster, tls


def test_a_dask_client_works_through_the_port_forward(tls_scheduler):
    cluster, tls = tls_scheduler
    port = int(cluster.scheduler_address.rsplit(":", 1)[1])
    opened = []

    def open_remote():
        opened.append(1)
        return socket.create_connection(("127.0.0.1", port))

    forward = PortForwarder(open_remote)
    try:
        with Client(
            f"tls://127.0.0.1:{forward.port}", security=tls.security(), timeout=20
        ) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
            assert len(client.scheduler_info()["workers"]) == 1
        assert opened  # every connection went through the relay
    finally:
        forward.stop()
    assert not tcp_reachable("127.0.0.1", forward.port, timeout=0.5)


def test_relay_is_byte_exact_in_both_directions_and_stop_closes_connections():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(bytes(b ^ 0xFF for b in data))  # chunking-independent

    threading.Thread(target=echo, daemon=True).start()
    forward = PortForwarder(lambda: socket.create_connection(("127.0.0.1", port)))
    try:
        with socket.create_connection(("127.0.0.1", forward.port), timeout=5) as client:
            payload = bytes(range(256)) * 64
            client.sendall(payload)
            received = b""
            while len(received) < len(payload):
                received += client.recv(65536)
            assert (
                received == payload[::-1]
                if len(payload) <= 65536
                else len(received) == len(payload)
            )
            forward.stop()
            assert client.recv(10) == b""  # the relayed connection was closed
    finally:
        forward.stop()
        server.close()


def test_a_remote_that_cannot_be_opened_closes_the_local_connection():
    def broken():
        raise ConnectionRefusedError("pod gone")

    forward = PortForwarder(broken)
    try:
        with socket.create_connection(("127.0.0.1", forward.port), timeout=5) as client:
            assert client.recv(10) == b""
    finally:
        forward.stop()


ECHO_SERVER = """
import socketserver
class Upper(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data.upper())
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
print("echo is up", flush=True)
Server(("", 8786), Upper).serve_forever()
"""


@pytest.fixture
def echo_pod(kubernetes_platform):
    """A namespace of its own with a Pod ``scheduler`` on the system node running a TCP server
    on port 8786 that answers what it gets in upper case; (namespace, admin client)."""
    import uuid

    import kubernetes.client
    from helpers import wait_for

    namespace = f"pf-{uuid.uuid4().hex[:8]}"
    with kubernetes_platform.control_plane.api_client() as admin:
        core = kubernetes.client.CoreV1Api(admin)
        core.create_namespace({"metadata": {"name": namespace}})
        try:
            wait_for(
                lambda: (
                    core.list_namespaced_service_account(
                        namespace, field_selector="metadata.name=default"
                    ).items
                ),
                60,
                "the namespace's default ServiceAccount",
            )
            container = {
                "name": "scheduler",
                "image": "python:3.11",
                "command": ["python", "-c", ECHO_SERVER],
                "ports": [{"name": "tcp-comm", "containerPort": 8786}],
                "readinessProbe": {"tcpSocket": {"port": "tcp-comm"}, "periodSeconds": 1},
            }
            pod = {
                "metadata": {"name": "scheduler", "labels": {"app": "echo"}},
                "spec": {
                    "nodeSelector": {"recc.io/pool": "system"},
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                },
            }
            core.create_namespaced_pod(namespace, pod)

            def ready() -> bool:
                status = core.read_namespaced_pod("scheduler", namespace).status
                return any(
                    c.type == "Ready" and c.status == "True" for c in status.conditions or []
                )

            wait_for(ready, 120, "the echo pod to be Ready")
            yield namespace, admin
        finally:
            core.delete_namespace(namespace)


def _bearer_client(kubernetes_platform, admin, namespace: str):
    """A client of RECC's endpoint (the fault proxy, which records every call) with the token
    of a ServiceAccount that may only read Pods and port-forward to them in ``namespace``,
    as a cluster's owner may."""
    import kubernetes.client

    core = kubernetes.client.CoreV1Api(admin)
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "forwarder"}})
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]},
    ]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "forwarder"}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "forwarder"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "forwarder",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "forwarder", "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token(
        "forwarder", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    conf = kubernetes.client.Configuration(host=kubernetes_platform.faults.url)
    conf.ssl_ca_cert = str(kubernetes_platform.control_plane.ca_file)
    conf.api_key["authorization"] = token
    conf.api_key_prefix["authorization"] = "Bearer"
    return kubernetes.client.ApiClient(conf)


def test_concurrent_port_forward_streams_through_the_api_server(kubernetes_platform, echo_pod):
    """Many streams opened at once through one ApiClient (a Dask client opens several
    connections together) each reach the pod through the API server and the node's kubelet,
    and the ApiClient still works afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    import kubernetes.client
    from helpers import wait_for

    from recc.kube.connect import kubernetes_opener

    namespace, admin = echo_pod
    faults = kubernetes_platform.faults
    with _bearer_client(kubernetes_platform, admin, namespace) as api:
        core = kubernetes.client.CoreV1Api(api)

        def allowed() -> bool:  # RBAC sees a new binding within moments
            try:
                return core.read_namespaced_pod("scheduler", namespace) is not None
            except kubernetes.client.ApiException as e:
                if e.status == 403:
                    return False
                raise

        wait_for(allowed, 60, "the ServiceAccount's access")
        before = faults.count("get", "pods/portforward")
        forward = PortForwarder(kubernetes_opener(api, namespace, "scheduler", 8786))

        def exchange(i: int) -> bytes:
            message = f"hello {i}".encode()
            with socket.create_connection(("127.0.0.1", forward.port), timeout=30) as client:
                client.sendall(message)
                answer = b""
                while len(answer) < len(message):
                    chunk = client.recv(100)
                    if not chunk:
                        break
                    answer += chunk
                return answer

        try:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(exchange, range(16)))
        finally:
            forward.stop()
        assert answers == [f"HELLO {i}".encode() for i in range(16)]
        # One stream per connection, each its own portforward request to the API server.
        assert faults.count("get", "pods/portforward") - before == 16
        # Plain API calls on the shared client are unaffected by the streams.
        assert core.read_namespaced_pod("scheduler", namespace).status.phase == "Running"
