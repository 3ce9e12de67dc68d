"""The Kubernetes side of the EKS backend, piece by piece: the EKS token, the caller's
Kubernetes user, the API client's configuration, and generic apply against the real API server
of the session's test platform (``kubernetes_platform`` in conftest.py)."""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
import uuid
from pathlib import Path

import boto3
import dask
import kubernetes.client
import pytest
from helpers import wait_for
from moto import mock_aws

from recc.errors import ConfigError
from recc.kube import apply
from recc.kube.apply import NotManaged, Ref
from recc.kube.auth import eks_token, kubernetes_user, principal_name
from recc.kube.client import api_client, eks_setting, platform_endpoint

MANAGED = {"app.kubernetes.io/managed-by": "recc"}
WAIT = 60.0


@pytest.fixture
def api(kubernetes_platform):
    """An administrator's client of the real API server."""
    with kubernetes_platform.control_plane.api_client() as client:
        yield client


def unique(prefix: str = "apply") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- token and user ------------------------------------------------------------------------


def _decode(token: str) -> urllib.parse.SplitResult:
    assert token.startswith("k8s-aws-v1.")
    payload = token.removeprefix("k8s-aws-v1.")
    return urllib.parse.urlsplit(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    )


def test_token_is_a_presigned_get_caller_identity_bound_to_the_cluster(fake_aws_credentials):
    url = _decode(eks_token("research-dask", boto3.Session(region_name="eu-west-1")))
    query = urllib.parse.parse_qs(url.query)
    assert url.netloc == "sts.eu-west-1.amazonaws.com"
    assert query["Action"] == ["GetCallerIdentity"] and query["Version"] == ["2011-06-15"]
    assert query["X-Amz-Expires"] == ["60"]
    # The cluster name is a signed header, so the token is useless for another cluster.
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0].split(";")
    assert query["X-Amz-Credential"][0].startswith(os.environ["AWS_ACCESS_KEY_ID"] + "/")
    assert "=" not in url.geturl()[-2:]  # padding stripped, as aws eks get-token does


def test_tokens_for_different_clusters_differ(fake_aws_credentials):
    session = boto3.Session(region_name="eu-west-1")
    assert eks_token("a", session) != eks_token("b", session)


@pytest.mark.parametrize(
    "arn, expected",
    [
        (
            "arn:aws:sts::1:assumed-role/AWSReservedSSO_Researcher_0a1b/Alice.Smith@Bank.com",
            "alice.smith-bank.com",
        ),
        ("arn:aws:iam::1:user/bob", "bob"),
        ("arn:aws:iam::1:role/ci/harvester", "harvester"),
        ("arn:aws:iam::123456789012:root", "root"),
    ],
)
def test_kubernetes_user_is_the_sanitised_principal_name(arn, expected):
    assert kubernetes_user(arn) == expected


def test_user_map_wins_by_arn_or_by_name():
    arn = "arn:aws:sts::1:assumed-role/Researcher/alice"
    assert principal_name(arn) == "alice"
    assert kubernetes_user(arn, {arn: "by-arn"}) == "by-arn"
    assert kubernetes_user(arn, {"alice": "by-name"}) == "by-name"


# -- configuration ---------------------------------------------------------------------------


def test_missing_setting_names_the_key_the_file_the_variable_and_terraform():
    with dask.config.set({"recc.eks.node-role-arn": None}):
        with pytest.raises(ConfigError) as info:
            eks_setting("eks.node-role-arn", "arn:aws:iam::1:role/node")
    message = str(info.value)
    assert "recc.eks.node-role-arn is not set" in message
    assert "~/.config/dask/recc.yaml" in message and "DASK_RECC__EKS__NODE_ROLE_ARN" in message
    assert "recc platform configure --from-terraform" in message


def test_endpoint_and_ca_from_config_need_no_aws_call():
    with dask.config.set({"recc.eks.endpoint": "https://k8s.example", "recc.eks.ca-data": "Q0E="}):
        assert platform_endpoint(session=object()).url == "https://k8s.example"


