"""Kubernetes Nodes for the EKS managed node groups that moto holds, as EKS would make them.

moto records node groups but boots nothing; :class:`NodeSync` plays the part of the instances
joining the cluster. Every ``interval`` seconds it reads the node groups of one EKS cluster
from moto's in-process state (no API call, so it neither shows up in recorded calls nor trips
injected failures) and makes the fake API server hold one Ready Node per desired instance of
each ACTIVE node group, labelled and tainted the way EKS labels and taints them. Nodes of a
node group that shrank or went away are removed.

:func:`desired_nodes` is the pure part: node groups in, Node objects out.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from recc.catalog import InstanceType, bundled_catalog
from recc.errors import SpecError
from recc.plan import NodeOverhead, allocatable
from recc.testing.fake_kube import FakeKubeError, FakeKubeServer

logger = logging.getLogger(__name__)

EKS_NODEGROUP_LABEL = "eks.amazonaws.com/nodegroup"
RECC_NODEGROUP_LABEL = "recc.io/nodegroup"
_EMULATED_LABEL = "recc.testing/emulated-node"
_EFFECTS = {
    "NO_SCHEDULE": "NoSchedule",
    "NO_EXECUTE": "NoExecute",
    "PREFER_NO_SCHEDULE": "PreferNoSchedule",
}
# What a node's kubelet keeps back is the AMI's reservation and eviction threshold; DaemonSet
# pods then use part of what is allocatable, so they are not subtracted here.
_KUBELET_ONLY = NodeOverhead(daemonset_cpu_m=0, daemonset_memory_mib=0, daemonset_pods=0)


@dataclass(frozen=True)
class NodegroupView:
    """What the Nodes of one managed node group depend on."""

    name: str
    status: str
    desired_size: int
    instance_type: str
    capacity_type: str = "ON_DEMAND"
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()


def moto_nodegroups(account_id: str, region: str, cluster: str) -> list[NodegroupView]:
    """The node groups of EKS cluster ``cluster`` in moto's in-process state (both
    ``mock_aws`` and a ``ThreadedMotoServer`` in this process keep them there)."""
    from moto.eks.models import eks_backends

    backend = eks_backends[account_id][region]
    found = backend.clusters.get(cluster)
    if found is None:
        return []
    return [
        NodegroupView(
            name=ng.nodegroup_name,
            status=ng.status,
            desired_size=int(ng.scaling_config.get("desiredSize", 0)),
            instance_type=(ng.instance_types or ["t3.medium"])[0],
            capacity_type=ng.capacity_type or "ON_DEMAND",
            labels=dict(ng.labels or {}),
            taints=tuple(dict(t) for t in ng.taints or ()),
        )
        for ng in list(found.nodegroups.values())
    ]


def node_name(nodegroup: str, index: int) -> str:
    """A DNS-1123 Node name for instance ``index`` of ``nodegroup``."""
    base = re.sub(r"[^a-z0-9-]", "-", nodegroup.lower()).strip("-") or "nodegroup"
    return f"{base[:240]}-node-{index}"


def desired_nodes(
    nodegroups: Iterable[NodegroupView],
    region: str,
    instance_types: Callable[[str], InstanceType | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Node objects by name: one Ready Node per desired instance of each ACTIVE node group.

    Labels: the node group's own labels, ``eks.amazonaws.com/nodegroup``, ``recc.io/nodegroup``,
    capacity type and instance type; taints: the node group's taints; capacity and allocatable
    from RECC's instance table when it knows the type.

    >>> ng = NodegroupView("c1-default", "ACTIVE", 2, "c5.xlarge", labels={"team": "risk"},
    ...                    taints=({"key": "recc.io/cluster", "value": "c1",
    ...                             "effect": "NO_SCHEDULE"},))
    >>> nodes = desired_nodes([ng], "eu-west-1")
    >>> sorted(nodes)
    ['c1-default-node-0', 'c1-default-node-1']
    >>> node = nodes["c1-default-node-0"]
    >>> node["metadata"]["labels"]["recc.io/nodegroup"], node["spec"]["taints"][0]["effect"]
    ('c1-default', 'NoSchedule')
    >>> node["status"]["capacity"]["cpu"], node["status"]["allocatable"]["pods"]
    ('4', '58')
    """
    lookup = instance_types or _bundled_instance
    nodes = {}
    for ng in nodegroups:
        if ng.status != "ACTIVE":
            continue
        instance = lookup(ng.instance_type)
        for index in range(ng.desired_size):
            name = node_name(ng.name, index)
            nodes[name] = _node(ng, name, region, instance)
    return nodes


