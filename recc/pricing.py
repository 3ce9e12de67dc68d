"""Prices of EC2 instances: the Pricing API (cached on disk) with the bundled table as fallback."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from recc import config
from recc.catalog import bundled_catalog, use_aws
from recc.units import parse_duration


@dataclass(frozen=True)
class Price:
    """USD per hour for one instance, and where the figure came from."""

    usd_per_hour: float
    source: str


def _filters(instance_type: str, region: str) -> list[dict[str, str]]:
    wanted = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in wanted.items()]


def on_demand_from_price_list(price_list: list[str]) -> float | None:
    """The hourly on-demand USD price in a GetProducts answer, or None if there is none."""
    for item in price_list:
        product = json.loads(item)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = float(dimension.get("pricePerUnit", {}).get("USD", 0))
                if usd > 0 and dimension.get("unit", "Hrs") == "Hrs":
                    return usd
    return None


class PriceBook:
    """On-demand and spot estimates per instance type.

    ``pricing_client`` is a boto3 ``pricing`` client (injected in tests with botocore's
    Stubber); with None, RECC creates one when ``recc.cost.price-source`` asks for AWS.
    """

    def __init__(
        self, pricing_client: Any = None, region: str | None = None, cache_file: Path | None = None
    ):
        self._client = pricing_client
        self._region = region or config.get("eks.region") or "us-east-1"
        self._cache_file = cache_file or config.cache_dir() / f"prices-{self._region}.json"
        self._use_aws = pricing_client is not None or use_aws("cost.price-source")
        self._bundled = bundled_catalog()

    def on_demand(self, instance_type: str) -> Price:
        """The on-demand Linux price of ``instance_type`` in RECC's region."""
        if self._use_aws:
            cached = self._read_cache().get(instance_type)
            if cached is not None:
                return Price(cached, "Pricing API (cached)")
            try:
                usd = self._fetch(instance_type)
            except (BotoCoreError, ClientError):
                usd = None
            if usd is not None:
                self._write_cache(instance_type, usd)
                return Price(usd, "Pricing API")
        known = self._bundled.types.get(instance_type)
        if known is None or known.on_demand_usd_per_hour is None:
            return Price(0.0, "unknown (no price found)")
        return Price(known.on_demand_usd_per_hour, "bundled table (us-east-1)")

    def spot(self, instance_type: str) -> Price:
        """A spot estimate: on-demand x ``recc.cost.spot-ratio`` (spot prices move hourly)."""
        base = self.on_demand(instance_type)
        ratio = float(config.get("cost.spot-ratio"))
        return Price(
            round(base.usd_per_hour * ratio, 4), f"spot estimate ({ratio:g} x {base.source})"
        )

    def _fetch(self, instance_type: str) -> float | None:
        if self._client is None:
            from recc.aws import client

            self._client = client("pricing")
        answer = self._client.get_products(
            ServiceCode="AmazonEC2", Filters=_filters(instance_type, self._region), MaxResults=10
        )
        return on_demand_from_price_list(answer.get("PriceList", []))

    def _read_cache(self) -> dict[str, float]:
        ttl = parse_duration(config.get("planning.cache-ttl")) or 0
        path = self._cache_file
        if not path.is_file() or time.time() - path.stat().st_mtime > ttl:
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def _write_cache(self, instance_type: str, usd: float) -> None:
        prices = {**self._read_cache(), instance_type: usd}
        self._cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._cache_file.with_suffix(f".{time.monotonic_ns()}.tmp")
        tmp.write_text(json.dumps(prices))
        tmp.replace(self._cache_file)
