"""Planning from allocatable capacity. Every expected figure below is worked out by hand from
the EKS AMI formulas, so a change in the arithmetic shows up as a failing number, not a shrug.

c5.xlarge (4 vCPU, 8192 MiB, 4 ENIs x 15 IPv4):
  max pods     = 4 x (15 - 1) + 2                       = 58
  kube CPU     = 60 + 10 + 5 + 5                         = 80m
  CPU          = 4000 - 80 - 150 (DaemonSets)            = 3770m
  memory       = 8192 - (255 + 11 x 58) - 100 - 200      = 6999 MiB
  pods         = 58 - 2 (DaemonSets)                     = 56
  1 CPU / 1.5 GiB workers: CPU 3 (3770 // 1000), memory 4 (6999 // 1536), pods 56 -> 3, by CPU
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import dask.config
import pytest

from recc.catalog import Catalog, InstanceType, bundled_catalog
from recc.errors import PlanError, SpecError
from recc.plan import (
    Capacity,
    NodeOverhead,
    NodePlan,
    allocatable,
    fits_per_node,
    kube_reserved_cpu_m,
    plan_cluster,
    pod_need,
)
from recc.spec import resolve_spec
from recc.units import GiB


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return bundled_catalog()


@pytest.fixture(autouse=True)
def packaged_overhead() -> Iterator[None]:
    """Plans below assume the packaged DaemonSet overhead, whatever the user's config says."""
    with dask.config.set(
        {
            "recc.planning.daemonset-cpu": "150m",
            "recc.planning.daemonset-memory": "200MiB",
            "recc.planning.daemonset-pods": 2,
            "recc.planning.eviction-memory": "100MiB",
        }
    ):
        yield


def plan(catalog: Catalog, template: str | None = None, **kwargs: object) -> NodePlan:
    return plan_cluster(resolve_spec(template, **kwargs), catalog)


# --- node arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, max_pods",
    [("c5.xlarge", 58), ("c5.large", 29), ("m5.24xlarge", 737), ("p3.8xlarge", 234)],
)
def test_max_pods_is_enis_times_ips_minus_one_plus_two(
    catalog: Catalog, name: str, max_pods: int
) -> None:
    assert catalog.get(name).max_pods == max_pods


@pytest.mark.parametrize(
    "vcpus, millicores",
    [(1, 60), (2, 70), (3, 75), (4, 80), (8, 90), (16, 110), (96, 310)],
)
def test_kube_reserved_cpu_tiers(vcpus: int, millicores: int) -> None:
    # 6% of the first core, 1% of the second, 0.5% of cores 3-4, 0.25% of every further core
    assert kube_reserved_cpu_m(vcpus) == millicores


def test_allocatable_c5_xlarge(catalog: Catalog) -> None:
    node = allocatable(catalog.get("c5.xlarge"), NodeOverhead())
    assert node == Capacity(cpu_m=3770, memory_mib=6999, pods=56, gpus=0)


def test_allocatable_formula_on_a_made_up_type() -> None:
    box = InstanceType("x9.test", 8, 16384, 2, "T", 3, 10, "x86_64")
    overhead = NodeOverhead(
        daemonset_cpu_m=0, daemonset_memory_mib=0, daemonset_pods=0, eviction_memory_mib=0
    )
    # max pods 3 x 9 + 2 = 29; memory 16384 - 255 - 11 x 29; CPU 8000 - 90
    assert allocatable(box, overhead) == Capacity(7910, 16384 - 255 - 319, 29, 2)


def test_overhead_comes_from_config(catalog: Catalog) -> None:
    with dask.config.set(
        {
            "recc.planning.daemonset-cpu": "0.5",
            "recc.planning.daemonset-memory": "1GiB",
            "recc.planning.daemonset-pods": 6,
            "recc.planning.eviction-memory": "200MiB",
        }
    ):
        overhead = NodeOverhead.from_config()
    assert overhead == NodeOverhead(500, 1024, 6, 200)
    node = allocatable(catalog.get("c5.xlarge"), overhead)
    assert node == Capacity(4000 - 80 - 500, 8192 - 893 - 200 - 1024, 52, 0)


def test_fits_per_node_names_the_limiting_resource() -> None:
    node = Capacity(cpu_m=4000, memory_mib=8000, pods=10, gpus=2)
    assert fits_per_node(node, Capacity(1000, 1000, 1)) == (4, "cpu")
    assert fits_per_node(node, Capacity(100, 3000, 1)) == (2, "memory")
    assert fits_per_node(node, Capacity(100, 100, 1)) == (10, "pods")
    assert fits_per_node(node, Capacity(100, 100, 1, 1)) == (2, "gpus")
    assert fits_per_node(node, Capacity(5000, 100, 1)) == (0, "cpu")


