"""The creating process dies midway (SIGKILL: no clean-up runs), and `recc down` from another
process, with no local record, finds the cluster from tags and labels and removes all of it.

Three processes: the emulated platform served on loopback (``python -m recc.testing serve``),
the creator (``RECCCluster(backend="eks")``), and ``recc down``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import kubernetes.client
import kubernetes.config
import psutil
import pytest

pytestmark = pytest.mark.timeout(180)
NAME = "recc-crashed"


def _wait(condition, what: str, timeout: float = 60, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The platform in its own process; yields (its environment, its Popen)."""
    directory = tmp_path_factory.mktemp("served")
    port_file = directory / "platform.env"
    with open(directory / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recc.testing", "serve", "--port-file", str(port_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        _wait(port_file.exists, "the served platform", proc=proc)
        env = {}
        for line in port_file.read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
        yield env, proc
    finally:
        _stop(proc)


def _clients(env: dict[str, str]):
    aws = {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "region_name": env["AWS_DEFAULT_REGION"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }
    # An administrator's view of the API server: the kubeconfig the platform exports.
    api = kubernetes.config.new_client_from_config(config_file=env["KUBECONFIG"])
    return boto3.client("eks", **aws), boto3.client("ec2", **aws), api


def _what_exists(env, eks, ec2, api) -> dict[str, list[str]]:
    cluster = env["DASK_RECC__EKS__CLUSTER_NAME"]
    groups = eks.list_nodegroups(clusterName=cluster)["nodegroups"]
    templates = ec2.describe_launch_templates(
        Filters=[{"Name": "tag:recc:cluster", "Values": [NAME]}]
    )["LaunchTemplates"]
    namespaces = (
        kubernetes.client.CoreV1Api(api)
        .list_namespace(label_selector="app.kubernetes.io/managed-by=recc")
        .items
    )
    dask_clusters = kubernetes.client.CustomObjectsApi(api).list_cluster_custom_object(
        "kubernetes.dask.org", "v1", "daskclusters"
    )["items"]
    return {
        "nodegroups": [g for g in groups if g.startswith(NAME)],
        "launch_templates": [t["LaunchTemplateName"] for t in templates],
        "namespaces": [n.metadata.name for n in namespaces],
        "daskclusters": [d["metadata"]["name"] for d in dask_clusters],
    }


def _dask_processes(platform: subprocess.Popen) -> list[psutil.Process]:
    """The processes of the cluster's Pods (the node agent runs them under the platform)."""
    found = []
    for child in psutil.Process(platform.pid).children(recursive=True):
        try:
            if child.environ().get("HOSTNAME", "").startswith(f"{NAME}-"):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_creator_killed_midway_then_recc_down_leaves_no_orphan(served, tmp_path):
    env, platform = served
    eks, ec2, api = _clients(env)
    creator_env = {**os.environ, **env, "DASK_RECC__EKS__POLL_INTERVAL": "0.3"}
    creator_code = (
        "from recc import RECCCluster\n"
        f"RECCCluster(backend='eks', name={NAME!r}, n_workers=2, worker_memory='1GiB',"
        " scheduler_memory='1GiB')\n"
        "import time; time.sleep(600)\n"  # never reached in this test
    )
    with open(tmp_path / "creator.log", "wb") as log:
        creator = subprocess.Popen(
            [sys.executable, "-c", creator_code],
            env=creator_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Midway: the Kubernetes objects and the node group exist, the waits are under way.
        _wait(
            lambda: _what_exists(env, eks, ec2, api)["daskclusters"] == [NAME],
            "the creator to reach its DaskCluster",
            proc=creator,
        )
        creator.send_signal(signal.SIGKILL)  # no finally, no rollback, no atexit
        creator.wait(10)
    finally:
        _stop(creator)
    left = _what_exists(env, eks, ec2, api)
    assert left["nodegroups"] == [f"{NAME}-default"]
    assert left["launch_templates"] == [f"{NAME}-default"] and NAME in left["namespaces"]
    # The orphan runs: the platform starts its pods without the creator.
    _wait(lambda: _dask_processes(platform), "the orphaned cluster's processes", timeout=60)

    # Another process on "another machine": no local record of the cluster at all.
    down_env = {**os.environ, **env, "DASK_RECC__STATE_DIR": str(tmp_path / "elsewhere")}

    def recc_down_elsewhere() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "recc.cli.main", "down", NAME, "--json"],
            env=down_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    down = recc_down_elsewhere()
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout) == {NAME: "deleted"}
    assert _what_exists(env, eks, ec2, api) == {
        "nodegroups": [],
        "launch_templates": [],
        "namespaces": [],
        "daskclusters": [],
    }
    _wait(lambda: not _dask_processes(platform), "the cluster's processes to stop", timeout=30)

    again = recc_down_elsewhere()
    assert json.loads(again.stdout or "{}").get(NAME, "").startswith(("already", "unknown")), again
    assert not Path(tmp_path / "elsewhere" / "clusters" / NAME).exists()