@mock_aws
def test_endpoint_and_ca_come_from_describe_cluster(fake_aws_credentials):
    iam = boto3.client("iam")
    role = iam.create_role(RoleName="eks", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    eks = boto3.client("eks")
    made = eks.create_cluster(name="research", roleArn=role, resourcesVpcConfig={})["cluster"]
    settings = {
        "recc.eks.cluster-name": "research",
        "recc.eks.endpoint": None,
        "recc.eks.ca-data": None,
    }
    with dask.config.set(settings):
        endpoint = platform_endpoint(boto3.Session(region_name="eu-west-1"))
    assert endpoint.url == made["endpoint"]
    assert endpoint.ca_data == made["certificateAuthority"]["data"]


@mock_aws
def test_unknown_eks_cluster_is_a_config_error(fake_aws_credentials):
    settings = {"recc.eks.cluster-name": "nope", "recc.eks.endpoint": None}
    with dask.config.set(settings), pytest.raises(ConfigError, match="'nope': no such EKS cluster"):
        platform_endpoint(boto3.Session(region_name="eu-west-1"))


def test_api_client_authenticates_with_a_fresh_eks_token(kubernetes_platform):
    """Through the emulated EKS cluster: the API server hands the token to EKS's authenticator
    (a webhook replaying the presigned URL to STS, here moto), which maps the caller's IAM
    user to its access entry."""
    from recc.testing import emulated_platform

    with emulated_platform(kubernetes=kubernetes_platform) as platform:
        with api_client(boto3.Session(region_name=platform.region)) as client:
            version = kubernetes.client.VersionApi(client).get_code()
            review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
            )
            header = client.configuration.get_api_key_with_prefix(
                "BearerToken", alias="authorization"
            )
    assert version.git_version.startswith("v1.")
    assert header.startswith("Bearer k8s-aws-v1.")
    assert review.status.user_info.username == platform.caller_arn
    assert "recc-researchers" in review.status.user_info.groups


def test_a_loopback_http_endpoint_is_never_proxied(fake_aws_credentials):
    settings = {"recc.eks.cluster-name": "research", "recc.eks.endpoint": "http://127.0.0.1:1"}
    with dask.config.set(settings), api_client(boto3.Session(region_name="eu-west-1")) as client:
        assert client.configuration.proxy is None


def test_https_endpoint_uses_the_cluster_ca(fake_aws_credentials):
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    settings = {
        "recc.eks.cluster-name": "research",
        "recc.eks.endpoint": "https://k8s.example",
        "recc.eks.ca-data": base64.b64encode(pem.encode()).decode(),
    }
    with dask.config.set(settings), api_client(boto3.Session(region_name="eu-west-1")) as client:
        # A file, which the client's websocket streams (port-forward) read too.
        assert Path(client.configuration.ssl_ca_cert).read_text() == pem
        assert client.configuration.verify_ssl


def test_ca_that_is_not_base64_is_a_config_error(fake_aws_credentials):
    settings = {
        "recc.eks.cluster-name": "research",
        "recc.eks.endpoint": "https://k8s.example",
        "recc.eks.ca-data": "not base64!",
    }
    with dask.config.set(settings), pytest.raises(ConfigError, match="recc.eks.ca-data"):
        api_client(boto3.Session(region_name="eu-west-1"))


# -- apply --------------------------------------------------------------------------------


def _namespace(name: str, labels: dict | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels or MANAGED},
    }


def _ns_ref(name: str) -> Ref:
    return Ref("v1", "Namespace", name)


@pytest.fixture
def namespaces(api):
    """Names for namespaces a test makes; whatever is left of them is deleted afterwards."""
    made: list[str] = []

    def name() -> str:
        made.append(unique())
        return made[-1]

    yield name
    core = kubernetes.client.CoreV1Api(api)
    for left in made:
        try:
            core.delete_namespace(left)
        except kubernetes.client.ApiException as e:
            if e.status != 404:
                raise


def _gone(api, ref: Ref) -> bool:
    return apply.read(api, ref) is None


def test_create_read_list_patch_and_delete_built_in_kinds(api, namespaces):
    ns = namespaces()
    apply.create(api, _namespace(ns))
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": ns, "labels": MANAGED},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "owner", "namespace": ns, "labels": MANAGED},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "owner"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
    }
    stored = apply.create(api, policy)
    apply.create(api, binding)
    assert stored["metadata"]["uid"] and stored["spec"]["policyTypes"] == ["Ingress"]
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    assert rbac.read_namespaced_role_binding("owner", ns).subjects[0].name == "alice"
    apply.patch(api, Ref.of(policy), {"metadata": {"annotations": {"why": "test"}}})
    assert apply.read(api, Ref.of(policy))["metadata"]["annotations"] == {"why": "test"}
    listed = apply.list_objects(
        api, "networking.k8s.io/v1", "NetworkPolicy", ns, "app.kubernetes.io/managed-by=recc"
    )
    assert [Ref.of(p) for p in listed] == [Ref.of(policy)]
    assert apply.delete(api, Ref.of(binding)) == apply.DELETED
    assert apply.delete(api, Ref.of(binding)) == apply.ABSENT
    assert apply.delete(api, _ns_ref(ns)) == apply.DELETED
    # The namespace is finalized by the API server's namespace controller, with what it held.
    assert apply.delete(api, _ns_ref(ns)) in (apply.DELETING, apply.ABSENT)
    wait_for(lambda: _gone(api, _ns_ref(ns)), WAIT, f"namespace {ns} to be gone")
    assert apply.list_objects(api, "networking.k8s.io/v1", "NetworkPolicy", ns) == []


