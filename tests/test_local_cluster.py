"""RECCCluster and RECCClient on the local backend, with real scheduler and worker processes."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from distributed import Client

from recc import RECCClient, RECCCluster, get_template_path, state
from recc.errors import ClusterNotFound, SpecError
from recc.procs import _ephemeral_start, free_port
from recc.tls import create_cluster_tls


def test_the_issue_example_runs_with_memory_threads_and_resources():
    with RECCCluster(n_workers=2, worker_memory="1GiB", worker_cpu=1) as cluster:
        with RECCClient(cluster) as client:
            assert client.submit(lambda x: x + 1, 1).result() == 2
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
    assert len(workers) == 2
    for worker in workers:
        assert worker["memory_limit"] == 2**30
        assert worker["nthreads"] == 1
        # Every worker advertises its memory in MiB so jobs can bound their tasks.
        assert worker["resources"] == {"MEMORY": 1024}


def test_template_resources_env_and_threads_reach_the_workers():
    spec_path = get_template_path("highmem")
    with RECCCluster(
        spec_path, n_workers=2, env={"RECC_PROBE": "x:y 'z'"}, resources={"MEMORY": 2000, "GPU": 1}
    ) as cluster:
        with Client(cluster) as client:  # plain distributed.Client gets TLS from the cluster
            env = client.run(lambda: os.environ.get("RECC_PROBE"))
            info = client.scheduler_info(n_workers=-1)["workers"].values()
    assert set(env.values()) == {"x:y 'z'"}
    assert all(w["resources"] == {"MEMORY": 2000, "GPU": 1} for w in info)
    assert all(w["nthreads"] == 3 for w in info)  # 3.5 CPUs -> 3 threads
    # distributed caps a worker's limit at what the machine has.
    from distributed.system import MEMORY_LIMIT

    assert all(w["memory_limit"] == min(28 * 2**30, MEMORY_LIMIT) for w in info)


def test_named_template_scale_logs_repr_and_dashboard():
    with RECCCluster("default", n_workers=1, worker_memory="512MiB") as cluster:
        cluster.scale(3)
        cluster.wait_for_workers(3, timeout=60)
        assert len(cluster.scheduler_info["workers"]) == 3
        cluster.scale(1)
        with Client(cluster) as client:
            client.wait_for_workers(1)
            remaining = len(client.scheduler_info(n_workers=-1)["workers"])
        assert remaining == 1
        logs = cluster.get_logs()
        assert "Scheduler" in logs and logs["Scheduler"]
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        text = repr(cluster)
        assert cluster.name in text and "backend='local'" in text and "usd_per_hour=0.00" in text
        assert "estimated $0.00/h" in cluster._repr_html_()


def test_asynchronous_cluster_and_client():
    import asyncio

    async def main() -> int:
        async with RECCCluster(n_workers=1, worker_memory="512MiB", asynchronous=True) as cluster:
            async with RECCClient(cluster, asynchronous=True) as client:
                return await client.submit(sum, [1, 2, 3])

    assert asyncio.run(main()) == 6


def test_scheduler_requires_this_clusters_certificates(tmp_path):
    with RECCCluster(n_workers=1, worker_memory="512MiB") as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        files = state.cluster_dir(cluster.name) / "tls"
        assert stat.S_IMODE(os.stat(files / "key.pem").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(files).st_mode) == 0o700
        # Plain TCP to a TLS-only listener fails.
        with pytest.raises(OSError):
            Client(address.replace("tls://", "tcp://"), timeout=3)
        # Certificates from another cluster's CA are refused.
        other = create_cluster_tls("someone-else", tmp_path / "other")
        with pytest.raises((OSError, ssl.SSLError)):
            Client(address, security=other.security(), timeout=3)
        # Trusting the right CA but showing no client certificate is refused (mutual TLS)...
        no_cert = ssl.create_default_context(cafile=str(files / "ca.pem"))
        no_cert.check_hostname = False
        assert _refused(address, no_cert)
        # ...while the same handshake with the cluster's certificate stays open.
        with_cert = ssl.create_default_context(cafile=str(files / "ca.pem"))
        with_cert.check_hostname = False
        with_cert.load_cert_chain(files / "cert.pem", files / "key.pem")
        assert not _refused(address, with_cert)


def _refused(address: str, context: ssl.SSLContext) -> bool:
    """Whether the server ends a TLS connection made with ``context`` (False: it stays open)."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3) as sock:
            with context.wrap_socket(sock) as tls:
                return tls.recv(1) == b""
    except TimeoutError:
        return False
    except (ssl.SSLError, ConnectionError):
        return True


