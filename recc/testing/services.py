"""Services made reachable as a cluster would: the stand-in for kube-proxy and cluster DNS.

Every Service with a selector gets a virtual address on loopback (``127.x.y.z``, the stand-in
for its ClusterIP, which the API server allocates from a range no one routes here). The agent
listens there on each Service port and relays every connection to a ready Pod the Service
selects, at its target port — what kube-proxy's userspace mode did. A connection to a Service
without ready endpoints is refused, as in a cluster. Pods find Services by name through their
``/etc/hosts`` (``name.namespace``, ``name.namespace.svc``,
``name.namespace.svc.cluster.local``), which :func:`hosts_lines` writes. A ``LoadBalancer``
Service gets its virtual address as
``status.loadBalancer.ingress[0].ip`` — the address a client outside the cluster connects to,
as it would to a cloud load balancer.

Not modelled: session affinity, ``externalTrafficPolicy``, NodePorts, UDP, headless Services'
per-Pod records, ``loadBalancerSourceRanges`` (nothing outside this machine can connect).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Listener:
    """One Service port on its virtual address and the endpoints it relays to."""

    address: str
    port: int
    targets: tuple[tuple[str, int], ...]


def service_names(name: str, namespace: str) -> list[str]:
    """The names a Pod resolves a Service by.

    >>> service_names("c1-scheduler", "recc-c1")[-1]
    'c1-scheduler.recc-c1.svc.cluster.local'
    """
    base = f"{name}.{namespace}"
    return [base, f"{base}.svc", f"{base}.svc.{CLUSTER_DOMAIN}"]


def selects(service: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether ``service``'s selector picks ``pod`` (same namespace, every label equal).

    >>> svc = {"metadata": {"namespace": "a"}, "spec": {"selector": {"app": "x"}}}
    >>> selects(svc, {"metadata": {"namespace": "a", "labels": {"app": "x", "b": "c"}}})
    True
    """
    selector = (service.get("spec") or {}).get("selector")
    if not selector or pod["metadata"].get("namespace") != service["metadata"].get("namespace"):
        return False
    labels = pod["metadata"].get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def _serving(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return ready and bool(status.get("podIP")) and not pod["metadata"].get("deletionTimestamp")


def _target_port(pod: Mapping[str, Any], target: int | str) -> int | None:
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for container in pod["spec"].get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == target:
                return int(declared["containerPort"])
    return None


def ready_targets(
    service: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]
) -> dict[int, tuple[tuple[str, int], ...]]:
    """Service port -> the (address, target port) of every ready Pod it selects.

    The agent matches Pods itself rather than reading EndpointSlices: the API server refuses
    loopback addresses in EndpointSlices, and Pod addresses here are loopback ones.

    >>> svc = {"metadata": {"namespace": "a"}, "spec": {"selector": {"app": "s"},
    ...        "ports": [{"name": "tcp-comm", "port": 8786, "targetPort": "tcp-comm"}]}}
    >>> pod = {"metadata": {"namespace": "a", "labels": {"app": "s"}},
    ...        "spec": {"containers": [{"ports": [{"name": "tcp-comm", "containerPort": 8786}]}]},
    ...        "status": {"podIP": "127.1.0.2",
    ...                   "conditions": [{"type": "Ready", "status": "True"}]}}
    >>> ready_targets(svc, [pod])
    {8786: (('127.1.0.2', 8786),)}
    """
    chosen = [pod for pod in pods if selects(service, pod) and _serving(pod)]
    out = {}
    for port in (service.get("spec") or {}).get("ports") or []:
        targets = set()
        for pod in chosen:
            number = _target_port(pod, port.get("targetPort", port["port"]))
            if number is not None:
                targets.add((pod["status"]["podIP"], number))
        out[int(port["port"])] = tuple(sorted(targets))
    return out


def hosts_lines(services: Mapping[tuple[str, str], str]) -> str:
    """``/etc/hosts`` lines for Services: (namespace, name) -> virtual address.

    >>> print(hosts_lines({("recc-c1", "c1-scheduler"): "127.3.0.2"}), end="")
    127.3.0.2 c1-scheduler.recc-c1 c1-scheduler.recc-c1.svc c1-scheduler.recc-c1.svc.cluster.local
    """
    return "".join(
        f"{address} {' '.join(service_names(name, namespace))}\n"
        for (namespace, name), address in sorted(services.items())
    )


class AddressPool:
    """Loopback addresses handed out once per key (a Pod's or a Service's uid)."""

    def __init__(self, network: ipaddress.IPv4Network) -> None:
        self._free = itertools.islice(network.hosts(), 1, None)  # .0.1 stays unused
        self._given: dict[str, str] = {}
        self._returned: list[str] = []
        self._lock = threading.Lock()

    def get(self, key: str) -> str:
        with self._lock:
            if key not in self._given:
                self._given[key] = (
                    self._returned.pop(0) if self._returned else str(next(self._free))
                )
            return self._given[key]

    def release(self, key: str) -> None:
        with self._lock:
            address = self._given.pop(key, None)
            if address is not None:
                self._returned.append(address)

    def keys(self) -> set[str]:
        with self._lock:
            return set(self._given)


class Relay:
    """TCP listeners on virtual addresses, each relaying to its current targets; an asyncio
    loop in one daemon thread from :meth:`start` to :meth:`stop`."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: dict[tuple[str, int], asyncio.AbstractServer] = {}
        self._targets: dict[tuple[str, int], tuple[tuple[str, int], ...]] = {}
        self._turn = itertools.count()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="recc-service-relay", daemon=True
        )

    def start(self) -> Relay:
        self._thread.start()
        return self

    def stop(self) -> None:
        async def close_all() -> None:
            for server in self._servers.values():
                server.close()
            self._servers.clear()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def apply(self, listeners: Iterable[Listener]) -> None:
        """Listen exactly on ``listeners`` (opening new ones, closing the rest)."""
        wanted = {(entry.address, entry.port): entry.targets for entry in listeners}
        asyncio.run_coroutine_threadsafe(self._apply(wanted), self._loop).result(timeout=30)

    async def _apply(self, wanted: dict[tuple[str, int], tuple[tuple[str, int], ...]]) -> None:
        self._targets = wanted
        for key in list(self._servers.keys() - wanted.keys()):
            self._servers.pop(key).close()
        for key in wanted.keys() - self._servers.keys():
            address, port = key
            try:
                self._servers[key] = await asyncio.start_server(
                    lambda r, w, key=key: self._relay(key, r, w), address, port
                )
            except OSError as e:
                logger.warning("cannot listen on %s:%s for a Service: %s", address, port, e)

    async def _relay(
        self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        targets = self._targets.get(key) or ()
        if not targets:
            writer.close()  # no ready endpoint: refused, as kube-proxy rejects
            return
        host, port = targets[next(self._turn) % len(targets)]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
