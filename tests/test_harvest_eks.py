"""The harvester on the emulated EKS platform: moto for AWS, a real control plane with the
real dask-kubernetes operator, and Pods run as real scheduler and worker processes.

The harvester acts as its own identity: a session of its IAM role, known to the API server by
the role's access entry (the harvester's group, bound by `recc platform install` to its
ClusterRole and Role), so the RBAC RECC renders for it is what the API server enforces.

One scenario, as the issue checks it: the six local cases again (busy, a client connected,
truly idle, protected, a scheduler that hangs, past its max lifetime), plus orphans made by
deleting one part of a cluster by hand, resources without RECC's tags that must be left alone,
and a failure injected midway through a reap that the next pass finishes; then two harvesters
at once. Smaller tests cover the lock, fail-closed discovery and protection marks.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import boto3
import dask.config
import harvest_cases as cases
import kubernetes.client
import pytest
from distributed import Client
from helpers import run_cli, wait_for

from recc import RECCCluster
from recc.clusters import delete_cluster
from recc.errors import BackendError, ClusterNotFound
from recc.harvest import eks as harvest_eks
from recc.harvest.audit import read_reaps
from recc.harvest.manifests import AWS_PERMISSIONS
from recc.harvest.reap import harvest
from recc.kube.client import api_client
from recc.ledger import Ledger
from recc.testing.controlplane import audited_calls
from recc.testing.platform import HARVESTER_GROUP, emulated_platform

FAST = {**cases.FAST, "recc.harvest.unreachable-grace": 0, "recc.harvest.lock-wait": 60}
CLUSTERS = {
    **cases.six_states("recc"),
    "recc-orph-ng": {},  # its node group is deleted by hand
    "recc-orph-ns": {},  # its namespace is deleted by hand
    # Shut down idle by the operator (its autoshutdown deletes the DaskCluster; the timeout is
    # long enough to finish starting): the namespace and node group are left to the harvester.
    "recc-selfidle": {"idle_timeout": "40s"},
}


@pytest.fixture
def platform(recc_home: Path, kubernetes_platform):
    # `recc platform install` made the harvester's namespace (recc); its locks live there.
    with emulated_platform(state_dir=recc_home, kubernetes=kubernetes_platform) as platform:
        yield platform


def make_cluster(name: str, **spec) -> None:
    cases.leave_running(name, backend="eks", **spec)


def foreign_resources(platform) -> dict[str, str]:
    """Look-alikes RECC did not make: no recc:managed-by tag or managed-by label."""
    ec2, eks = boto3.client("ec2"), boto3.client("eks")
    lookalike_tags = [{"Key": "recc:cluster", "Value": "recc-foreign"}]  # but not managed-by
    template = ec2.create_launch_template(
        LaunchTemplateName="recc-foreign-default",
        LaunchTemplateData={"InstanceType": "t3.small"},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": lookalike_tags}],
    )["LaunchTemplate"]["LaunchTemplateId"]
    eks.create_nodegroup(
        clusterName=platform.eks_cluster_name,
        nodegroupName="recc-foreign-default",
        nodeRole=platform.node_role_arn,
        subnets=list(platform.subnets),
        scalingConfig={"minSize": 0, "desiredSize": 0, "maxSize": 1},
        tags={"recc:cluster": "recc-foreign"},
    )
    core = kubernetes.client.CoreV1Api(platform.api_client())
    core.create_namespace(
        {"metadata": {"name": "recc-foreign", "labels": {"recc.io/cluster": "recc-foreign"}}}
    )
    return {"launch_template": template}


def foreign_still_there(platform) -> bool:
    ec2, eks = boto3.client("ec2"), boto3.client("eks")
    templates = ec2.describe_launch_templates(LaunchTemplateNames=["recc-foreign-default"])
    groups = eks.list_nodegroups(clusterName=platform.eks_cluster_name)["nodegroups"]
    return (
        bool(templates["LaunchTemplates"])
        and "recc-foreign-default" in groups
        and "recc-foreign" in namespace_names(platform)
    )


def namespace_names(platform) -> set[str]:
    core = kubernetes.client.CoreV1Api(platform.api_client())
    return {n.metadata.name for n in core.list_namespace().items}


def dask_clusters(platform, namespace: str) -> list[dict]:
    custom = kubernetes.client.CustomObjectsApi(platform.api_client())
    found = custom.list_namespaced_custom_object(
        "kubernetes.dask.org", "v1", namespace, "daskclusters"
    )
    return found["items"]


def harvester_events(platform) -> list[dict]:
    return platform.kubernetes.control_plane.audit_events(group=HARVESTER_GROUP)


def assert_least_privilege_suffices(platform, seen: int) -> None:
    """The API server refused none of the harvester's requests after the first ``seen`` (its
    identity has only the RBAC RECC renders for it), and every AWS call is listed among its
    permissions."""
    events = harvester_events(platform)[seen:]
    calls = audited_calls(events)
    refused = [call for call in calls if call[2] in (401, 403)]
    assert calls and not refused, refused
    made = {(verb, resource) for verb, resource, _ in calls}
    assert {
        ("list", "namespaces"),
        ("get", "secrets"),
        ("get", "pods/portforward"),
        ("create", "configmaps"),
        ("delete", "daskclusters"),
        ("delete", "namespaces"),
    } <= made, made
    aws = {f"{service}:{operation}" for kind, service, operation in platform.calls if kind == "aws"}
    assert aws <= set(AWS_PERMISSIONS), aws - set(AWS_PERMISSIONS)
    assert {"eks:DeleteNodegroup", "ec2:DeleteLaunchTemplate"} <= aws  # reaps were made


def deleted_audits(audits: list[dict]) -> list[dict]:
    return [a for a in audits if a["outcome"] == "deleted"]


def idled_out(platform, cluster: str) -> bool:
    """Whether ``cluster``'s Dask side is gone (its processes too) and its namespace is not."""
    return (
        not dask_clusters(platform, cluster)
        and not [pod for namespace, pod, _ in platform.processes() if namespace == cluster]
        and cluster in namespace_names(platform)
    )


