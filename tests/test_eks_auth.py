"""The stand-in for EKS's authenticator and access-policy authorizer (recc.testing.eks_auth):
tokens, access entries and RBAC rule matching on their own, then the webhooks against moto."""

from __future__ import annotations

import base64
import doctest
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

import recc.testing.eks_auth as eks_auth_module
from recc.kube.auth import eks_token
from recc.testing.eks_auth import (
    AccessEntry,
    AccessPolicy,
    EKSAuthWebhooks,
    TokenError,
    authorize,
    decode_token,
    match_entry,
    rule_allows,
    webhook_kubeconfig,
)

CLUSTER = "research-dask"
ACCOUNT = "123456789012"  # moto's default account
REGION = "eu-west-1"

# An excerpt of Kubernetes 1.32's aggregated ClusterRole "admin" (its rules from
# system:aggregate-to-admin, -edit and -view), plus one rule with resourceNames.
ADMIN_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["rolebindings", "roles"],
        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update"],
    },
    {
        "apiGroups": [""],
        "resources": ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
        "verbs": ["create", "delete", "deletecollection", "patch", "update"],
    },
    {
        "apiGroups": [""],
        "resources": ["configmaps", "pods", "services", "serviceaccounts"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": [""],
        "resources": ["events", "pods/log", "pods/status", "resourcequotas"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["kubernetes.dask.org"],
        "resources": ["daskclusters"],
        "resourceNames": ["keep"],
        "verbs": ["get", "delete"],
    },
]
VIEW_RULES = [r for r in ADMIN_RULES if set(r["verbs"]) <= {"get", "list", "watch"}]
ROLE_RULES = {"admin": ADMIN_RULES, "view": VIEW_RULES}

RESEARCHER = AccessEntry(
    f"arn:aws:iam::{ACCOUNT}:user/alice",
    groups=("recc:researchers",),
    policies=(AccessPolicy("AmazonEKSAdminPolicy", ("recc-*",)),),
)
ADMINS = AccessEntry(
    f"arn:aws:iam::{ACCOUNT}:role/platform/Admins",
    policies=(AccessPolicy("AmazonEKSClusterAdminPolicy"),),
)


def _session(key: str = "AKIDEXAMPLE", secret: str = "x", token: str | None = None) -> Any:
    return boto3.Session(
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
        region_name=REGION,
    )


def _token_of(url: str) -> str:
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def _url_of(token: str) -> str:
    encoded = token[len("k8s-aws-v1.") :]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


def _signed_at(url: str) -> datetime:
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    return datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def _resource(verb: str, resource: str, namespace: str = "", **more: str) -> dict[str, str]:
    return {
        "verb": verb,
        "group": "",
        "version": "v1",
        "resource": resource,
        "namespace": namespace,
        **more,
    }


# -- tokens -----------------------------------------------------------------------------------


def test_doctests_hold() -> None:
    assert doctest.testmod(eks_auth_module).failed == 0


def test_a_recc_token_decodes_to_its_presigned_get_caller_identity(fake_aws_credentials) -> None:
    token = eks_token(CLUSTER, _session())
    url = _url_of(token)
    assert decode_token(token, now=_signed_at(url) + timedelta(seconds=5)) == url
    assert url.startswith(f"https://sts.{REGION}.amazonaws.com/?Action=GetCallerIdentity")


def test_a_token_lasts_fifteen_minutes_whatever_x_amz_expires_says(fake_aws_credentials) -> None:
    token = eks_token(CLUSTER, _session())
    signed_at = _signed_at(_url_of(token))
    assert "X-Amz-Expires=60" in _url_of(token)
    decode_token(token, now=signed_at + timedelta(minutes=14, seconds=59))
    with pytest.raises(TokenError, match="X-Amz-Date parameter is expired"):
        decode_token(token, now=signed_at + timedelta(minutes=15, seconds=1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t, u: "k8s-aws-v2." + t[len("k8s-aws-v1.") :], "missing expected 'k8s-aws-v1.'"),
        (lambda t, u: "k8s-aws-v1.not*base64", "bad base64url"),
        (lambda t, u: t + "==", "bad base64url"),
        (lambda t, u: "k8s-aws-v1." + "A" * 5000, "too large"),
        (lambda t, u: _token_of(u.replace("GetCallerIdentity", "AssumeRole")), "action"),
        (lambda t, u: _token_of(u.replace("x-k8s-aws-id", "x-other")), "did not sign the x-k8s"),
        (lambda t, u: _token_of(u.replace("X-Amz-Expires=60", "X-Amz-Expires=901")), "Expires"),
        (lambda t, u: _token_of(u.replace("/?Action", "/sts/?Action")), "unexpected path"),
        (lambda t, u: _token_of(u + "&Action=GetCallerIdentity"), "multiple values"),
        (lambda t, u: _token_of(u + "&RoleArn=x"), "non-whitelisted query parameter"),
        (lambda t, u: _token_of("ftp" + u[len("https") :]), "unexpected scheme"),
    ],
)
def test_malformed_tokens_are_refused(fake_aws_credentials, change, message) -> None:
    token = eks_token(CLUSTER, _session())
    url = _url_of(token)
    with pytest.raises(TokenError, match=message):
        decode_token(change(token, url), now=_signed_at(url))


