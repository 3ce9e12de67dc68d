"""The instance catalogue: EC2 DescribeInstanceTypes through moto, the on-disk cache, and the
bundled table as the offline fallback."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import dask.config
import pytest
from helpers import StubbedClient
from moto import mock_aws

from recc import aws
from recc.catalog import Catalog, InstanceType, aws_catalog, bundled_catalog, get_catalog
from recc.errors import SpecError
from recc.plan import plan_cluster
from recc.spec import resolve_spec

REGION = "us-east-1"
FACTS = ("vcpus", "memory_mib", "gpus", "max_enis", "ipv4_per_eni", "arch")
# moto serialises all ~1,400 instance types for one DescribeInstanceTypes: about 5 s of CPU,
# paid once per module by the from_moto fixture; tests that need it are marked slow.
needs_moto_catalog = pytest.mark.slow


@pytest.fixture(scope="module")
def from_moto(tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, Path]:
    """One full DescribeInstanceTypes through moto (about 1,400 types, so only once)."""
    cache = tmp_path_factory.mktemp("ec2") / "instance-types.json"
    with mock_aws(), dask.config.set({"recc.planning.cache-ttl": "7d"}):
        catalog = aws_catalog(boto3.client("ec2", region_name=REGION), cache_file=cache)
    return catalog, cache


@pytest.fixture
def ec2() -> Iterator[StubbedClient]:
    """A real EC2 client under a Stubber, counting DescribeInstanceTypes requests."""
    with StubbedClient("ec2", REGION, counting="DescribeInstanceTypes") as stub:
        yield stub


@pytest.fixture(autouse=True)
def isolated(no_real_aws: None) -> Iterator[None]:
    """Cache under tmp_path (conftest's recc_home), a week's TTL, and never a real AWS client."""
    with dask.config.set({"recc.planning.cache-ttl": "7d", "recc.eks.cluster-name": None}):
        yield


C5_XLARGE = {
    "InstanceType": "c5.xlarge",
    "VCpuInfo": {"DefaultVCpus": 4},
    "MemoryInfo": {"SizeInMiB": 8192},
    "NetworkInfo": {"MaximumNetworkInterfaces": 4, "Ipv4AddressesPerInterface": 15},
    "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
}


# --- EC2 DescribeInstanceTypes (moto) ------------------------------------------------------


@needs_moto_catalog
def test_aws_catalog_reads_describe_instance_types(from_moto: tuple[Catalog, Path]) -> None:
    catalog, _ = from_moto
    assert catalog.source == "EC2 DescribeInstanceTypes"
    assert len(catalog.types) > 500
    c5 = catalog.get("c5.xlarge")
    assert (c5.vcpus, c5.memory_mib, c5.max_enis, c5.ipv4_per_eni) == (4, 8192, 4, 15)
    assert c5.max_pods == 58 and c5.gpus == 0 and c5.on_demand_usd_per_hour is None
    g4 = catalog.get("g4dn.xlarge")
    assert (g4.gpus, g4.gpu_model) == (1, "T4")
    assert catalog.get("m6g.large").arch == "arm64"
    # listed by EC2 as ["i386", "x86_64"]: planning needs the 64-bit one
    assert catalog.get("c3.large").arch == "x86_64"


@needs_moto_catalog
def test_aws_catalog_agrees_with_the_bundled_table(from_moto: tuple[Catalog, Path]) -> None:
    catalog, _ = from_moto
    checked = 0
    for bundled in bundled_catalog():
        if bundled.name in catalog.types:
            live = catalog.get(bundled.name)
            assert [getattr(live, f) for f in FACTS] == [getattr(bundled, f) for f in FACTS]
            checked += 1
    assert checked >= 20


@needs_moto_catalog
def test_default_plan_on_the_aws_catalog(from_moto: tuple[Catalog, Path]) -> None:
    plan = plan_cluster(resolve_spec(), from_moto[0])
    assert (plan.groups[0].workers_per_node, plan.instances) == (3, 7)
    assert plan.catalog_source == "EC2 DescribeInstanceTypes"


@needs_moto_catalog
def test_cache_file_is_reused_without_a_request(
    from_moto: tuple[Catalog, Path], ec2: StubbedClient
) -> None:
    catalog, cache = from_moto
    assert len(json.loads(cache.read_text())) == len(catalog.types)
    # Nothing is queued on the Stubber: a request would raise UnStubbedResponseError.
    cached = aws_catalog(ec2.client, cache_file=cache)
    assert cached.source == "EC2 (cached)"
    assert cached.types == catalog.types
    assert ec2.calls == []


def test_expired_cache_is_fetched_again(tmp_path: Path, ec2: StubbedClient) -> None:
    cache = tmp_path / "types.json"
    cache.write_text(json.dumps([]))
    old = time.time() - 8 * 86400
    os.utime(cache, (old, old))
    ec2.stubber.add_response("describe_instance_types", {"InstanceTypes": [C5_XLARGE]})
    catalog = aws_catalog(ec2.client, cache_file=cache)
    assert catalog.source == "EC2 DescribeInstanceTypes"
    assert list(catalog.types) == ["c5.xlarge"]
    assert [t["name"] for t in json.loads(cache.read_text())] == ["c5.xlarge"]
    assert len(ec2.calls) == 1


def test_gpu_info_null_and_missing(ec2: StubbedClient, tmp_path: Path) -> None:
    p3 = {
        **C5_XLARGE,
        "InstanceType": "p3.8xlarge",
        "GpuInfo": {"Gpus": [{"Name": "V100", "Manufacturer": "NVIDIA", "Count": 4}]},
    }
    ec2.stubber.add_response("describe_instance_types", {"InstanceTypes": [C5_XLARGE, p3]})
    catalog = aws_catalog(ec2.client, cache_file=tmp_path / "t.json")
    assert catalog.get("p3.8xlarge").gpus == 4
    assert catalog.get("c5.xlarge").gpus == 0


# --- get_catalog: source selection and fallback --------------------------------------------


def test_get_catalog_bundled_never_calls_ec2(ec2: StubbedClient) -> None:
    with dask.config.set(
        {"recc.planning.catalog-source": "bundled", "recc.eks.cluster-name": "platform"}
    ):
        catalog = get_catalog(ec2.client)
    assert catalog.source == "bundled table"
    assert ec2.calls == []


def test_get_catalog_auto_without_a_platform_is_bundled(ec2: StubbedClient) -> None:
    with dask.config.set({"recc.planning.catalog-source": "auto"}):
        assert get_catalog(ec2.client).source == "bundled table"
    assert ec2.calls == []


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "RequestLimitExceeded"])
def test_get_catalog_falls_back_to_bundled_on_an_api_error(ec2: StubbedClient, code: str) -> None:
    ec2.stubber.add_client_error("describe_instance_types", code, "no")
    with dask.config.set({"recc.planning.catalog-source": "aws"}):
        catalog = get_catalog(ec2.client)
    assert catalog.source == "bundled table"
    assert len(ec2.calls) == 1


def test_get_catalog_aws_uses_the_user_cache(
    ec2: StubbedClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no client given, get_catalog makes one through recc.aws and reads the cache in
    $XDG_CACHE_HOME/recc first."""
    c5 = dataclasses.replace(bundled_catalog().get("c5.xlarge"), on_demand_usd_per_hour=None)
    (tmp_path / "cache" / "recc").mkdir(parents=True)
    (tmp_path / "cache" / "recc" / "instance-types.json").write_text(
        json.dumps([dataclasses.asdict(c5)])
    )
    asked: list[str] = []

    def client(service: str, **_: object) -> Any:
        asked.append(service)
        return ec2.client

    monkeypatch.setattr(aws, "client", client)
    with dask.config.set({"recc.planning.catalog-source": "aws"}):
        catalog = get_catalog()
    assert catalog.source == "EC2 (cached)"
    assert list(catalog) == [c5]
    assert asked == ["ec2"] and ec2.calls == []


# --- the bundled table and lookups ---------------------------------------------------------


def test_bundled_table_is_complete() -> None:
    catalog = bundled_catalog()
    for t in catalog:
        assert t.vcpus > 0 and t.memory_mib > 0 and t.max_pods > 2, t
        assert t.arch in {"x86_64", "arm64"}, t
        assert t.on_demand_usd_per_hour and t.on_demand_usd_per_hour > 0, t
        assert (t.gpus > 0) == bool(t.gpu_model), t
    for name in ("c5.xlarge", "r5.2xlarge", "r5.4xlarge", "p3.8xlarge"):  # the templates' types
        catalog.get(name)


def test_unknown_type_is_a_spec_error_with_close_matches() -> None:
    with pytest.raises(SpecError) as info:
        bundled_catalog().get("r5.4xlarg", field="worker_groups.big.instance_type")
    error = info.value
    assert (error.field, error.value) == ("worker_groups.big.instance_type", "r5.4xlarg")
    assert error.example == "instance_type='r5.4xlarge'"
    assert "bundled table" in str(error) and "for example" in str(error)


def test_unknown_type_with_nothing_close_suggests_the_default() -> None:
    catalog = Catalog([InstanceType("c5.xlarge", 4, 8192, 0, "", 4, 15, "x86_64")], "test")
    with pytest.raises(SpecError) as info:
        catalog.get("zzzzzz")
    assert info.value.example == "instance_type='c5.xlarge'"