@pytest.mark.timeout(900)  # nine clusters made, reaped and checked on one 2-core machine
def test_harvest_on_the_emulated_platform(platform):
    try:
        first, *others = CLUSTERS
        make_cluster(first, **CLUSTERS[first])  # alone: it fills the instance-type cache
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(make_cluster, n, **CLUSTERS[n]) for n in others]:
                future.result()
        foreign_resources(platform)

        busy = RECCCluster.from_name("recc-busy", backend="eks")
        with Client(busy) as client:
            cases.start_a_long_task(client)
        code, output = run_cli("protect", "recc-protected", "--backend", "eks")
        assert code == 0, output
        # A scheduler that hangs: a scheduler that dies is restarted by its Deployment, one that
        # stops answering (a deadlock, a GC storm) stays Running and is what the harvester meets.
        [scheduler] = [
            pid
            for namespace, pod, pid in platform.processes()
            if namespace == "recc-killed" and "-scheduler-" in pod
        ]
        os.killpg(scheduler, signal.SIGSTOP)
        boto3.client("eks").delete_nodegroup(
            clusterName=platform.eks_cluster_name, nodegroupName="recc-orph-ng-default"
        )
        kubernetes.client.CoreV1Api(platform.api_client()).delete_namespace("recc-orph-ns")
        wait_for(lambda: "recc-orph-ns" not in namespace_names(platform), 120,
                 "namespace recc-orph-ns to be gone")  # fmt: skip
        time.sleep(2.0)  # past recc-expired's 2 s max lifetime and the 1 s idle timeout
        # recc-selfidle's scheduler closes itself, its workers follow, and the operator deletes
        # its DaskCluster: what is left (namespace, node group) is the harvester's to remove.
        wait_for(lambda: idled_out(platform, "recc-selfidle"), 180,
                 "recc-selfidle's scheduler, workers and DaskCluster to go")  # fmt: skip

        with ExitStack() as connected_client:
            # A client stays connected to recc-client until the two harvesters below.
            connected = RECCCluster.from_name("recc-client", backend="eks")
            connected_client.callback(connected.close)
            client = connected_client.enter_context(Client(connected))
            platform.clear_calls()  # from here on, what the harvester calls (and a little more)
            seen = len(harvester_events(platform))
            # A dry run with a long unreachable grace: the killed scheduler is only noted.
            grace = {**FAST, "recc.harvest.unreachable-grace": "1h"}
            with dask.config.set(grace), platform.as_harvester():
                code, dry = run_cli("harvest", "--backend", "eks", "--json")
            assert code == 0, dry
            planned = cases.rows_by_cluster(dry)
            assert planned["recc-killed"]["category"] == "waiting"
            # Its readiness probe fails (a hung process answers nothing): Kubernetes says so.
            assert "the scheduler pod is not Ready" in planned["recc-killed"]["reason"]
            memory = harvest_eks.ConfigMapMemory(platform.api_client).load()
            assert "unreachable_since" in memory["recc-killed"]

            # The real pass, with a failure injected into the first node group deletion.
            platform.inject_failure(
                aws=("eks", "DeleteNodegroup"), code="AccessDeniedException", status=403
            )
            with dask.config.set(FAST), platform.as_harvester():
                code, done = run_cli("harvest", "--backend", "eks", "--yes", "--json")
            first = cases.rows_by_cluster(done)
            assert code == 1  # one reap failed, and the exit code says so

            expected = {
                **cases.six_decisions("recc", "unreachable: the scheduler has not answered"),
                "recc-orph-ng": (
                    "reap",
                    "orphaned",
                    "orphaned: node group recc-orph-ng-default gone",
                ),
                "recc-orph-ns": ("reap", "orphaned", "orphaned: namespace recc-orph-ns gone"),
                "recc-selfidle": ("reap", "unreachable", "unreachable: its DaskCluster is gone"),
            }
            cases.assert_decisions(first, expected)  # the foreign look-alikes are not RECC clusters
            # Reaps go by $/h, then name: recc-expired met the injected failure.
            assert first["recc-expired"]["outcome"].startswith("failed: ")
            assert "AccessDeniedException" in first["recc-expired"]["outcome"]
            for name in (
                "recc-idle",
                "recc-killed",
                "recc-orph-ng",
                "recc-orph-ns",
                "recc-selfidle",
            ):
                assert first[name]["outcome"] == "deleted"
            assert foreign_still_there(platform)

            # The next pass finishes the interrupted reap (recc-expired lost its namespace).
            with dask.config.set(FAST), platform.as_harvester():
                second = harvest("eks", dry_run=False)
            rows = {r.decision.cluster: r for r in second.rows}
            assert set(rows) == {"recc-busy", "recc-client", "recc-protected", "recc-expired"}
            assert rows["recc-expired"].outcome == "deleted"
            assert rows["recc-expired"].decision.reason.startswith("finishing the reap started at ")
            assert "expired at" in rows["recc-expired"].decision.reason
            assert rows["recc-busy"].decision.category == "busy"
            assert rows["recc-client"].decision.category == "in-use"
            assert rows["recc-protected"].decision.category == "protected"
            assert foreign_still_there(platform)

            assert_least_privilege_suffices(platform, seen)

            # Nothing of the reaped clusters is left, on either side.
            reaped = {
                "recc-idle", "recc-killed", "recc-expired", "recc-orph-ng", "recc-orph-ns",
                "recc-selfidle",
            }  # fmt: skip
            groups = set(boto3.client("eks").list_nodegroups(clusterName=platform.eks_cluster_name)[
                "nodegroups"
            ])  # fmt: skip
            templates = {
                t["LaunchTemplateName"]
                for t in boto3.client("ec2").describe_launch_templates()["LaunchTemplates"]
            }
            namespaces = namespace_names(platform)
            for name in reaped:
                assert f"{name}-default" not in groups | templates and name not in namespaces
            assert not [pod for namespace, pod, _ in platform.processes() if namespace in reaped]

            # The busy cluster still computes.
            with Client(busy) as computing:
                assert computing.submit(lambda: 6 * 7, pure=False).result(timeout=60) == 42
                assert any(computing.processing().values())  # the long task still runs
            busy.close()

        # Two harvesters at once, over the two clusters made idle now.
        code, output = run_cli("unprotect", "recc-protected", "--backend", "eks")
        assert code == 0 and "unprotected" in output
        start = threading.Barrier(2)

        def one_pass():
            start.wait()
            with dask.config.set(FAST):
                return harvest("eks", dry_run=False)

        with ThreadPoolExecutor(2) as pool, platform.as_harvester():
            both = [f.result() for f in [pool.submit(one_pass) for _ in range(2)]]
        for name in ("recc-client", "recc-protected"):
            seen = [r for report in both for r in report.rows if r.decision.cluster == name]
            assert [r.outcome for r in seen].count("deleted") == 1, seen
            assert all(r.outcome in ("deleted", "already deleted") for r in seen), seen
            assert {r.decision.category for r in seen} == {"idle"}

        # The audit trail has one reap per cluster (and the failed first try at recc-expired);
        # the ledger says each ended reaped.
        audits = read_reaps()
        deleted = sorted(a["cluster"] for a in audits if a["outcome"] == "deleted")
        assert deleted == sorted(reaped | {"recc-client", "recc-protected"})
        [failure] = [a for a in audits if a["outcome"].startswith("failed")]
        assert failure["cluster"] == "recc-expired"
        assert failure["harvester"]["aws"].startswith("arn:aws:")
        reclaimed = {a["cluster"]: a["usd_per_hour_reclaimed"] for a in deleted_audits(audits)}
        # Orphans without a namespace are priced from what their node groups run; recc-expired
        # had its node group scaled to 0 by the failed first try, so nothing more was running.
        assert reclaimed.pop("recc-expired") == 0.0 and failure["usd_per_hour_reclaimed"] > 0
        assert all(usd > 0 for usd in reclaimed.values()), reclaimed
        ended = {life.record.cluster: life.how for life in Ledger().read_lives()}
        everyone = reaped | {"recc-client", "recc-protected"}
        assert {n: ended[n] for n in everyone} == dict.fromkeys(everyone, "reaped")
    finally:
        for name in CLUSTERS:
            try:
                delete_cluster(name, "eks")
            except (ClusterNotFound, BackendError):
                pass


