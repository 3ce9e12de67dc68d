"""Planning: ClusterSpec + instance catalogue -> NodePlan. Pure: no AWS, no clock.

Workers per node come from what the kubelet can actually allocate, not from the brochure:

* CPU: EKS AMI kube-reserved tiers - 6% of the first core, 1% of the second, 0.5% of the
  third and fourth, 0.25% of every further core;
* memory: kube-reserved 255 MiB + 11 MiB per pod the node may run, plus the hard eviction
  threshold (100 MiB);
* pods: the VPC CNI limit ENIs x (IPv4 per ENI - 1) + 2;
* minus what every node's DaemonSets request (configurable, ``recc.planning.daemonset-*``).

Example
-------
>>> from recc.spec import resolve_spec
>>> from recc.catalog import bundled_catalog
>>> plan_cluster(resolve_spec(), bundled_catalog()).groups[0].workers_per_node
3
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from recc import config
from recc.catalog import Catalog, InstanceType
from recc.errors import PlanError
from recc.spec import ClusterSpec, WorkerGroup
from recc.units import MiB, cpu_millis, format_memory, parse_cpu, parse_memory

# (cores in this tier, share of a core reserved per core) - the EKS AMI's kube-reserved CPU.
_CPU_TIERS = ((1, 0.06), (1, 0.01), (2, 0.005), (math.inf, 0.0025))
_KUBE_RESERVED_BASE_MIB = 255
_KUBE_RESERVED_PER_POD_MIB = 11


@dataclass(frozen=True)
class NodeOverhead:
    """What every node gives away before RECC's pods: DaemonSets and the eviction threshold."""

    daemonset_cpu_m: int = 150
    daemonset_memory_mib: int = 200
    daemonset_pods: int = 2
    eviction_memory_mib: int = 100

    @classmethod
    def from_config(cls) -> NodeOverhead:
        """The overhead configured under ``recc.planning``."""
        return cls(
            daemonset_cpu_m=cpu_millis(parse_cpu(config.get("planning.daemonset-cpu"))),
            daemonset_memory_mib=parse_memory(config.get("planning.daemonset-memory")) // MiB,
            daemonset_pods=int(config.get("planning.daemonset-pods")),
            eviction_memory_mib=parse_memory(config.get("planning.eviction-memory")) // MiB,
        )


@dataclass(frozen=True)
class Capacity:
    """Requests a node can take (or a pod asks for)."""

    cpu_m: int
    memory_mib: int
    pods: int
    gpus: int = 0

    def fits(self, need: Capacity) -> bool:
        """Whether ``need`` fits in this capacity."""
        return (
            need.cpu_m <= self.cpu_m
            and need.memory_mib <= self.memory_mib
            and need.pods <= self.pods
            and need.gpus <= self.gpus
        )

    def minus(self, used: Capacity, times: int = 1) -> Capacity:
        """What is left after ``times`` pods of size ``used``."""
        return Capacity(
            self.cpu_m - times * used.cpu_m,
            self.memory_mib - times * used.memory_mib,
            self.pods - times * used.pods,
            self.gpus - times * used.gpus,
        )


def kube_reserved_cpu_m(vcpus: int) -> int:
    """Millicores the EKS AMI reserves for the kubelet on a node with ``vcpus`` cores."""
    reserved, remaining = 0.0, float(vcpus)
    for cores, share in _CPU_TIERS:
        take = min(cores, remaining)
        reserved += take * share * 1000
        remaining -= take
    return math.ceil(reserved)


def allocatable(instance: InstanceType, overhead: NodeOverhead) -> Capacity:
    """Capacity left for RECC's pods on one node of ``instance``."""
    max_pods = instance.max_pods
    reserved_mib = _KUBE_RESERVED_BASE_MIB + _KUBE_RESERVED_PER_POD_MIB * max_pods
    return Capacity(
        cpu_m=instance.vcpus * 1000
        - kube_reserved_cpu_m(instance.vcpus)
        - overhead.daemonset_cpu_m,
        memory_mib=instance.memory_mib
        - reserved_mib
        - overhead.eviction_memory_mib
        - overhead.daemonset_memory_mib,
        pods=max_pods - overhead.daemonset_pods,
        gpus=instance.gpus,
    )


def pod_need(memory_bytes: int, cpu: float, gpus: float = 0) -> Capacity:
    """The requests of one pod."""
    return Capacity(cpu_millis(cpu), math.ceil(memory_bytes / MiB), 1, math.ceil(gpus))


def fits_per_node(node: Capacity, pod: Capacity) -> tuple[int, str]:
    """How many ``pod`` fit on ``node``, and which resource runs out first."""
    limits = {
        "cpu": node.cpu_m // pod.cpu_m,
        "memory": node.memory_mib // pod.memory_mib,
        "pods": node.pods // pod.pods,
    }
    if pod.gpus:
        limits["gpus"] = node.gpus // pod.gpus
    limiting = min(limits, key=lambda k: limits[k])
    return max(0, limits[limiting]), limiting


@dataclass(frozen=True)
class GroupPlan:
    """The node group one worker group needs."""

    name: str
    instance_type: str
    n_workers: int
    workers_per_node: int
    limited_by: str
    instances: int
    spot: bool
    allocatable: Capacity
    worker: Capacity
    hosts_scheduler: bool
    cpu_packing: float
    memory_packing: float
    idle_per_full_node: Capacity