def test_pod_need_rounds_up() -> None:
    assert pod_need(int(1.5 * GiB), 1) == Capacity(1000, 1536, 1, 0)
    assert pod_need(1536 * 2**20 + 1, 1 / 3, 0.5) == Capacity(334, 1537, 1, 1)


# --- the default cluster ---------------------------------------------------------------------


def test_default_c5_xlarge_holds_three_workers_limited_by_cpu(catalog: Catalog) -> None:
    group = plan(catalog).groups[0]
    assert group.instance_type == "c5.xlarge"
    assert group.workers_per_node == 3
    assert group.limited_by == "cpu"
    assert group.worker == Capacity(1000, 1536, 1, 0)


def test_default_20_workers_need_7_nodes_scheduler_on_the_last(catalog: Catalog) -> None:
    result = plan(catalog)
    group = result.groups[0]
    # ceil(20 / 3) = 7; the 7th node holds 2 workers and has 1770m / 3927 MiB left, which
    # takes the scheduler (1000m, 2048 MiB) without another node.
    assert group.instances == result.instances == 7
    assert group.hosts_scheduler is True
    assert result.scheduler == Capacity(1000, 2048, 1, 0)
    assert result.vcpus_requested == 21.0


def test_100_workers_need_34_nodes(catalog: Catalog) -> None:
    # ceil(100 / 3) = 34; the last node holds 1 worker, so the scheduler fits beside it.
    assert plan(catalog, n_workers=100).instances == 34


@pytest.mark.parametrize("n_workers, instances", [(21, 8), (18, 7), (3, 2), (1, 1), (2, 1)])
def test_scheduler_gets_its_own_node_when_the_last_is_full(
    catalog: Catalog, n_workers: int, instances: int
) -> None:
    # 21 = 7 full nodes (770m left each) -> an 8th for the scheduler; 2 workers leave 1770m.
    assert plan(catalog, n_workers=n_workers).instances == instances


def test_packing_figures(catalog: Catalog) -> None:
    group = plan(catalog).groups[0]
    assert group.cpu_packing == round(3000 / 3770, 4) == 0.7958
    assert group.memory_packing == round(3 * 1536 / 6999, 4) == 0.6584
    assert group.idle_per_full_node == Capacity(770, 6999 - 3 * 1536, 53, 0)
    assert group.allocatable == Capacity(3770, 6999, 56, 0)


def test_memory_and_pod_limits(catalog: Catalog) -> None:
    by_memory = plan(catalog, worker_memory="3GiB", worker_cpu="500m").groups[0]
    assert (by_memory.workers_per_node, by_memory.limited_by) == (2, "memory")  # 6999 // 3072
    by_pods = plan(catalog, worker_memory="64MiB", worker_cpu="50m").groups[0]
    assert (by_pods.workers_per_node, by_pods.limited_by) == (56, "pods")


def test_to_dict_is_json_with_the_headline_figures(catalog: Catalog) -> None:
    data = json.loads(json.dumps(plan(catalog, n_workers=100).to_dict()))
    assert data["instance_type"] == "c5.xlarge"
    assert data["instances"] == 34
    assert data["workers_per_node"] == 3
    assert data["catalog_source"] == "bundled table"
    assert data["groups"][0]["allocatable"]["memory_mib"] == 6999


# --- templates, GPUs and worker groups ------------------------------------------------------


def test_gpu_template_four_workers_per_p3_8xlarge(catalog: Catalog) -> None:
    result = plan(catalog, "gpu")
    group = result.groups[0]
    assert (group.instance_type, group.workers_per_node, group.instances) == ("p3.8xlarge", 4, 1)
    assert group.worker.gpus == 1
    assert group.allocatable.gpus == 4


def test_gpus_limit_small_gpu_workers(catalog: Catalog) -> None:
    group = plan(catalog, "gpu", worker_memory="4GiB", worker_cpu=1, n_workers=9).groups[0]
    assert (group.workers_per_node, group.limited_by) == (4, "gpus")
    assert group.instances == 3  # ceil(9 / 4); the scheduler needs no GPU: fits on the third


def test_large_cluster_large_workers(catalog: Catalog) -> None:
    # r5.4xlarge: CPU 16000 - 110 - 150 = 15740 -> 7 workers of 2 CPU; ceil(200 / 7) = 29, the
    # last node holds 4 workers and has room for the 2 CPU / 8 GiB scheduler.
    group = plan(catalog, "large-cluster-large-workers").groups[0]
    assert (group.workers_per_node, group.limited_by, group.instances) == (7, "cpu", 29)


