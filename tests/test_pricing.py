"""Prices and cost estimates. The Pricing API (which moto lacks) is a real boto3 client with
botocore's Stubber: answers are queued, every request is checked against what was expected,
and a request with nothing queued is an error. Calls are also counted, so "the cache was used"
is shown by the count, not by a price that happens to match."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import pytest
from helpers import StubbedClient

from recc import aws
from recc.catalog import bundled_catalog, use_aws
from recc.cost import estimate_cost, local_cost
from recc.plan import plan_cluster
from recc.pricing import PriceBook, on_demand_from_price_list
from recc.spec import resolve_spec

REGION = "eu-west-1"
EU_C5_XLARGE = 0.192  # not the bundled us-east-1 figure (0.17), so the source shows in the value


def price_list_item(instance_type: str, usd: str, region: str = REGION) -> str:
    """One PriceList entry as GetProducts returns it: a JSON document inside a string."""
    sku = "7VXK8H2M3Q2QEEFR"
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute Instance",
                "attributes": {
                    "instanceType": instance_type,
                    "regionCode": region,
                    "location": "EU (Ireland)",
                    "operatingSystem": "Linux",
                    "tenancy": "Shared",
                    "preInstalledSw": "NA",
                    "capacitystatus": "Used",
                    "vcpu": "4",
                    "memory": "8 GiB",
                    "servicecode": "AmazonEC2",
                },
                "sku": sku,
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "endRange": "Inf",
                                "description": f"${usd} per On Demand Linux {instance_type} "
                                "Instance Hour",
                                "appliesTo": [],
                                "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                                "beginRange": "0",
                                "pricePerUnit": {"USD": usd},
                            }
                        },
                        "sku": sku,
                        "effectiveDate": "2026-11-01T00:00:00Z",
                        "offerTermCode": "JRTCKXETXF",
                        "termAttributes": {},
                    }
                },
                "Reserved": {
                    f"{sku}.4NA7Y494T4": {
                        "priceDimensions": {
                            f"{sku}.4NA7Y494T4.2TG2D8R56U": {
                                "unit": "Quantity",
                                "pricePerUnit": {"USD": "1000"},
                            }
                        }
                    }
                },
            },
            "version": "20261101000000",
            "publicationDate": "2026-11-01T00:00:00Z",
        }
    )


def expected_request(instance_type: str, region: str = REGION) -> dict[str, Any]:
    fields = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return {
        "ServiceCode": "AmazonEC2",
        "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in fields.items()],
        "MaxResults": 10,
    }


class StubbedPricing(StubbedClient):
    """A real pricing client under a Stubber, counting the GetProducts requests it sends."""

    def __init__(self) -> None:
        super().__init__("pricing", "us-east-1", counting="GetProducts")

    def answer(self, instance_type: str, *items: str) -> None:
        self.stubber.add_response(
            "get_products",
            {"FormatVersion": "aws_v1", "PriceList": list(items)},
            expected_request(instance_type),
        )

    def fail(self, instance_type: str, code: str) -> None:
        self.stubber.add_client_error(
            "get_products", code, "no", 400, expected_params=expected_request(instance_type)
        )


@pytest.fixture(autouse=True)
def isolated(no_real_aws: None) -> Iterator[None]:
    """Cache under tmp_path (conftest's recc_home); bundled prices unless a test asks for AWS;
    never a real client."""
    with dask.config.set(
        {
            "recc.cost.price-source": "bundled",
            "recc.cost.spot-ratio": 0.35,
            "recc.cost.control-plane-usd-per-hour": 0.10,
            "recc.eks.cluster-name": None,
            "recc.eks.region": None,
            "recc.planning.cache-ttl": "7d",
        }
    ):
        yield


@pytest.fixture
def pricing() -> Iterator[StubbedPricing]:
    with StubbedPricing() as stub:
        yield stub


# --- the price list ------------------------------------------------------------------------


def test_on_demand_price_is_read_from_the_price_list() -> None:
    assert on_demand_from_price_list([price_list_item("c5.xlarge", "0.1920000000")]) == 0.192


def test_price_list_without_an_hourly_price() -> None:
    assert on_demand_from_price_list([]) is None
    assert on_demand_from_price_list([price_list_item("c5.xlarge", "0.0000000000")]) is None


# --- Pricing API, cache, fallback ----------------------------------------------------------


def test_pricing_api_then_cache(tmp_path: Path, pricing: StubbedPricing) -> None:
    cache = tmp_path / "prices.json"
    pricing.answer("c5.xlarge", price_list_item("c5.xlarge", "0.1920000000"))
    book = PriceBook(pricing.client, region=REGION, cache_file=cache)

    first = book.on_demand("c5.xlarge")
    assert (first.usd_per_hour, first.source) == (EU_C5_XLARGE, "Pricing API")
    assert json.loads(cache.read_text()) == {"c5.xlarge": EU_C5_XLARGE}
    assert len(pricing.calls) == 1

    # Same book, and a new one reading the same file: answered from the cache, no request.
    again = book.on_demand("c5.xlarge")
    other = PriceBook(pricing.client, region=REGION, cache_file=cache).on_demand("c5.xlarge")
    for price in (again, other):
        assert (price.usd_per_hour, price.source) == (EU_C5_XLARGE, "Pricing API (cached)")
    assert len(pricing.calls) == 1


def test_cache_keeps_every_type_and_expires(tmp_path: Path, pricing: StubbedPricing) -> None:
    cache = tmp_path / "prices.json"
    book = PriceBook(pricing.client, region=REGION, cache_file=cache)
    pricing.answer("c5.xlarge", price_list_item("c5.xlarge", "0.192"))
    pricing.answer("m5.large", price_list_item("m5.large", "0.107"))
    book.on_demand("c5.xlarge")
    book.on_demand("m5.large")
    assert json.loads(cache.read_text()) == {"c5.xlarge": 0.192, "m5.large": 0.107}

    eight_days_ago = time.time() - 8 * 86400
    os.utime(cache, (eight_days_ago, eight_days_ago))  # older than recc.planning.cache-ttl
    pricing.answer("c5.xlarge", price_list_item("c5.xlarge", "0.2"))
    assert book.on_demand("c5.xlarge").source == "Pricing API"
    assert json.loads(cache.read_text()) == {"c5.xlarge": 0.2}
    assert len(pricing.calls) == 3


@pytest.mark.parametrize("code", ["ThrottlingException", "AccessDeniedException"])
def test_api_error_falls_back_to_the_bundled_table(
    tmp_path: Path, pricing: StubbedPricing, code: str
) -> None:
    cache = tmp_path / "prices.json"
    pricing.fail("c5.xlarge", code)
    price = PriceBook(pricing.client, region=REGION, cache_file=cache).on_demand("c5.xlarge")
    assert (price.usd_per_hour, price.source) == (0.17, "bundled table (us-east-1)")
    assert not cache.exists()  # a fallback figure is never cached as an API answer


def test_empty_answer_falls_back_to_the_bundled_table(
    tmp_path: Path, pricing: StubbedPricing
) -> None:
    pricing.answer("c5.xlarge")
    price = PriceBook(pricing.client, region=REGION, cache_file=tmp_path / "p.json").on_demand(
        "c5.xlarge"
    )
    assert price.source == "bundled table (us-east-1)"


def test_price_source_aws_makes_its_client_through_recc_aws(
    monkeypatch: pytest.MonkeyPatch, pricing: StubbedPricing
) -> None:
    asked: list[str] = []

    def client(service: str, **_: object) -> Any:
        asked.append(service)
        return pricing.client

    monkeypatch.setattr(aws, "client", client)
    pricing.answer("c5.xlarge", price_list_item("c5.xlarge", "0.192"))
    with dask.config.set({"recc.cost.price-source": "aws", "recc.eks.region": REGION}):
        price = PriceBook().on_demand("c5.xlarge")
    assert (price.usd_per_hour, price.source) == (EU_C5_XLARGE, "Pricing API")
    assert asked == ["pricing"]


def test_price_source_bundled_never_asks_aws() -> None:
    # eks.cluster-name set would make "auto" use AWS; "bundled" must not. A real client
    # request would raise AssertionError (see the isolated fixture).
    with dask.config.set(
        {"recc.eks.cluster-name": "platform", "recc.cost.price-source": "bundled"}
    ):
        price = PriceBook().on_demand("p3.8xlarge")
    assert (price.usd_per_hour, price.source) == (12.24, "bundled table (us-east-1)")


@pytest.mark.parametrize(
    "setting, cluster_name, expected",
    [
        ("auto", None, False),
        ("auto", "platform", True),
        ("aws", None, True),
        ("bundled", "platform", False),
    ],
)
def test_use_aws(setting: str, cluster_name: str | None, expected: bool) -> None:
    with dask.config.set(
        {"recc.cost.price-source": setting, "recc.eks.cluster-name": cluster_name}
    ):
        assert use_aws("cost.price-source") is expected


def test_unknown_type_without_a_price_is_zero_and_says_so() -> None:
    price = PriceBook().on_demand("z9.imaginary")
    assert (price.usd_per_hour, price.source) == (0.0, "unknown (no price found)")


def test_spot_is_ratio_times_on_demand() -> None:
    book = PriceBook()
    spot = book.spot("c5.xlarge")
    assert spot.usd_per_hour == round(0.17 * 0.35, 4) == 0.0595
    assert spot.source == "spot estimate (0.35 x bundled table (us-east-1))"
    with dask.config.set({"recc.cost.spot-ratio": 0.5}):
        assert book.spot("p3.8xlarge").usd_per_hour == 6.12


# --- cost estimates ------------------------------------------------------------------------


def cost_of(**kwargs: object) -> Any:
    return estimate_cost(plan_cluster(resolve_spec(**kwargs), bundled_catalog()))


def test_default_cost_is_seven_c5_xlarge_plus_control_plane() -> None:
    cost = cost_of()
    assert cost.instances_usd_per_hour == 1.19  # 7 x 0.17
    assert cost.control_plane_usd_per_hour == 0.10
    assert cost.usd_per_hour == 1.29
    (group,) = cost.groups
    assert (group.instances, group.capacity_type, group.usd_per_instance_hour) == (
        7,
        "on-demand",
        0.17,
    )
    assert cost.estimate is True
    assert json.loads(json.dumps(cost.to_dict()))["usd_per_hour"] == 1.29


def test_cost_of_100_workers() -> None:
    assert cost_of(n_workers=100).usd_per_hour == 5.88  # 34 x 0.17 + 0.10


def test_spot_cost() -> None:
    cost = cost_of(spot=True)
    assert cost.groups[0].capacity_type == "spot"
    assert cost.usd_per_hour == 0.5165  # 7 x (0.17 x 0.35) + 0.10


def test_cost_of_worker_groups_adds_up() -> None:
    gpu = {
        "name": "gpu",
        "instance_type": "p3.8xlarge",
        "n_workers": 6,
        "worker_memory": "56GiB",
        "worker_cpu": 7,
        "resources": {"GPU": 1},
    }
    on_demand = cost_of(worker_groups=[gpu])
    assert [g.usd_per_hour for g in on_demand.groups] == [1.19, 24.48]  # 7 x 0.17, 2 x 12.24
    assert on_demand.usd_per_hour == 25.77
    spot = cost_of(worker_groups=[{**gpu, "spot": True}])
    assert spot.usd_per_hour == 9.858  # 1.19 + 2 x (12.24 x 0.35) + 0.10


def test_control_plane_fee_is_configurable() -> None:
    with dask.config.set({"recc.cost.control-plane-usd-per-hour": 0}):
        assert cost_of().usd_per_hour == 1.19


def test_cost_with_pricing_api_prices(tmp_path: Path, pricing: StubbedPricing) -> None:
    pricing.answer("c5.xlarge", price_list_item("c5.xlarge", "0.192"))
    book = PriceBook(pricing.client, region=REGION, cache_file=tmp_path / "p.json")
    cost = estimate_cost(plan_cluster(resolve_spec(), bundled_catalog()), book)
    assert cost.usd_per_hour == 1.444  # 7 x 0.192 + 0.10
    assert cost.groups[0].price_source == "Pricing API"


def test_local_cost_is_zero() -> None:
    cost = local_cost()
    assert (cost.usd_per_hour, cost.groups) == (0.0, ())
