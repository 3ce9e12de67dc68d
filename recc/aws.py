"""The one funnel for boto3 clients, so region, profile and test endpoints live in one place."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from recc import config


def session(profile: str | None = None) -> boto3.Session:
    """A boto3 session for ``profile`` (default: ``recc.eks.profile``) and RECC's region."""
    return boto3.Session(
        profile_name=profile or config.get("eks.profile") or None,
        region_name=config.get("eks.region") or None,
    )


def client(service: str, profile: str | None = None, region: str | None = None) -> Any:
    """A boto3 client for ``service``, every call bounded by ``recc.eks.request-timeout``
    (a hung AWS call must not hang a create or the harvester)."""
    if service in {"pricing", "budgets", "ce"}:
        region = "us-east-1"  # global services, served from us-east-1
    timeout = float(config.get("eks.request-timeout", default=30))
    bounded = Config(connect_timeout=timeout, read_timeout=timeout)
    return session(profile).client(service, region_name=region, config=bounded)
