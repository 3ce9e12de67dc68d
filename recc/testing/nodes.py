"""Kubernetes Nodes for the EKS managed node groups that moto holds, as EKS would make them.

moto records node groups but boots nothing; :class:`NodeSync` plays the part of the instances
joining the cluster. Each round it reads the node groups of one EKS cluster from moto's
in-process state (no API call, so it neither shows up in recorded calls nor trips injected
failures) and makes the API server hold one Ready Node per desired instance of each ACTIVE
node group, labelled and tainted the way EKS labels and taints them, with the capacity and
allocatable of its instance type. Nodes of a node group that shrank or went away are drained
first, as EKS drains a managed node group's instances before it terminates them: cordoned,
their Pods evicted (the Eviction API, so PodDisruptionBudgets hold), and the Node removed once
its Pods are gone (or after ``DRAIN_TIMEOUT``, where EKS would give up on a budget and force).

:func:`desired_nodes` is the pure part: node groups in, Node objects out.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from recc.catalog import InstanceType, bundled_catalog
from recc.errors import SpecError
from recc.plan import NodeOverhead, allocatable

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
    """Keeps the agent's Nodes equal to :func:`desired_nodes` of ``source()``, as instances
    joining and leaving the cluster would, and keeps them alive: each Node's Lease in
    ``kube-node-lease`` is renewed and its Ready condition heartbeat refreshed, so the real node
    lifecycle controller sees healthy kubelets. Nodes it did not make (no
    ``recc.testing/emulated-node`` label) are left alone.
    """

    def __init__(
        self,
        api: Any,
        source: Callable[[], list[NodegroupView]],
        region: str,
        kubelet_port: Callable[[], int],
    ) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.leases = kubernetes.client.CoordinationV1Api(api)
        self.source = source
        self.region = region
        self._kubelet_port = kubelet_port
        self._renewed: dict[str, float] = {}
        self._draining: dict[str, float] = {}  # node -> when its drain began (monotonic)
        self.names: set[str] = set()

    def sync(self) -> None:
        """One round: create missing Nodes, delete Nodes no node group wants, renew leases."""
        try:
            wanted = desired_nodes(self.source(), self.region)
        except RuntimeError:  # moto's dicts changed while being read; next round
            return
        have = {
            n.metadata.name: n
            for n in self.core.list_node(label_selector=f"{_EMULATED_LABEL}=true").items
        }
        draining = set()
        for name in sorted(have.keys() - wanted.keys()):
            try:
                if self._drained(have[name]):
                    self.core.delete_node(name)
                    self._renewed.pop(name, None)
                    self._draining.pop(name, None)
                else:
                    draining.add(name)
                    self._renew(name)  # its kubelet runs until the instance is terminated
            except ApiException as e:
                if e.status not in (404, 409, 429):  # gone, raced, or a budget: next round
                    raise
        for name, node in sorted(wanted.items()):
            node["status"]["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self._kubelet_port()}}
            node["status"]["nodeInfo"] = _NODE_INFO
            old = have.get(name)
            try:
                if old is None:
                    stamp = _now()
                    for condition in node["status"]["conditions"]:
                        condition["lastHeartbeatTime"] = condition["lastTransitionTime"] = stamp
                    self.core.create_node(node)
                elif _drifted(old, node):  # EKS relabels nodes when the node group changes
                    self.core.patch_node(
                        name,
                        {
                            "metadata": {"labels": node["metadata"]["labels"]},
                            "spec": {"taints": node["spec"].get("taints")},
                        },
                    )
                self._renew(name)
            except ApiException as e:
                if e.status not in (404, 409):  # raced with another change; next round
                    raise
        self.names = set(wanted) | draining

    def _drained(self, node: Any) -> bool:
        """One round of draining ``node``: cordon it and evict its Pods; whether it may go."""
        name = node.metadata.name
        started = self._draining.setdefault(name, time.monotonic())
        if time.monotonic() - started > DRAIN_TIMEOUT:
            logger.warning("node %s: not drained in %.0f s; removed anyway", name, DRAIN_TIMEOUT)
            return True
        if not node.spec.unschedulable:
            self.core.patch_node(name, {"spec": {"unschedulable": True}})
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items
        left = [p for p in pods if p.status.phase not in ("Succeeded", "Failed")]
        for pod in left:
            if pod.metadata.deletion_timestamp is None:
                eviction = {
                    "apiVersion": "policy/v1",
                    "kind": "Eviction",
                    "metadata": {"name": pod.metadata.name, "namespace": pod.metadata.namespace},
                }
                self.core.create_namespaced_pod_eviction(
                    pod.metadata.name, pod.metadata.namespace, eviction
                )
        return not left

    def _renew(self, name: str) -> None:
        if time.monotonic() - self._renewed.get(name, -1e9) < _RENEW_EVERY:
            return
        stamp = _now_micro()
        lease = {
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": stamp},
        }
        try:
            self.leases.patch_namespaced_lease(name, "kube-node-lease", {"spec": lease["spec"]})
        except ApiException as e:
            if e.status != 404:
                raise
            self.leases.create_namespaced_lease("kube-node-lease", lease)
        heartbeat = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status (recc.testing node agent)",
            "lastHeartbeatTime": _now(),
        }
        self.core.patch_node_status(name, {"status": {"conditions": [heartbeat]}})
        self._renewed[name] = time.monotonic()


_RENEW_EVERY = 10.0
# EKS waits up to 15 minutes for a PodDisruptionBudget; a test platform should not.
DRAIN_TIMEOUT = 120.0
_NODE_INFO = {
    "machineID": "",
    "systemUUID": "",
    "bootID": "",
    "kernelVersion": "",
    "osImage": "recc.testing node agent",
    "containerRuntimeVersion": "recc://processes",
    "kubeletVersion": "v1.32.13",
    "kubeProxyVersion": "",
    "operatingSystem": "linux",
    "architecture": "amd64",
}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _drifted(old: Any, new: dict[str, Any]) -> bool:
    taints = [
        {k: v for k, v in t.to_dict().items() if v is not None and k != "time_added"}
        for t in old.spec.taints or []
    ]
    return (old.metadata.labels or {}) != new["metadata"]["labels"] or taints != (
        new["spec"].get("taints") or []
    )
