"""RBAC for real: the researcher and the harvester, each known to the API server by its EKS
access entry (an EKS token signed with its own AWS credentials), are granted what RECC's
Terraform and `recc platform install` give them and refused the rest, by the API server.

kubectl runs with the platform's per-identity kubeconfigs (a credential plugin signs the
token, as `aws eks get-token` does), so what it is told is what RECC is told.
"""

from __future__ import annotations

import subprocess
from typing import Any

import dask.config
import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from recc.kube.client import api_client
from recc.testing import emulated_platform


@pytest.fixture(scope="module")
def platform(kubernetes_platform, tmp_path_factory) -> Any:
    state = tmp_path_factory.mktemp("rbac-state")
    with emulated_platform(kubernetes=kubernetes_platform, state_dir=state) as running:
        yield running


def kubectl(platform, who: str, *args: str) -> subprocess.CompletedProcess[str]:
    binary = platform.kubernetes.control_plane.binaries["kubectl"]
    command = [str(binary), f"--kubeconfig={platform.kubeconfig_of(who)}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def can_i(platform, who: str, *args: str) -> bool:
    done = kubectl(platform, who, "auth", "can-i", *args)
    answer = done.stdout.split(" ")[0].strip()  # "no - <the authorizer's reason>"
    assert answer in ("yes", "no"), done.stdout + done.stderr
    return answer == "yes"


RESEARCHER_MAY = [
    ("create", "daskclusters.kubernetes.dask.org", "-n", "recc-alice-1"),
    ("create", "secrets", "-n", "recc-alice-1"),
    ("create", "pods", "--subresource=portforward", "-n", "recc-alice-1"),
    ("get", "pods", "--subresource=log", "-n", "recc-alice-1"),
    ("create", "rolebindings", "-n", "recc-alice-1"),
    # RBAC cannot select by name or label: an admission policy confines these to recc-*.
    ("create", "namespaces"),
    ("delete", "namespaces"),
    ("list", "namespaces"),
]
RESEARCHER_MAY_NOT = [
    ("get", "secrets", "-n", "kube-system"),
    ("get", "secrets", "-n", "recc"),  # the harvester's namespace is not a cluster's
    ("create", "pods", "-n", "dask-operator"),
    ("create", "clusterrolebindings"),
    ("update", "clusterroles"),
    ("delete", "nodes"),
]


def test_the_researcher_cannot_make_a_namespace_that_is_not_recc_s(platform) -> None:
    done = kubectl(platform, "researcher", "create", "namespace", "team-payroll")
    assert done.returncode != 0
    assert "ValidatingAdmissionPolicy 'recc-researcher-scope'" in done.stderr, done.stderr
    assert "may only write in namespaces named recc-*, not team-payroll" in done.stderr


def test_the_researcher_cannot_read_the_operator_s_secrets(platform) -> None:
    done = kubectl(platform, "researcher", "get", "secrets", "-n", "dask-operator")
    assert done.returncode != 0
    assert "Forbidden" in done.stderr or "forbidden" in done.stderr, done.stderr


def test_recc_s_own_client_is_refused_outside_the_researcher_s_role(platform) -> None:
    # The same client RECC's backend makes (an EKS token for boto3's credentials).
    core = kubernetes.client.CoreV1Api(api_client())
    with pytest.raises(ApiException) as refused:
        core.list_namespaced_secret("kube-system")
    assert refused.value.status == 403
    with pytest.raises(ApiException) as refused:  # RBAC allows it; the admission policy not
        core.delete_namespace("dask-operator")
    assert refused.value.status == 422
    assert "recc-researcher-scope" in refused.value.body
    admin = kubernetes.client.CoreV1Api(platform.api_client())
    assert admin.read_namespace("dask-operator").status.phase == "Active"


HARVESTER_MAY = [
    ("list", "namespaces"),
    ("delete", "namespaces"),
    ("delete", "daskclusters.kubernetes.dask.org", "-n", "recc-alice-1"),
    ("create", "pods", "--subresource=portforward", "-n", "recc-alice-1"),
    ("get", "pods", "--subresource=log", "-n", "recc-alice-1"),
    ("create", "configmaps", "-n", "recc"),  # its locks and memory
]
HARVESTER_MAY_NOT = [
    ("create", "pods", "-n", "recc-alice-1"),
    ("create", "namespaces"),
    ("create", "configmaps", "-n", "recc-alice-1"),
    ("patch", "daskclusters.kubernetes.dask.org", "-n", "recc-alice-1"),
    ("create", "pods", "--subresource=exec", "-n", "recc-alice-1"),
    ("create", "clusterrolebindings"),
]


CAN_I = [
    *[("researcher", True, args) for args in RESEARCHER_MAY],
    *[("researcher", False, args) for args in RESEARCHER_MAY_NOT],
    *[("harvester", True, args) for args in HARVESTER_MAY],
    *[("harvester", False, args) for args in HARVESTER_MAY_NOT],
]


@pytest.mark.parametrize(
    "who, allowed, args",
    CAN_I,
    ids=[
        f"{who} {'may' if allowed else 'may not'} {' '.join(args)}" for who, allowed, args in CAN_I
    ],
)
def test_kubectl_auth_can_i_answers_as_the_role_grants(platform, who, allowed, args) -> None:
    assert can_i(platform, who, *args) is allowed


def test_a_caller_without_an_access_entry_gets_a_clear_error_and_nothing_is_made(
    platform, recc_home
) -> None:
    from recc import RECCCluster
    from recc.errors import BackendError

    auth = platform.kubernetes.auth
    entries = auth.entries
    auth.set_entries([e for e in entries if e.principal_arn != platform.caller_arn])
    try:
        with dask.config.set({"recc.eks.timeouts.nodegroup-active": 30}):
            with pytest.raises(BackendError) as failed:
                RECCCluster(backend="eks", n_workers=1, name="recc-noentry", quiet=True)
    finally:
        auth.set_entries(entries)
    message = str(failed.value)
    assert "does not know your AWS identity (HTTP 401 Unauthorized)" in message, message
    assert "EKS access entry" in message
    core = kubernetes.client.CoreV1Api(platform.api_client())
    assert [n for n in core.list_namespace().items if n.metadata.name == "recc-noentry"] == []
    import boto3

    groups = boto3.client("eks").list_nodegroups(clusterName=platform.eks_cluster_name)
    assert "recc-noentry-default" not in groups["nodegroups"]
