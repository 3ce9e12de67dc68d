"""Helpers shared by several test modules (fixtures live in conftest.py; these are the plain
functions and classes a test calls or subclasses)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.stub import Stubber


def offline_client(service: str, region: str = "us-east-1") -> Any:
    """A real boto3 client with credentials that sign requests but can reach no account: for a
    Stubber, which answers before anything is sent."""
    return boto3.client(
        service, region_name=region, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


class StubbedClient:
    """A real boto3 client under botocore's Stubber, for APIs moto lacks or answers slowly.

    Answers are queued, every request is checked against what was expected, and a request with
    nothing queued is an error. The parameters of each ``counting`` request are kept in
    ``calls``, so "the cache was used" is shown by a count, not by a value that happens to
    match. Used as a context manager: activated on entry; on a clean exit, every queued answer
    must have been asked for.

    Example: ``with StubbedClient("ec2", counting="DescribeInstanceTypes") as ec2: ...``
    """

    def __init__(self, service: str, region: str = "us-east-1", counting: str | None = None):
        self.client = offline_client(service, region)
        self.calls: list[dict[str, Any]] = []
        if counting is not None:
            service_id = self.client.meta.service_model.service_id.hyphenize()
            self.client.meta.events.register(
                f"provide-client-params.{service_id}.{counting}",
                lambda params, **_: self.calls.append(params),
            )
        self.stubber = Stubber(self.client)

    def __enter__(self) -> StubbedClient:
        self.stubber.activate()
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            if exc_type is None:
                self.stubber.assert_no_pending_responses()
        finally:
            self.stubber.deactivate()
