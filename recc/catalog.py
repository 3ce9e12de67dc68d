"""The instance catalogue: facts about EC2 instance types that planning needs.

Facts come from EC2 DescribeInstanceTypes (cached on disk) when RECC talks to AWS, and from the
bundled table (recc/data/instance_types.csv, see SOURCES.md there) offline.
"""

from __future__ import annotations

import csv
import difflib
import importlib.resources
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from recc import config
from recc.errors import SpecError
from recc.units import parse_duration


@dataclass(frozen=True)
class InstanceType:
    """What planning needs to know about one EC2 instance type."""

    name: str
    vcpus: int
    memory_mib: int
    gpus: int
    gpu_model: str
    max_enis: int
    ipv4_per_eni: int
    arch: str
    on_demand_usd_per_hour: float | None = None

    @property
    def max_pods(self) -> int:
        """Pods per node allowed by the VPC CNI: ENIs x (IPv4 per ENI - 1) + 2."""
        return self.max_enis * (self.ipv4_per_eni - 1) + 2


class Catalog:
    """Instance types by name, with helpful errors for unknown names."""

    def __init__(self, types: Iterable[InstanceType], source: str):
        self.types = {t.name: t for t in types}
        self.source = source

    def get(self, name: str, field: str = "instance_type") -> InstanceType:
        """The instance type called ``name``; a :class:`SpecError` with close matches if none."""
        try:
            return self.types[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.types, n=3)
            hint = f"; close: {', '.join(close)}" if close else ""
            example = f"{field.rsplit('.', 1)[-1]}={(close or ['c5.xlarge'])[0]!r}"
            raise SpecError(
                field, name, f"unknown instance type ({self.source}{hint})", example
            ) from None

    def __iter__(self):  # noqa: ANN204 - iterator over InstanceType
        return iter(self.types.values())


def bundled_catalog() -> Catalog:
    """The offline table shipped with RECC."""
    text = (importlib.resources.files("recc") / "data" / "instance_types.csv").read_text()
    types = [
        InstanceType(
            name=row["instance_type"],
            vcpus=int(row["vcpus"]),
            memory_mib=int(row["memory_mib"]),
            gpus=int(row["gpus"] or 0),
            gpu_model=row["gpu_model"],
            max_enis=int(row["max_enis"]),
            ipv4_per_eni=int(row["ipv4_per_eni"]),
            arch=row["arch"],
            on_demand_usd_per_hour=float(row["on_demand_usd_per_hour"]),
        )
        for row in csv.DictReader(text.splitlines())
    ]
    return Catalog(types, "bundled table")


def _from_description(item: dict[str, Any]) -> InstanceType:
    gpus = (item.get("GpuInfo") or {}).get("Gpus", [])
    network = item["NetworkInfo"]
    # Older types list ["i386", "x86_64"]; planning compares 64-bit architectures.
    archs = item["ProcessorInfo"]["SupportedArchitectures"]
    return InstanceType(
        name=item["InstanceType"],
        vcpus=item["VCpuInfo"]["DefaultVCpus"],
        memory_mib=item["MemoryInfo"]["SizeInMiB"],
        gpus=sum(g.get("Count", 0) for g in gpus),
        gpu_model=gpus[0].get("Name", "") if gpus else "",
        max_enis=network["MaximumNetworkInterfaces"],
        ipv4_per_eni=network["Ipv4AddressesPerInterface"],
        arch=next((a for a in archs if a != "i386"), archs[0]),
    )


def aws_catalog(ec2_client: Any, cache_file: Path | None = None) -> Catalog:
    """Every instance type the region offers, from DescribeInstanceTypes, cached on disk."""
    cache_file = cache_file or config.cache_dir() / "instance-types.json"
    ttl = parse_duration(config.get("planning.cache-ttl")) or 0
    if cache_file.is_file() and time.time() - cache_file.stat().st_mtime < ttl:
        return Catalog(
            [InstanceType(**t) for t in json.loads(cache_file.read_text())], "EC2 (cached)"
        )
    paginator = ec2_client.get_paginator("describe_instance_types")
    types = [_from_description(it) for page in paginator.paginate() for it in page["InstanceTypes"]]
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.{time.monotonic_ns()}.tmp")  # racing writers
    tmp.write_text(json.dumps([asdict(t) for t in types]))
    tmp.replace(cache_file)
    return Catalog(types, "EC2 DescribeInstanceTypes")


def use_aws(setting_key: str) -> bool:
    """Whether a ``auto|aws|bundled`` setting means: ask AWS."""
    setting = config.get(setting_key)
    if setting == "auto":
        return bool(config.get("eks.cluster-name"))
    return setting == "aws"


def get_catalog(ec2_client: Any = None) -> Catalog:
    """The catalogue per ``recc.planning.catalog-source``; falls back to the bundled table
    when AWS cannot be reached (the plan says which source it used)."""
    if not use_aws("planning.catalog-source"):
        return bundled_catalog()
    try:
        if ec2_client is None:
            from recc.aws import client

            ec2_client = client("ec2")
        return aws_catalog(ec2_client)
    except (BotoCoreError, ClientError):
        return bundled_catalog()