@dataclass(frozen=True)
class NodePlan:
    """Everything the infrastructure for one cluster needs, derived from its spec."""

    groups: tuple[GroupPlan, ...]
    scheduler: Capacity
    catalog_source: str

    @property
    def instances(self) -> int:
        """Instances over all node groups."""
        return sum(g.instances for g in self.groups)

    @property
    def vcpus_requested(self) -> float:
        """Cores requested by all pods (workers and scheduler)."""
        workers = sum(g.worker.cpu_m * g.n_workers for g in self.groups)
        return (workers + self.scheduler.cpu_m) / 1000

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON/YAML output; the default group's figures are also at the top."""
        first = self.groups[0]
        return {
            "instance_type": first.instance_type,
            "instances": self.instances,
            "workers_per_node": first.workers_per_node,
            "catalog_source": self.catalog_source,
            "scheduler": asdict(self.scheduler),
            "groups": [asdict(g) for g in self.groups],
        }


def _suggest(catalog: Catalog, pod: Capacity, overhead: NodeOverhead, arch: str) -> str:
    """Where ``pod`` fits: up to three types of the same architecture, cheapest first, and an
    example; or, when nothing fits, that the request itself must shrink."""

    def price(t: InstanceType) -> float:
        return t.on_demand_usd_per_hour if t.on_demand_usd_per_hour is not None else math.inf

    fitting = [t for t in catalog if t.arch == arch and allocatable(t, overhead).fits(pod)]
    best = [t.name for t in sorted(fitting, key=lambda t: (price(t), t.vcpus, t.memory_mib))[:3]]
    if not best:
        return (
            "it fits on no instance type in the catalogue "
            "(for example: ask for less memory, CPU or GPU)"
        )
    return f"it fits on: {', '.join(best)} (for example: instance_type={best[0]!r})"


def _plan_group(
    group: WorkerGroup,
    instance: InstanceType,
    overhead: NodeOverhead,
    catalog: Catalog,
    scheduler: Capacity | None,
) -> GroupPlan:
    node = allocatable(instance, overhead)
    worker = pod_need(group.worker_memory, group.worker_cpu, group.resources.get("GPU", 0))
    per_node, limited_by = fits_per_node(node, worker)
    if per_node == 0:
        field = {"memory": "worker_memory", "cpu": "worker_cpu"}.get(limited_by, "resources")
        value = {"memory": format_memory(group.worker_memory), "cpu": group.worker_cpu}.get(
            limited_by, group.resources
        )
        where = _suggest(catalog, worker, overhead, instance.arch)
        raise PlanError(
            f"{field}={value!r} on {group.name!r} workers: a worker needing "
            f"{worker.cpu_m}m CPU, {worker.memory_mib} MiB and "
            f"{worker.gpus} GPU does not fit on {instance.name} (allocatable {node.cpu_m}m CPU, "
            f"{node.memory_mib} MiB, {node.gpus} GPU); {where}"
        )
    instances = math.ceil(group.n_workers / per_node)
    hosts_scheduler = scheduler is not None
    if scheduler is not None:
        # The scheduler shares the group's nodes: on the least-filled node if it fits there.
        on_last = group.n_workers - (instances - 1) * per_node
        if not node.minus(worker, on_last).fits(scheduler):
            if not node.fits(scheduler):
                raise PlanError(
                    f"scheduler_memory/scheduler_cpu: the scheduler ({scheduler.cpu_m}m CPU, "
                    f"{scheduler.memory_mib} MiB) does not fit on {instance.name}; "
                    f"{_suggest(catalog, scheduler, overhead, instance.arch)}"
                )
            instances += 1
    full = worker.cpu_m * per_node, worker.memory_mib * per_node
    return GroupPlan(
        name=group.name,
        instance_type=instance.name,
        n_workers=group.n_workers,
        workers_per_node=per_node,
        limited_by=limited_by,
        instances=instances,
        spot=group.spot,
        allocatable=node,
        worker=worker,
        hosts_scheduler=hosts_scheduler,
        cpu_packing=round(full[0] / node.cpu_m, 4),
        memory_packing=round(full[1] / node.memory_mib, 4),
        idle_per_full_node=node.minus(worker, per_node),
    )


def plan_cluster(
    spec: ClusterSpec, catalog: Catalog, overhead: NodeOverhead | None = None
) -> NodePlan:
    """The node groups, instance counts and packing for ``spec``.

    Raises :class:`PlanError` when a worker (or the scheduler) fits on no node of its
    instance type, naming up to three cheaper-first types where it does fit.
    """
    overhead = overhead or NodeOverhead.from_config()
    scheduler = pod_need(spec.scheduler_memory, spec.scheduler_cpu)
    groups = tuple(
        _plan_group(
            group,
            catalog.get(
                group.instance_type,
                field="instance_type" if i == 0 else f"worker_groups.{group.name}.instance_type",
            ),
            overhead,
            catalog,
            scheduler if i == 0 else None,
        )
        for i, group in enumerate(spec.groups())
    )
    return NodePlan(groups=groups, scheduler=scheduler, catalog_source=catalog.source)