def test_every_standard_template_plans(catalog: Catalog) -> None:
    for name in ("default", "large-cluster-large-workers", "highmem", "gpu"):
        assert plan(catalog, name).instances >= 1


def test_worker_groups_get_their_own_plan(catalog: Catalog) -> None:
    gpu = {
        "name": "gpu",
        "instance_type": "p3.8xlarge",
        "n_workers": 6,
        "worker_memory": "56GiB",
        "worker_cpu": 7,
        "resources": {"GPU": 1},
        "spot": True,
    }
    result = plan(catalog, worker_groups=[gpu])
    default, pool = result.groups
    assert (default.name, default.instances, default.hosts_scheduler) == ("default", 7, True)
    assert (pool.name, pool.instance_type, pool.workers_per_node) == ("gpu", "p3.8xlarge", 4)
    assert (pool.instances, pool.hosts_scheduler, pool.spot) == (2, False, True)
    assert result.instances == 9
    assert result.to_dict()["workers_per_node"] == 3  # headline figures are the first group's


# --- errors ---------------------------------------------------------------------------------


def suggestions(message: str) -> list[str]:
    match = re.search(r"it fits on: ([^(]*) \(for example: instance_type='([^']+)'\)", message)
    assert match, message
    names = match.group(1).split(", ")
    assert names[0] == match.group(2)
    return names


def test_worker_larger_than_node_suggests_three_types_where_it_fits(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as info:
        plan(catalog, worker_memory="64GiB")
    message = str(info.value)
    assert message.startswith("worker_memory='64GiB'")
    assert "c5.xlarge" in message and "6999 MiB" in message
    names = suggestions(message)
    assert 1 <= len(names) <= 3
    worker = pod_need(64 * GiB, 1)
    for name in names:
        assert catalog.get(name).arch == "x86_64"
        assert allocatable(catalog.get(name), NodeOverhead()).fits(worker)
    prices = [catalog.get(n).on_demand_usd_per_hour for n in names]
    assert prices == sorted(prices)  # cheapest first
    # and the first suggestion really works
    assert plan(catalog, worker_memory="64GiB", instance_type=names[0]).instances >= 1


def test_suggestions_keep_the_architecture(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as info:
        plan(catalog, instance_type="m6g.large", worker_memory="20GiB")
    names = suggestions(str(info.value))
    assert names == ["r6g.xlarge", "m6g.2xlarge", "m6g.4xlarge"]  # arm64, cheapest first
    assert {catalog.get(n).arch for n in names} == {"arm64"}


def test_cpu_too_large(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as info:
        plan(catalog, worker_cpu=5)
    assert str(info.value).startswith("worker_cpu=5.0")
    for name in suggestions(str(info.value)):
        assert catalog.get(name).vcpus >= 8


def test_gpu_worker_on_a_cpu_type_suggests_gpu_types(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as info:
        plan(catalog, resources={"GPU": 1})
    assert str(info.value).startswith("resources=")
    names = suggestions(str(info.value))
    assert names == ["g4dn.xlarge", "g4dn.2xlarge", "g5.xlarge"]
    assert all(catalog.get(n).gpus >= 1 for n in names)


def test_worker_that_fits_nowhere(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as info:
        plan(catalog, worker_memory="20000GiB")
    message = str(info.value)
    assert "fits on no instance type" in message and "for example" in message


def test_scheduler_too_large_for_the_node(catalog: Catalog) -> None:
    with pytest.raises(PlanError) as info:
        plan(catalog, scheduler_memory="16GiB")
    message = str(info.value)
    assert "scheduler" in message and "c5.xlarge" in message
    for name in suggestions(message):
        assert catalog.get(name).memory_mib > 16384


@pytest.mark.parametrize("typo, close", [("c5.xlarg", "c5.xlarge"), ("m5.xlarge2", "m5.xlarge")])
def test_unknown_instance_type_is_a_spec_error_with_close_matches(
    catalog: Catalog, typo: str, close: str
) -> None:
    with pytest.raises(SpecError) as info:
        plan(catalog, instance_type=typo)
    assert info.value.field == "instance_type" and info.value.value == typo
    assert info.value.example == f"instance_type={close!r}"  # the closest, as valid input
    assert close in info.value.problem  # among the close matches listed
    assert "for example" in str(info.value)


def test_unknown_instance_type_in_a_worker_group(catalog: Catalog) -> None:
    group = {
        "name": "big",
        "instance_type": "x1.hugexl",
        "n_workers": 1,
        "worker_memory": "1GiB",
        "worker_cpu": 1,
    }
    with pytest.raises(SpecError) as info:
        plan(catalog, worker_groups=[group])
    assert info.value.field == "worker_groups.big.instance_type"
    assert "x1.hugexl" in str(info.value) and "for example" in str(info.value)