def test_from_name_in_another_process_leaves_the_cluster_running():
    with RECCCluster(n_workers=1, worker_memory="512MiB") as cluster:
        script = textwrap.dedent(f"""
            from recc import RECCCluster, RECCClient
            cluster = RECCCluster.from_name({cluster.name!r})
            assert cluster.shutdown_on_close is False
            with RECCClient(cluster) as client:
                print(client.submit(lambda x: x * 2, 21).result())
            cluster.close()
        """)
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env=os.environ.copy(),
        )
        assert done.stdout.strip() == "42", done.stderr
        with RECCClient(cluster) as client:  # still there for its creator
            assert client.submit(lambda: 1).result() == 1


def test_two_clusters_side_by_side_are_independent():
    with (
        RECCCluster(n_workers=1, worker_memory="512MiB") as a,
        RECCCluster(n_workers=1, worker_memory="512MiB") as b,
    ):
        assert a.name != b.name and a.scheduler_address != b.scheduler_address
        with RECCClient(a) as ca, RECCClient(b) as cb:
            assert ca.submit(lambda: "a").result() == "a"
            assert cb.submit(lambda: "b").result() == "b"
    assert state.load_all() == []


def test_dead_scheduler_shows_failed_and_down_cleans_up():
    from recc.backends.local import LocalBackend
    from recc.clusters import delete_cluster
    from recc.procs import alive as _alive

    cluster = RECCCluster(n_workers=1, worker_memory="512MiB", shutdown_on_close=False)
    name = cluster.name
    cluster.close()
    backend = LocalBackend()
    record = backend.find(name)
    try:
        os.kill(record.details["scheduler"]["pid"], 9)
        deadline = time.monotonic() + 10
        while backend.status(record).state != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.status(record).state == "failed"
    finally:
        assert delete_cluster(name, backend) == "deleted"
    assert not any(_alive(h) for h in record.details["hosts"])
    with pytest.raises(ClusterNotFound):
        backend.find(name)
    assert delete_cluster(name, backend) == "already deleted"


def test_invalid_spec_fails_before_anything_starts():
    with pytest.raises(SpecError, match="n_workers"):
        RECCCluster(n_workers=0)
    with pytest.raises(SpecError, match="for example"):
        RECCCluster(name="Not_A_DNS_Name", n_workers=1)
    assert state.load_all() == []


def test_failed_start_rolls_back(monkeypatch):
    import recc

    monkeypatch.setattr(recc.config, "get", _failing_timeout(recc.config.get))
    with pytest.raises(recc.BackendError, match="Cluster failed to start"):
        RECCCluster(n_workers=2, worker_memory="512MiB")
    assert state.load_all() == []


def _failing_timeout(real_get):
    """A config where workers get no time to join, so the start fails after processes exist."""

    def get(key, override=None, default=None):
        if key == "local.start-timeout":
            return 0.5
        return real_get(key, override, default)

    return get


def test_quota_refuses_before_anything_is_created():
    import dask.config

    import recc

    with RECCCluster(n_workers=1, worker_memory="512MiB", worker_cpu=1):  # 2 cores in use
        with dask.config.set({"recc.quotas.max-vcpus-per-user": 3}):
            with pytest.raises(recc.QuotaExceeded, match="max-vcpus-per-user=3") as refused:
                RECCCluster(n_workers=2, worker_memory="512MiB", worker_cpu=1)
        assert "uses 2" in str(refused.value)
        assert len(state.load_all()) == 1  # only the first cluster exists


def test_scheduler_ports_come_from_below_the_ephemeral_range():
    """A port from the ephemeral range could be taken by any outgoing connection between its
    choice and the scheduler's bind; below the range only an explicit bind takes it."""
    ports = {free_port() for _ in range(20)}
    assert all(port < _ephemeral_start() for port in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it