# -- access entries ---------------------------------------------------------------------------


def test_entries_match_users_and_the_sessions_of_roles() -> None:
    entries = [RESEARCHER, ADMINS]
    assert match_entry(f"arn:aws:iam::{ACCOUNT}:user/alice", entries) is RESEARCHER
    # A session of the role matches the role's entry, which has a path the session lacks.
    assert match_entry(f"arn:aws:sts::{ACCOUNT}:assumed-role/Admins/carol", entries) is ADMINS
    assert match_entry(f"arn:aws:sts::{ACCOUNT}:assumed-role/admins/carol", entries) is ADMINS
    assert match_entry("arn:aws:sts::444455556666:assumed-role/Admins/carol", entries) is None
    assert match_entry(f"arn:aws:iam::{ACCOUNT}:user/Admins", entries) is None  # not the role
    assert match_entry(f"arn:aws:sts::{ACCOUNT}:user/moto", entries) is None


def test_user_names_default_as_eks_sets_them() -> None:
    assert RESEARCHER.username_for() == f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert ADMINS.username == f"arn:aws:sts::{ACCOUNT}:assumed-role/Admins/{{{{SessionName}}}}"
    assert ADMINS.username_for("carol@example.org") == (
        f"arn:aws:sts::{ACCOUNT}:assumed-role/Admins/carol-example.org"
    )
    raw = AccessEntry(ADMINS.principal_arn, username="admin:{{SessionNameRaw}}")
    assert raw.username_for("carol@example.org") == "admin:carol@example.org"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: AccessEntry(f"arn:aws:sts::{ACCOUNT}:assumed-role/R/s"), "STS session"),
        (lambda: AccessEntry(ADMINS.principal_arn, username="system:admin"), "cannot start"),
        (lambda: AccessEntry(ADMINS.principal_arn, username="x{{SessionName}}"), "colon"),
        (lambda: AccessEntry(ADMINS.principal_arn, username="x:{{Account}}"), "placeholder"),
        (lambda: AccessPolicy("AmazonEKSAutoNodePolicy"), "not modelled"),
        (lambda: AccessPolicy("AmazonEKSViewPolicy", ("re*cc",)), "may only end"),
        (lambda: AccessPolicy("AmazonEKSViewPolicy", ()), "at least one"),
        (
            lambda: AccessEntry(
                ADMINS.principal_arn,
                policies=(AccessPolicy("AmazonEKSViewPolicy"),) * 2,
            ),
            "once",
        ),
    ],
)
def test_what_eks_refuses_in_an_entry_is_refused(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_one_principal_gets_one_entry() -> None:
    hooks = EKSAuthWebhooks(CLUSTER)
    same_role = AccessEntry(f"arn:aws:iam::{ACCOUNT}:role/Admins")
    with pytest.raises(ValueError, match="one principal"):
        hooks.set_entries([ADMINS, same_role])
    hooks.set_entries([ADMINS])
    assert hooks.entries == (ADMINS,)


# -- access policies and RBAC rules -----------------------------------------------------------


def test_the_namespaced_admin_policy_allows_its_namespaces_only() -> None:
    create_pod = _resource("create", "pods", "recc-a")
    assert authorize(create_pod, RESEARCHER, ROLE_RULES)[0]
    assert not authorize({**create_pod, "namespace": "kube-system"}, RESEARCHER, ROLE_RULES)[0]
    assert not authorize({**create_pod, "namespace": "recc"}, RESEARCHER, ROLE_RULES)[0]
    # Its own namespace object is in the namespace (as for a RoleBinding); others are not.
    assert authorize(
        _resource("get", "namespaces", "recc-a", name="recc-a"), RESEARCHER, ROLE_RULES
    )[0]
    # Cluster-scoped requests, and requests across all namespaces, are never in its scope.
    assert not authorize(_resource("create", "namespaces"), RESEARCHER, ROLE_RULES)[0]
    assert not authorize(_resource("list", "namespaces"), RESEARCHER, ROLE_RULES)[0]
    assert not authorize(_resource("list", "pods"), RESEARCHER, ROLE_RULES)[0]
    assert not authorize({"path": "/healthz", "verb": "get"}, RESEARCHER, ROLE_RULES)[0]


def test_subresources_match_as_in_rbac() -> None:
    logs = _resource("get", "pods", "recc-a", subresource="log", name="scheduler-0")
    assert authorize(logs, RESEARCHER, ROLE_RULES)[0]
    only_pods = {"admin": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    assert not authorize(logs, RESEARCHER, only_pods)[0]
    assert rule_allows({"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]}, logs)
    assert rule_allows({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, logs)
    assert not rule_allows({"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]}, logs)
    # Status is its own subresource: 'pods/status' read is granted, its update is not.
    status = _resource("update", "pods", "recc-a", subresource="status")
    assert not authorize(status, RESEARCHER, ROLE_RULES)[0]


def test_resource_names_restrict_a_rule_to_those_objects() -> None:
    dask = {
        "group": "kubernetes.dask.org",
        "version": "v1",
        "resource": "daskclusters",
        "namespace": "recc-a",
    }
    assert authorize({**dask, "verb": "get", "name": "keep"}, RESEARCHER, ROLE_RULES)[0]
    assert not authorize({**dask, "verb": "get", "name": "other"}, RESEARCHER, ROLE_RULES)[0]
    assert not authorize({**dask, "verb": "list"}, RESEARCHER, ROLE_RULES)[0]  # no name
    assert not authorize({**dask, "verb": "create", "name": "keep"}, RESEARCHER, ROLE_RULES)[0]


def test_cluster_admin_allows_everything_and_view_only_reads() -> None:
    assert authorize(_resource("create", "namespaces"), ADMINS, {})[0]
    assert authorize({"nonResourceAttributes": {"path": "/metrics", "verb": "get"}}, ADMINS, {})[0]
    viewer = AccessEntry(ADMINS.principal_arn, policies=(AccessPolicy("AmazonEKSViewPolicy"),))
    assert authorize(_resource("list", "pods"), viewer, ROLE_RULES)[0]  # cluster scope
    assert not authorize(_resource("create", "pods", "recc-a"), viewer, ROLE_RULES)[0]
    assert authorize(_resource("get", "pods"), None, ROLE_RULES) == (False, "no access entry")


def test_authorize_takes_a_whole_review_spec_and_kubernetes_client_rules() -> None:
    spec = {"user": "alice", "resourceAttributes": _resource("delete", "pods", "recc-b")}
    snake = {
        "admin": [
            {
                "api_groups": [""],
                "resources": ["pods"],
                "verbs": ["delete"],
                "resource_names": None,
                "non_resource_urls": None,
            }
        ]
    }
    allowed, reason = authorize(spec, RESEARCHER, snake)
    assert allowed and "AmazonEKSAdminPolicy" in reason
    with pytest.raises(KeyError, match="admin"):
        authorize(spec, RESEARCHER, {})


def test_webhook_kubeconfig_is_what_kube_apiserver_reads(tmp_path: Path) -> None:
    path = webhook_kubeconfig("http://127.0.0.1:9999/authorize", tmp_path / "a" / "authz.yaml")
    config = yaml.safe_load(path.read_text())
    assert config["kind"] == "Config"
    assert config["clusters"] == [
        {"name": "eks-auth", "cluster": {"server": "http://127.0.0.1:9999/authorize"}}
    ]
    assert config["users"] == [{"name": "kube-apiserver", "user": {}}]
    (context,) = config["contexts"]
    assert config["current-context"] == context["name"]
    assert context["context"] == {"cluster": "eks-auth", "user": "kube-apiserver"}
    with pytest.raises(ValueError, match="loopback"):
        webhook_kubeconfig("http://10.0.0.1:9999/authorize", tmp_path / "b.yaml")


# -- the webhooks, against moto ---------------------------------------------------------------


@pytest.fixture
def moto_endpoint(fake_aws_credentials, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server on loopback, which every boto3 client (and so eks_token) uses."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        yield endpoint
    finally:
        try:  # moto's state is process-wide: leave none for later tests
            reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
            _OPENER.open(reset, timeout=30).close()
        finally:
            server.stop()


@pytest.fixture
def webhooks() -> Iterator[EKSAuthWebhooks]:
    hooks = EKSAuthWebhooks(CLUSTER, [RESEARCHER, ADMINS], lambda name: ROLE_RULES[name])
    hooks.start()
    try:
        yield hooks
    finally:
        hooks.stop()


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with _OPENER.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _token_review(hooks: EKSAuthWebhooks, token: str) -> dict[str, Any]:
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["https://kubernetes.default.svc"]},
    }
    status, answer = _post(f"{hooks.url}/authenticate", review)
    assert status == 200
    assert (answer["apiVersion"], answer["kind"]) == ("authentication.k8s.io/v1", "TokenReview")
    return answer["status"]


def _access_review(hooks: EKSAuthWebhooks, user: dict[str, Any], **attributes: Any) -> dict:
    spec = {
        "user": user["username"],
        "uid": user.get("uid", ""),
        "groups": user.get("groups", []),
        "extra": user.get("extra", {}),
        **attributes,
    }
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
    status, answer = _post(f"{hooks.url}/authorize", review)
    assert status == 200
    assert answer["kind"] == "SubjectAccessReview"
    return answer["status"]


def _iam_user(name: str) -> Any:
    iam = boto3.client("iam", region_name=REGION)
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return _session(key["AccessKeyId"], key["SecretAccessKey"])


def test_an_iam_user_with_an_entry_is_authenticated(moto_endpoint, webhooks) -> None:
    alice = _iam_user("alice")
    status = _token_review(webhooks, eks_token(CLUSTER, alice))
    assert status["authenticated"] is True
    user = status["user"]
    assert user["username"] == f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert user["groups"] == ["recc:researchers", "system:authenticated"]
    assert user["uid"].startswith(f"aws-iam-authenticator:{ACCOUNT}:")
    assert user["extra"]["arn"] == [f"arn:aws:iam::{ACCOUNT}:user/alice"]
    assert user["extra"]["accessKeyId"] == [alice.get_credentials().access_key]


def test_a_role_session_is_authenticated_by_its_roles_entry(moto_endpoint, webhooks) -> None:
    iam = boto3.client("iam", region_name=REGION)
    iam.create_role(RoleName="Admins", Path="/platform/", AssumeRolePolicyDocument="{}")
    credentials = boto3.client("sts", region_name=REGION).assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT}:role/platform/Admins", RoleSessionName="carol@example.org"
    )["Credentials"]
    carol = _session(
        credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"]
    )
    status = _token_review(webhooks, eks_token(CLUSTER, carol))
    assert status["authenticated"] is True
    assert status["user"]["username"] == (
        f"arn:aws:sts::{ACCOUNT}:assumed-role/Admins/carol-example.org"
    )
    assert status["user"]["groups"] == ["system:authenticated"]
    assert status["user"]["extra"]["sessionName"] == ["carol@example.org"]
    assert status["user"]["extra"]["canonicalArn"] == [f"arn:aws:iam::{ACCOUNT}:role/Admins"]


def test_callers_without_an_entry_are_not_authenticated(moto_endpoint, webhooks) -> None:
    bob = _iam_user("bob")  # a real IAM user, but no access entry
    status = _token_review(webhooks, eks_token(CLUSTER, bob))
    assert status["authenticated"] is False
    assert f"arn:aws:iam::{ACCOUNT}:user/bob has no access entry" in status["error"]
    # An access key moto does not know: STS answers with its default identity, not an entry's.
    status = _token_review(webhooks, eks_token(CLUSTER, _session("AKIAUNKNOWNKEY000000")))
    assert status["authenticated"] is False
    assert "no access entry" in status["error"]
    status = _token_review(webhooks, "not-an-eks-token")
    assert status == {"authenticated": False, "error": status["error"]}
    assert "k8s-aws-v1." in status["error"]


def test_removing_an_entry_revokes_access(moto_endpoint, webhooks) -> None:
    token = eks_token(CLUSTER, _iam_user("alice"))
    assert _token_review(webhooks, token)["authenticated"] is True
    webhooks.set_entries([ADMINS])
    assert _token_review(webhooks, token)["authenticated"] is False


def test_a_failed_replay_is_not_authenticated(fake_aws_credentials, webhooks, monkeypatch) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
        status = _token_review(webhooks, eks_token(CLUSTER, _session()))
    assert status["authenticated"] is False
    assert status["error"].startswith("sts getCallerIdentity failed: error during GET")


def test_access_reviews_allow_or_have_no_opinion(moto_endpoint, webhooks) -> None:
    user = _token_review(webhooks, eks_token(CLUSTER, _iam_user("alice")))["user"]
    allowed = _access_review(
        webhooks, user, resourceAttributes=_resource("create", "pods", "recc-a")
    )
    assert allowed["allowed"] is True and "AmazonEKSAdminPolicy" in allowed["reason"]
    for attributes in (
        {"resourceAttributes": _resource("create", "pods", "kube-system")},
        {"resourceAttributes": _resource("create", "namespaces")},
        {"nonResourceAttributes": {"path": "/version", "verb": "get"}},
    ):
        status = _access_review(webhooks, user, **attributes)
        assert status["allowed"] is False
        assert "denied" not in status  # no opinion: RBAC decides
    # The same name without the authenticator's extra (impersonation, a client certificate)
    # gets RBAC alone, as on EKS.
    bare = {"username": user["username"], "groups": user["groups"]}
    status = _access_review(webhooks, bare, resourceAttributes=_resource("get", "pods", "recc-a"))
    assert status["allowed"] is False and "denied" not in status


def test_unreadable_cluster_roles_are_an_evaluation_error(moto_endpoint) -> None:
    def unreadable(name: str) -> list[dict[str, Any]]:
        raise ConnectionError(f"cannot read ClusterRole {name}")

    with EKSAuthWebhooks(CLUSTER, [RESEARCHER], unreadable) as hooks:
        user = _token_review(hooks, eks_token(CLUSTER, _iam_user("alice")))["user"]
        status = _access_review(hooks, user, resourceAttributes=_resource("get", "pods", "recc-a"))
    assert status["allowed"] is False and "denied" not in status
    assert "cannot read ClusterRole admin" in status["evaluationError"]


def test_the_server_answers_reviews_by_kind_and_refuses_the_rest(webhooks, tmp_path) -> None:
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}
    status, answer = _post(f"{webhooks.url}/authorize", review)
    assert status == 400 and "SubjectAccessReview" in answer["error"]
    status, answer = _post(f"{webhooks.url}/", review)
    assert status == 200 and answer["status"]["authenticated"] is False
    status, answer = _post(f"{webhooks.url}/", {"kind": "Pod"})
    assert status == 400
    with _OPENER.open(f"{webhooks.url}/healthz", timeout=30) as response:
        assert response.read() == b"ok"
    authentication, authorization = webhooks.kubeconfigs(tmp_path)
    servers = [
        yaml.safe_load(p.read_text())["clusters"][0]["cluster"]["server"]
        for p in (authentication, authorization)
    ]
    assert servers == [f"{webhooks.url}/authenticate", f"{webhooks.url}/authorize"]


def test_stopping_closes_the_port() -> None:
    hooks = EKSAuthWebhooks(CLUSTER).start()
    try:
        url = hooks.url
    finally:
        hooks.stop()
    hooks.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(f"{url}/healthz", timeout=5)