def test_discovery_that_fails_decides_nothing(platform):
    platform.inject_failure(kube=("list", "namespaces"), times=None)
    with dask.config.set(FAST), platform.as_harvester():
        code, output = run_cli("harvest", "--backend", "eks", "--yes")
    assert code == 2
    assert "cannot list RECC's resources (nothing was decided)" in output


def lock_config_map(platform, name: str) -> dict | None:
    core = kubernetes.client.CoreV1Api(platform.api_client())
    try:
        return core.read_namespaced_config_map(f"recc-harvest-lock-{name}", "recc").to_dict()
    except kubernetes.client.ApiException as e:
        if e.status == 404:
            return None
        raise


def test_the_lock_is_exclusive_and_an_expired_one_is_taken_over(platform):
    with platform.as_harvester():  # the harvester's own RBAC: its Role in namespace recc
        api = api_client()
    first = harvest_eks.ConfigMapLock(api, "recc-lock", "alice@a pid 1")
    second = harvest_eks.ConfigMapLock(api, "recc-lock", "bob@b pid 2")
    with first.held(wait=0) as holder:
        assert holder is None
        with second.held(wait=0) as other:
            assert other == "alice@a pid 1"
    assert lock_config_map(platform, "recc-lock") is None
    # A harvester that died leaves its lock; once the lease runs out, another takes it over.
    with dask.config.set({"recc.harvest.lock-lease": "0"}):
        stale, _ = first.acquire()
        assert stale is not None
    taken, holder = second.acquire()
    assert taken is not None and holder is None
    current = lock_config_map(platform, "recc-lock")
    assert current["data"]["holder"] == "bob@b pid 2"
    first.release(stale)  # no longer its lock: left alone
    assert lock_config_map(platform, "recc-lock")
    second.release(taken)
    assert lock_config_map(platform, "recc-lock") is None


