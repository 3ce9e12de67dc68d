"""Reaching a cluster's scheduler from outside the VPC: its load balancer, else a port-forward.

The dask-kubernetes operator exposes the scheduler as Service ``<cluster>-scheduler`` with the
ports ``tcp-comm`` (Dask, TLS) and ``https-dashboard`` (HTTPS). A client uses the load
balancer's address when the Service has one that answers; otherwise (a ClusterIP Service, or a
laptop outside the load balancer's allowed CIDRs) it tunnels through the Kubernetes API server
to the scheduler pod, like ``kubectl port-forward``. Either way the Dask traffic itself is
TLS with the cluster's own certificates.

:func:`choose_route` is the pure decision; :class:`PortForwarder` is the tunnel.

Example
-------
>>> svc = {"spec": {"type": "LoadBalancer", "ports": [{"name": "tcp-comm", "port": 8786}]},
...        "status": {"loadBalancer": {"ingress": [{"hostname": "internal-x.elb.amazonaws.com"}]}}}
>>> choose_route(svc, reachable=lambda host, port: True, waited=0, grace=60).address
'tls://internal-x.elb.amazonaws.com:8786'
>>> choose_route(svc, reachable=lambda host, port: False, waited=61, grace=60).kind
'port-forward'
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

COMM_PORT_NAME = "tcp-comm"
DASHBOARD_PORT_NAME = "https-dashboard"
LOAD_BALANCER, PORT_FORWARD = "load-balancer", "port-forward"
MODES = ("auto", LOAD_BALANCER, PORT_FORWARD)


def scheduler_service(cluster: str) -> str:
    """The name the operator gives the scheduler's Service."""
    return f"{cluster}-scheduler"


@dataclass(frozen=True)
class Route:
    """How to reach the scheduler: through its load balancer or a port-forward."""

    kind: str
    host: str
    port: int
    dashboard_port: int | None = None

    @property
    def address(self) -> str:
        return f"tls://{self.host}:{self.port}"

    @property
    def dashboard_link(self) -> str | None:
        # The scheduler serves its dashboard over HTTPS with the cluster's certificate.
        return f"https://{self.host}:{self.dashboard_port}/status" if self.dashboard_port else None


def service_ports(service: dict[str, Any]) -> dict[str, int]:
    """Port name -> port of a Service (``spec.ports``)."""
    return {p.get("name", ""): int(p["port"]) for p in (service.get("spec") or {}).get("ports", [])}


def load_balancer_host(service: dict[str, Any]) -> str | None:
    """The first ingress IP or host name of a Service's load balancer, if it has one yet."""
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    for entry in ingress:
        host = entry.get("ip") or entry.get("hostname")
        if host:
            return host
    return None


def choose_route(
    service: dict[str, Any] | None,
    reachable: Callable[[str, int], bool],
    waited: float,
    grace: float,
    mode: str = "auto",
) -> Route | None:
    """Which way to the scheduler, or None to look again later.

    - ``mode="port-forward"``: always tunnel (once the Service exists).
    - ``mode="load-balancer"``: the load balancer once its address answers; never tunnel.
    - ``mode="auto"``: the load balancer when its address answers; a tunnel when the Service
      has no load balancer at all, or when ``grace`` seconds passed without a reachable one.

    A port-forward route's ``host``/``port`` are the pod-side ones; the tunnel replaces them.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    if service is None:
        return None  # the operator has not made the Service yet
    ports = service_ports(service)
    if COMM_PORT_NAME not in ports:
        return None
    comm, dashboard = ports[COMM_PORT_NAME], ports.get(DASHBOARD_PORT_NAME)
    tunnel = Route(PORT_FORWARD, "127.0.0.1", comm, dashboard)
    if mode == PORT_FORWARD:
        return tunnel
    host = load_balancer_host(service)
    if host is not None and reachable(host, comm):
        return Route(LOAD_BALANCER, host, comm, dashboard)
    if mode == LOAD_BALANCER:
        return None
    is_load_balancer = (service.get("spec") or {}).get("type") == "LoadBalancer"
    return tunnel if not is_load_balancer or waited >= grace else None


def tcp_reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kubernetes_opener(
    api: Any, namespace: str, pod: str | Callable[[Any], str], port: int
) -> Callable[[], Any]:
    """A function opening one stream to ``pod:port`` through the API server's portforward
    subresource (a websocket, as ``kubectl port-forward`` does).

    ``pod``: a pod's name, or a function of an ``ApiClient`` that names the pod to reach now
    (asked for each stream, so a forward follows a pod its Deployment replaced, where
    ``kubectl port-forward`` stays with the pod it started on).

    Each stream gets its own ``ApiClient`` over ``api``'s configuration: the client's
    ``portforward`` swaps the ApiClient's ``call_api`` while it connects, so streams opened
    at once (a Dask client opens several connections together) must not share one.
    """
    configuration = api.configuration

    def open_stream() -> Any:
        import kubernetes.client
        from kubernetes.stream import portforward

        client = kubernetes.client.ApiClient(configuration)
        name = pod if isinstance(pod, str) else pod(client)
        core = kubernetes.client.CoreV1Api(client)
        forward = portforward(
            core.connect_get_namespaced_pod_portforward, name, namespace, ports=str(port)
        )
        return forward.socket(port)

    return open_stream


def _close_quietly(sock: Any) -> None:
    """Close ``sock`` after reading what is pending: closing a socket with unread data resets
    the connection, and the kubernetes client's port-forward thread reports a reset on its
    side of the stream as an unhandled exception."""
    try:
        sock.setblocking(False)
        while sock.recv(65536):
            pass
    except OSError:
        pass  # nothing pending (BlockingIOError), or already closed
    try:
        sock.close()
    except OSError:
        pass


class PortForwarder:
    """Listen on ``127.0.0.1:<free port>`` and relay every connection to a remote stream.

    ``open_remote()`` returns a connected socket-like object per accepted connection (see
    :func:`kubernetes_opener`). The relay runs in daemon threads until :meth:`stop`.
    """

    def __init__(self, open_remote: Callable[[], Any], name: str = "port-forward"):
        self._open_remote = open_remote
        self._name = name
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stopping = threading.Event()
        self._open: set[Any] = set()
        self._lock = threading.Lock()
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name=name, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                local, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed by stop()
            threading.Thread(
                target=self._relay, args=(local,), name=f"{self._name}-relay", daemon=True
            ).start()

    def _relay(self, local: socket.socket) -> None:
        try:
            remote = self._open_remote()
        except Exception as e:  # noqa: BLE001 - reported, and the client sees a closed socket
            logger.warning("%s: cannot open the remote stream: %s", self._name, e)
            local.close()
            return
        with self._lock:
            self._open.update((local, remote))
        try:
            peers = {local: remote, remote: local}
            while not self._stopping.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.5)
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    peers[source].sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._open.difference_update((local, remote))
            for sock in (local, remote):
                _close_quietly(sock)

    def stop(self) -> None:
        """Stop listening and close every relayed connection."""
        self._stopping.set()
        try:
            # shutdown wakes the thread blocked in accept(); close alone would not on Linux.
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            still_open = list(self._open)
        for sock in still_open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)