def test_custom_resources_go_through_custom_objects(api, namespaces):
    ns = namespaces()
    apply.create(api, _namespace(ns))
    group = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": "c-gpu", "namespace": ns, "labels": MANAGED},
        "spec": {
            "cluster": "c",  # no such DaskCluster: the operator makes no workers for it
            "worker": {
                "replicas": 1,
                "spec": {"containers": [{"name": "worker", "image": "dask"}]},
            },
        },
    }
    apply.create(api, group)
    apply.patch(api, Ref.of(group), {"spec": {"worker": {"replicas": 3}}})
    custom = kubernetes.client.CustomObjectsApi(api)
    stored = custom.get_namespaced_custom_object(
        "kubernetes.dask.org", "v1", ns, "daskworkergroups", "c-gpu"
    )
    assert stored["spec"]["worker"]["replicas"] == 3
    assert [
        g["metadata"]["name"]
        for g in apply.list_objects(api, "kubernetes.dask.org/v1", "DaskWorkerGroup", ns)
    ] == ["c-gpu"]
    assert apply.delete(api, Ref.of(group)) == apply.DELETED
    wait_for(lambda: _gone(api, Ref.of(group)), WAIT, "the DaskWorkerGroup to be gone")
    apply.delete(api, _ns_ref(ns))


def test_create_of_an_existing_object_is_a_409(api, namespaces):
    ns = namespaces()
    apply.create(api, _namespace(ns))
    with pytest.raises(kubernetes.client.ApiException) as info:
        apply.create(api, _namespace(ns))
    assert info.value.status == 409
    assert json.loads(info.value.body)["reason"] == "AlreadyExists"
    apply.delete(api, _ns_ref(ns))


def test_objects_without_the_managed_by_label_are_never_deleted(api, namespaces):
    ns = namespaces()
    apply.create(api, _namespace(ns, {"team": "risk"}))
    with pytest.raises(NotManaged, match="app.kubernetes.io/managed-by=recc"):
        apply.delete(api, _ns_ref(ns))
    # No delete was sent: the namespace is there and not being deleted.
    kept = kubernetes.client.CoreV1Api(api).read_namespace(ns)
    assert kept.metadata.deletion_timestamp is None and kept.status.phase == "Active"


def test_the_delete_guard_holds_when_the_object_is_replaced_after_its_check(
    api, namespaces, monkeypatch
):
    """Between RECC's check (managed by RECC) and its delete, somebody replaces the object
    with one of their own under the same name: the API server refuses the delete (409: the
    uid precondition fails), RECC looks again, and the foreign object is left alone."""
    ns = namespaces()
    apply.create(api, _namespace(ns))
    core = kubernetes.client.CoreV1Api(api)
    name = "settings"
    ref = Ref("v1", "ConfigMap", name, ns)
    apply.create(
        api,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "labels": MANAGED},
        },
    )
    real_read, replaced = apply.read, []

    def read_then_replace(api_, ref_):
        found = real_read(api_, ref_)
        if ref_ == ref and not replaced:  # only after the first check
            core.delete_namespaced_config_map(name, ns)
            core.create_namespaced_config_map(
                ns, {"metadata": {"name": name, "labels": {"team": "risk"}}, "data": {"k": "v"}}
            )
            replaced.append(True)
        return found

    monkeypatch.setattr(apply, "read", read_then_replace)
    with pytest.raises(NotManaged, match="lacks the label"):
        apply.delete(api, ref)
    kept = core.read_namespaced_config_map(name, ns)
    assert kept.data == {"k": "v"} and kept.metadata.deletion_timestamp is None


def test_delete_errors_other_than_not_found_are_raised(kubernetes_platform, api, namespaces):
    """A caller RBAC lets read namespaces but not delete them gets the API server's 403."""
    ns = namespaces()
    apply.create(api, _namespace(ns))
    reader = unique("namespace-reader")
    rbac = kubernetes.client.RbacAuthorizationV1Api(api)
    role = {
        "metadata": {"name": reader},
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}],
    }
    binding = {
        "metadata": {"name": reader},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": reader}],
    }
    rbac.create_cluster_role(role)
    try:
        rbac.create_cluster_role_binding(binding)
        with kubernetes_platform.control_plane.api_client(user=reader) as as_reader:
            # RBAC's informer may take a moment to see the new binding.
            wait_for(lambda: _can_read(as_reader, _ns_ref(ns)), WAIT, "the reader's access")
            with pytest.raises(kubernetes.client.ApiException) as info:
                apply.delete(as_reader, _ns_ref(ns))
        assert info.value.status == 403
        assert apply.delete(api, _ns_ref(ns)) == apply.DELETED
    finally:
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            try:
                delete(reader)
            except kubernetes.client.ApiException as e:
                if e.status != 404:
                    raise


def _can_read(api, ref: Ref) -> bool:
    try:
        return apply.read(api, ref) is not None
    except kubernetes.client.ApiException as e:
        if e.status == 403:
            return False
        raise


def test_unknown_kinds_are_a_clear_error(api):
    with pytest.raises(LookupError, match="Gizmo"):
        apply.create(api, {"apiVersion": "v1", "kind": "Gizmo", "metadata": {"name": "g"}})
