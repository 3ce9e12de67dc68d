"""Shared fixtures: every test gets its own RECC state and cache directories, and a test that
leaves a process of its clusters running fails (after the stray is stopped); tests that talk
to moto or a Stubber ask for ``fake_aws_credentials``."""

from __future__ import annotations

import os
from pathlib import Path

import dask.config
import psutil
import pytest
from helpers import processes_under

from recc import aws


@pytest.fixture(autouse=True)
def recc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Isolated state and cache; fails the test if a cluster process outlives it."""
    state = tmp_path / "recc-state"
    monkeypatch.setenv("DASK_RECC__STATE_DIR", str(state))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with dask.config.set({"recc.state-dir": str(state)}):
        yield state
    strays = processes_under(state)
    for proc in strays:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    assert not strays, f"processes left running: {[p.pid for p in strays]}"


@pytest.fixture
def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that can reach only moto or a Stubber, in eu-west-1: nothing from the
    machine running the tests (profile, config file, session token, endpoint) is used."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")


@pytest.fixture
def no_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any request for a real AWS client (``recc.aws.client``) fails the test: the code under
    test must use the moto or Stubber client it is given."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a real AWS client was requested: {args} {kwargs}")

    monkeypatch.setattr(aws, "client", refuse)


@pytest.fixture(scope="session")
def kubernetes_platform(tmp_path_factory: pytest.TempPathFactory):
    """The real control plane, the dask-kubernetes operator and the node agent, started once
    per test session and shared by every emulated platform (``emulated_platform(kubernetes=
    ...)``). The binaries are built on first use (``python -m recc.testing assets``)."""
    from recc.testing.platform import kubernetes_platform as start

    with start(tmp_path_factory.mktemp("kubernetes")) as platform:
        yield platform