@pytest.mark.parametrize("as_harvester", [True, False], ids=["harvester", "administrator"])
def test_the_lock_needs_the_harvester_namespace(platform, as_harvester):
    # A platform without its harvester namespace: to the harvester's identity the namespace's
    # Role is missing too (403), to an administrator the namespace is (404).
    with dask.config.set({"recc.eks.system-namespace": "recc-system-missing"}):
        if as_harvester:
            with platform.as_harvester():
                api = api_client()
        else:
            api = platform.api_client()
        lock = harvest_eks.ConfigMapLock(api, "recc-x", "alice@a pid 1")
        with pytest.raises(BackendError) as refused:
            lock.acquire()
    assert "namespace recc-system-missing (recc.eks.system-namespace)" in str(refused.value)
    assert "run `recc platform install`" in str(refused.value)


def test_protection_marks_read_from_any_part():
    future = "2999-01-01T00:00:00Z"
    parts = harvest_eks.Parts("c", groups={"default"})
    parts.namespace = {
        "metadata": {
            "name": "c",
            "labels": {"recc.io/protect": "true"},
            "annotations": {"recc.io/created-at": "2026-01-01T00:00:00Z"},
        }
    }
    parts.nodegroups["c-default"] = None
    parts.launch_templates["c-default"] = {
        "LaunchTemplateName": "c-default",
        "Tags": [{"Key": "recc:protect-until", "Value": future}],
    }
    fact = harvest_eks.facts_from_parts(parts)
    assert fact["protected"] is True and fact["protected_until"] is None  # the label: for good
    parts.namespace["metadata"]["labels"] = {}
    fact = harvest_eks.facts_from_parts(parts)
    assert fact["protected"] and fact["protected_until"] == dt.datetime(
        2999, 1, 1, tzinfo=dt.timezone.utc
    )
    assert fact["missing"] == () and fact["created_at"].year == 2026
    parts.launch_templates["c-default"]["Tags"] = [{"Key": "recc.io/protect", "Value": "maybe"}]
    assert "could not be read" in harvest_eks.facts_from_parts(parts)["unreadable"]
    del parts.nodegroups["c-default"]
    parts.launch_templates["c-default"]["Tags"] = []
    assert harvest_eks.facts_from_parts(parts)["missing"] == ("node group c-default",)


def test_scheduler_states_from_kubernetes():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    running = {"status": {"phase": "Running"}}
    state, scheduler = harvest_eks.scheduler_state, harvest_eks._Scheduler
    why, since, gone = state(scheduler(False, running, None))
    assert why.startswith("its DaskCluster is gone") and gone  # nothing brings it back
    assert state(scheduler(True, None, None)) == ("the cluster has no scheduler pod", None, False)
    pending = {"status": {"phase": "Pending"}}
    assert state(scheduler(True, pending, None)) == ("the scheduler pod is Pending", None, False)
    assert state(scheduler(True, running, None)) == (None, None, False)
    not_ready = {
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": "2025-12-31T23:00:00Z"}
            ],
        }
    }
    assert state(scheduler(True, not_ready, None)) == (
        "the scheduler pod is not Ready",
        now - dt.timedelta(hours=1),
        False,
    )