def _node(
    ng: NodegroupView, name: str, region: str, instance: InstanceType | None
) -> dict[str, Any]:
    labels = {
        **ng.labels,
        EKS_NODEGROUP_LABEL: ng.name,
        RECC_NODEGROUP_LABEL: ng.name,
        "eks.amazonaws.com/capacityType": ng.capacity_type,
        "node.kubernetes.io/instance-type": ng.instance_type,
        "topology.kubernetes.io/region": region,
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        _EMULATED_LABEL: "true",
    }
    status: dict[str, Any] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status (emulated)",
            }
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
    }
    if instance is not None:
        labels["kubernetes.io/arch"] = "arm64" if instance.arch == "arm64" else "amd64"
        room = allocatable(instance, _KUBELET_ONLY)
        status["capacity"] = _quantities(
            instance.vcpus * 1000, instance.memory_mib, instance.max_pods, instance.gpus
        )
        status["allocatable"] = _quantities(room.cpu_m, room.memory_mib, room.pods, room.gpus)
    taints = [
        {"key": t["key"], "effect": _EFFECTS.get(t.get("effect", ""), t.get("effect", ""))}
        | ({"value": t["value"]} if t.get("value") else {})
        for t in ng.taints
    ]
    instance_id = f"i-{hashlib.sha256(name.encode()).hexdigest()[:17]}"
    spec: dict[str, Any] = {"providerID": f"aws:///{region}a/{instance_id}"}
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": status,
    }


def _quantities(cpu_m: int, memory_mib: int, pods: int, gpus: int) -> dict[str, str]:
    out = {
        "cpu": str(cpu_m // 1000) if cpu_m % 1000 == 0 else f"{cpu_m}m",
        "memory": f"{memory_mib}Mi",
        "pods": str(pods),
    }
    if gpus:
        out["nvidia.com/gpu"] = str(gpus)
    return out


_catalog = None


def _bundled_instance(name: str) -> InstanceType | None:
    global _catalog
    if _catalog is None:
        _catalog = bundled_catalog()
    try:
        return _catalog.get(name)
    except SpecError:
        return None


class NodeSync:
    """Keeps the fake's emulated Nodes equal to :func:`desired_nodes` of ``source()``.

    Runs in a daemon thread every ``interval`` seconds from :meth:`start` to :meth:`stop`.
    Nodes it did not make (no ``recc.testing/emulated-node`` label) are left alone.
    """

    def __init__(
        self,
        kube: FakeKubeServer,
        source: Callable[[], list[NodegroupView]],
        region: str,
        interval: float = 0.2,
    ) -> None:
        self.kube = kube
        self.source = source
        self.region = region
        self.interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> NodeSync:
        self.sync()
        self._thread = threading.Thread(target=self._run, name="recc-node-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.sync()
            except Exception:  # keep syncing: one bad round must not end the emulation
                logger.exception("emulated node sync failed; retrying")

    def sync(self) -> None:
        """One round: create missing Nodes, delete Nodes no node group wants any more."""
        try:
            wanted = desired_nodes(self.source(), self.region)
        except RuntimeError:  # moto's dicts changed while being read; next round
            return
        have = {
            n["metadata"]["name"]: n
            for n in self.kube.objects("nodes")
            if n["metadata"].get("labels", {}).get(_EMULATED_LABEL) == "true"
        }
        for name in sorted(have.keys() - wanted.keys()):
            try:
                self.kube.delete_object("nodes", name)
            except FakeKubeError as e:
                if e.code != 404:
                    raise
        for name, node in sorted(wanted.items()):
            old = have.get(name)
            try:
                if old is None:
                    self.kube.create_object(node)
                elif _drifted(old, node):  # EKS relabels nodes when the node group changes
                    self.kube.update_object(
                        {
                            **node,
                            "metadata": old["metadata"] | {"labels": node["metadata"]["labels"]},
                        }
                    )
            except FakeKubeError as e:
                if e.code not in (404, 409):  # raced with another change; next round
                    raise


def _drifted(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return old["metadata"].get("labels") != new["metadata"]["labels"] or old["spec"].get(
        "taints"
    ) != new["spec"].get("taints")
