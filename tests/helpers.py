"""Helpers shared by several test modules (fixtures live in conftest.py; these are the plain
functions and classes a test calls or subclasses)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import psutil
from botocore.stub import Stubber
from typer.testing import CliRunner

from recc.cli.main import app


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


@contextmanager
def s3_on_loopback(*buckets: str) -> Iterator[str]:
    """A moto server on 127.0.0.1 holding empty S3 ``buckets``; its endpoint URL. Fake
    credentials and us-east-1 are in ``os.environ`` meanwhile (for module-scoped fixtures,
    which cannot use monkeypatch; processes a test starts inherit them)."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    from moto.server import ThreadedMotoServer  # imports flask: only for the tests that use it

    with mock.patch.dict(os.environ, env):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            for bucket in buckets:
                s3.create_bucket(Bucket=bucket)
            yield endpoint
        finally:
            server.stop()


def run_cli(*args: str) -> tuple[int, str]:
    """``recc ARGS...`` through typer's CliRunner: the exit code and the output. A crash (any
    exception but SystemExit) is raised, so the test shows where, not just a code of 1."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def wait_for(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; its value. Bounded, never a bare sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def processes_under(directory: Path) -> list[psutil.Process]:
    """Processes (other than this one) working in ``directory`` or below it."""
    found = []
    for proc in psutil.process_iter(["pid", "cwd"]):
        if proc.pid != os.getpid() and (proc.info.get("cwd") or "").startswith(str(directory)):
            found.append(proc)
    return found
