"""The node agent: what cannot run here (kubelets, container runtime, kube-proxy, cloud load
balancers), played with local processes against the real control plane.

One agent stands for every worker node of the platform:

- :class:`~recc.testing.nodes.NodeSync` registers a Node per EC2 instance of each EKS managed
  node group in moto (capacity, the EKS AMI's allocatable, labels, taints) and keeps its Lease;
- :class:`~recc.testing.pods.PodRunner` runs the Pods the real scheduler binds to those Nodes
  as local processes and reports their status;
- :mod:`recc.testing.services` makes Services reachable by name from Pods and gives
  LoadBalancer Services an address;
- ``recc-kubelet`` (Go, the kubelet's own streaming library) serves the kubelet API the API
  server calls for ``kubectl logs`` and ``kubectl port-forward``.

It reconciles every ``interval`` seconds in one thread (level-triggered: every round reads
Nodes, Pods, Services and EndpointSlices afresh), until :meth:`NodeAgent.stop`, which stops
every process it started.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from recc.errors import BackendError
from recc.procs import start_detached
from recc.testing.nodes import NodegroupView, NodeSync
from recc.testing.pods import PodRunner
from recc.testing.services import (
    AddressPool,
    Listener,
    Relay,
    hosts_lines,
    ready_targets,
)

logger = logging.getLogger(__name__)


def _loopback_range(low: int, high: int) -> ipaddress.IPv4Network:
    """A /16 of loopback chosen at random in 127.low-high.0.0: two agents on one machine (a
    test session's and a served platform's) rarely pick the same one."""
    return ipaddress.ip_network(f"127.{random.randint(low, high)}.0.0/16")


def _json(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


class NodeAgent:
    """Nodes, Pods and Services for the control plane behind ``api`` (an administrator's
    client: the agent stands for every kubelet and kube-proxy at once).

    ``nodegroups`` lists the node groups whose instances should exist (from moto);
    ``kubelet_tls`` is (certificate, key, client CA) for the kubelet server.
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        directory: Path,
        kubelet_binary: Path,
        kubelet_tls: tuple[Path, Path, Path],
        api_server: tuple[str, int],
        nodegroups: Callable[[], list[NodegroupView]],
        region: str,
        interval: float = 0.3,
    ) -> None:
        self.api = api
        self.directory = directory
        self.core = kubernetes.client.CoreV1Api(api)
        self._api_server = api_server
        self._kubelet_binary = kubelet_binary
        self._kubelet_tls = kubelet_tls
        self.kubelet_port = 0
        self._kubelet: subprocess.Popen[bytes] | None = None
        self.nodes = NodeSync(api, nodegroups, region, lambda: self.kubelet_port)
        self._addresses = AddressPool(_loopback_range(16, 127))  # Pods
        self._virtual = AddressPool(_loopback_range(128, 254))  # Services
        self._hosts = ""
        self.pods = PodRunner(
            api, directory / "pods", self._addresses, api_server, lambda: self._hosts
        )
        self._relay = Relay()
        self._interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0

    def start(self) -> NodeAgent:
        """Start the kubelet server and the reconcile thread (after one full round)."""
        (self.directory / "pods").mkdir(parents=True, exist_ok=True)
        self._start_kubelet()
        self._relay.start()
        self.sync()
        self._thread = threading.Thread(target=self._run, name="recc-node-agent", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reconciling, every Pod's processes, the relays and the kubelet server."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.pods.stop()
        self._relay.stop()
        if self._kubelet is not None and self._kubelet.poll() is None:
            self._kubelet.terminate()
            try:
                self._kubelet.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kubelet.kill()
                self._kubelet.wait()

    def _start_kubelet(self) -> None:
        cert, key, client_ca = self._kubelet_tls
        port_file = self.directory / "kubelet.port"
        port_file.unlink(missing_ok=True)
        self._kubelet = start_detached(
            [
                str(self._kubelet_binary),
                "--listen=127.0.0.1:0",
                f"--port-file={port_file}",
                f"--tls-cert-file={cert}",
                f"--tls-private-key-file={key}",
                f"--client-ca-file={client_ca}",
                f"--pods-dir={self.directory / 'pods'}",
                "--exit-with-parent",
            ],
            self.directory / "recc-kubelet.log",
            dict(os.environ),
            tied=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if port_file.is_file() and port_file.read_text().strip():
                self.kubelet_port = int(port_file.read_text())
                return
            if self._kubelet.poll() is not None:
                break
            time.sleep(0.05)
        raise BackendError(f"recc-kubelet did not start; see {self.directory / 'recc-kubelet.log'}")

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.sync()
                self._failures = 0
            except (ApiException, HTTPError, OSError) as e:
                self._failures += 1
                if self._failures in (1, 10) or self._failures % 100 == 0:
                    logger.warning("node agent round failed (%d in a row): %s", self._failures, e)
            except Exception:  # keep the platform alive: one bad round must not end it
                logger.exception("node agent round failed")

    def sync(self) -> None:
        """One round: Nodes, then Services (so new Pods see current names), then Pods."""
        self.nodes.sync()
        pods = _json(
            self.core.list_pod_for_all_namespaces(
                field_selector="spec.nodeName!=", _preload_content=False
            )
        )["items"]
        mine = [p for p in pods if p["spec"].get("nodeName") in self.nodes.names]
        self._sync_services(mine)
        self.pods.sync(mine)

    def _sync_services(self, pods: list[dict[str, Any]]) -> None:
        services = _json(self.core.list_service_for_all_namespaces(_preload_content=False))
        names: dict[tuple[str, str], str] = {}
        listeners: list[Listener] = []
        live = set()
        for service in services["items"]:
            meta = service["metadata"]
            key = (meta["namespace"], meta["name"])
            live.add(meta["uid"])
            address = self._virtual.get(meta["uid"])
            names[key] = address
            if key == ("default", "kubernetes"):  # no selector: its endpoint is the API server
                targets = {int(p["port"]): (self._api_server,) for p in service["spec"]["ports"]}
            else:
                targets = ready_targets(service, pods)
            # No ready endpoint, no listener: a connection is refused, as kube-proxy rejects it.
            listeners += [
                Listener(address, port, found) for port, found in targets.items() if found
            ]
            if service["spec"].get("type") == "LoadBalancer":
                self._publish_load_balancer(service, address)
        for uid in self._virtual.keys() - live:
            self._virtual.release(uid)
        self._relay.apply(listeners)
        hosts = hosts_lines(names)
        if hosts != self._hosts:
            self._hosts = hosts
            self.pods.hosts_changed()

    def _publish_load_balancer(self, service: dict[str, Any], address: str) -> None:
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        if ingress == [{"ip": address, "ipMode": "VIP"}] or ingress == [{"ip": address}]:
            return
        self.core.patch_namespaced_service_status(
            service["metadata"]["name"],
            service["metadata"]["namespace"],
            {"status": {"loadBalancer": {"ingress": [{"ip": address}]}}},
        )
