"""EKS's authenticator and access-policy authorizer, as webhooks of a real kube-apiserver.

On EKS, the API server accepts the bearer token ``aws eks get-token`` makes (and
:func:`recc.kube.auth.eks_token` makes): ``k8s-aws-v1.`` + base64url of a presigned STS
``GetCallerIdentity`` URL that signs the header ``x-k8s-aws-id: <cluster name>``. EKS replays the
URL to learn the caller's IAM identity, maps it through the cluster's *access entries* (principal
ARN -> Kubernetes user name and groups), and authorizes with the entries' *access policies* in a
webhook authorizer of its own, next to RBAC. :class:`EKSAuthWebhooks` is that pair for the test
control plane (:mod:`recc.testing.controlplane`), with moto standing in for STS: kube-apiserver
sends it ``TokenReview`` (``--authentication-token-webhook-config-file``) and
``SubjectAccessReview`` (``--authorization-webhook-config-file``) requests, both
``--...-webhook-version=v1``, through the kubeconfig :func:`webhook_kubeconfig` writes.

What is modelled, and how (the EKS user guide's "Create access entries", "Associate access
policies" and "Review access policy permissions"; aws-iam-authenticator's token verifier):

- The token (:func:`decode_token`): the ``k8s-aws-v1.`` prefix, unpadded base64url, at most
  4 KiB; a URL of path ``/`` whose query holds only the parameters of a presigned
  ``Action=GetCallerIdentity`` (each once); ``x-k8s-aws-id`` among ``X-Amz-SignedHeaders``;
  ``X-Amz-Expires`` between 0 and 900. A token expires 15 minutes after its ``X-Amz-Date``
  whatever its ``X-Amz-Expires`` (60, as the CLI and RECC sign it): that is how EKS behaves, and
  aws-iam-authenticator says why (STS ignores ``X-Amz-Expires`` on these URLs).
- The identity: the URL is replayed with a GET carrying ``x-k8s-aws-id: <this cluster's name>``
  (10 s timeout, no redirects, no proxy); the answer's ``Arn``, ``Account`` and ``UserId`` (XML,
  or JSON as real STS answers ``Accept: application/json``) are the caller.
- Access entries (:class:`AccessEntry`, :func:`match_entry`): an entry for the IAM role
  ``arn:aws:iam::A:role/[path/]R`` matches its sessions ``arn:aws:sts::A:assumed-role/R/S``; an
  entry for an IAM user matches that user. A principal is its partition, account, kind and name,
  compared without case and without path (IAM names are unique in an account whatever their
  path or case). STS session ARNs cannot be entries. The user name defaults as EKS sets it: the
  user's ARN, or ``arn:aws:sts::A:assumed-role/R/{{SessionName}}`` (the role's path dropped) for
  a role; ``{{SessionName}}`` is the session name with ``@`` made ``-``, ``{{SessionNameRaw}}``
  the session name as it is. A custom name cannot start with ``system:``, ``eks:``, ``aws:``,
  ``amazon:`` or ``iam:``, and needs a colon before a session-name placeholder. The user's
  groups are the entry's groups plus ``system:authenticated``; its uid is
  ``aws-iam-authenticator:<account>:<user id>``; its extra holds ``arn``, ``canonicalArn``,
  ``sessionName``, ``accessKeyId`` and ``principalId``, as aws-iam-authenticator sets them.
- Access policies (:class:`AccessPolicy`, :func:`authorize`): AmazonEKSClusterAdminPolicy,
  AmazonEKSAdminPolicy, AmazonEKSEditPolicy and AmazonEKSViewPolicy, by the rules of the
  Kubernetes ClusterRoles they resemble (``cluster-admin``, ``admin``, ``edit``, ``view``; the
  user guide says the policies are "similar to" these), read from the API server through the
  callable given to :class:`EKSAuthWebhooks`. Rules match with RBAC's semantics (verbs, API
  groups, resources with ``resource/subresource`` and ``*/subresource``, resource names,
  non-resource URLs with a trailing ``*``). A cluster-scoped policy applies everywhere; a
  namespaced one (names, or prefixes ending in ``*`` such as ``recc-*``) only to requests in a
  matching namespace, as a RoleBinding would: never to cluster-scoped requests, requests across
  all namespaces or non-resource URLs. The authorizer answers ``allowed: true`` when a policy
  allows, else ``allowed: false`` without ``denied``: no opinion, so RBAC (the entry's groups,
  bound by ``recc platform install``) decides. Only users the authenticator made (their extra
  ``arn``, with the user name the entry gives it) get access policies: impersonated users and
  client certificates have RBAC alone, as the user guide says of impersonation.
- Entries can be replaced while running (:meth:`EKSAuthWebhooks.set_entries`), as access entries
  can be deleted or changed; kube-apiserver's webhook caches (``--...-cache-ttl``) delay the
  effect, as EKS's own propagation does.

What is not modelled:

- Signatures: moto does not check them, so any well-formed token of a known access key passes.
  moto also routes a request, and finds its caller, by the ``Authorization`` header, which a
  presigned URL has in its query: the replay therefore also sends the URL's own credential and
  signature as the equivalent SigV4 ``Authorization`` header (with ``X-Amz-Date`` and any
  ``X-Amz-Security-Token``). Real STS would refuse a request signed both ways; this replays
  to moto only. The STS host is not checked against the partition's STS endpoints (moto is on
  loopback, over http).
- The policies' exact rule lists: the ClusterRoles here are the live, aggregated ones, so they
  also grant what CRD roles labelled ``aggregate-to-admin`` (or edit, view) add, and a few rules
  EKS's fixed lists lack (``pods/eviction``, ``serviceaccounts/token``, ``leases``).
- Other access policies (AmazonEKSAdminViewPolicy, AmazonEKSSecretReaderPolicy, the Auto Mode
  and node policies), entry types other than STANDARD (nodes, Fargate), the ``aws-auth``
  ConfigMap, OIDC identity providers, EKS Pod Identity, and access-policy permissions granted
  through the entry's Kubernetes groups (a group name grants only what RBAC binds to it).
- Token audiences: no ``status.audiences`` is returned, so kube-apiserver takes its own.

Example
-------
>>> entries = [
...     AccessEntry("arn:aws:iam::111122223333:role/Admins",
...                 policies=(AccessPolicy("AmazonEKSClusterAdminPolicy"),)),
...     AccessEntry("arn:aws:iam::111122223333:role/teams/Researcher", groups=("recc:researchers",),
...                 policies=(AccessPolicy("AmazonEKSAdminPolicy", ("recc-*",)),)),
... ]
>>> match_entry("arn:aws:sts::111122223333:assumed-role/Researcher/alice@example.org",
...             entries).username_for("alice@example.org")
'arn:aws:sts::111122223333:assumed-role/Researcher/alice-example.org'
>>> hooks = EKSAuthWebhooks("research-dask", entries, cluster_role_rules)  # doctest: +SKIP
>>> with hooks:  # doctest: +SKIP
...     with ControlPlane(Path("/tmp/cp"), webhooks=hooks.kubeconfigs(Path("/tmp/cp"))) as cp:
...         ...  # EKS tokens of moto's IAM users and roles now work against cp.url
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "k8s-aws-v1."
CLUSTER_ID_HEADER = "x-k8s-aws-id"
MAX_TOKEN_BYTES = 4 * 1024
# Presigned STS URLs are honoured for 15 minutes after X-Amz-Date, whatever X-Amz-Expires says.
TOKEN_LIFETIME = timedelta(minutes=15)
MAX_EXPIRES_SECONDS = 900
STS_TIMEOUT = 10.0
AUTHENTICATED_GROUP = "system:authenticated"
UID_PREFIX = "aws-iam-authenticator"

# EKS access policy -> the Kubernetes ClusterRole whose rules stand in for its permissions.
POLICY_ROLES = {
    "AmazonEKSClusterAdminPolicy": "cluster-admin",
    "AmazonEKSAdminPolicy": "admin",
    "AmazonEKSEditPolicy": "edit",
    "AmazonEKSViewPolicy": "view",
}
# The bootstrap ClusterRole cluster-admin, which never changes: no need to read it.
CLUSTER_ADMIN_RULES: tuple[Mapping[str, Any], ...] = (
    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
    {"nonResourceURLs": ["*"], "verbs": ["*"]},
)

_QUERY_PARAMETERS = {
    "action",
    "version",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-security-token",
    "x-amz-signature",
    "x-amz-signedheaders",
}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_ARN = re.compile(
    r"arn:(?P<partition>[a-z-]+):(?P<service>iam|sts)::(?P<account>\d{12}):(?P<rest>.+)"
)
_RESERVED_USER_PREFIXES = ("system:", "eks:", "aws:", "amazon:", "iam:")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_SESSION_PLACEHOLDERS = ("SessionName", "SessionNameRaw")


class TokenError(ValueError):
    """A token that is not an EKS token, or no longer valid: the request is not authenticated."""

    def __init__(self, message: str) -> None:
        super().__init__(f"input token was not properly formatted: {message}")


class STSError(RuntimeError):
    """Replaying the token's URL did not yield a caller identity."""

    def __init__(self, message: str) -> None:
        super().__init__(f"sts getCallerIdentity failed: {message}")


# -- tokens -----------------------------------------------------------------------------------


def decode_token(token: str, now: datetime | None = None) -> str:
    """The presigned STS URL inside EKS token ``token``, checked as EKS checks it.

    Raises :class:`TokenError` for a wrong prefix, bad base64, a URL that is not a presigned
    ``GetCallerIdentity``, ``x-k8s-aws-id`` missing from ``X-Amz-SignedHeaders``, or a token
    older than 15 minutes (from ``X-Amz-Date``) at ``now`` (default: the current UTC time).
    Nothing is sent anywhere.

    >>> url = ("https://sts.eu-west-1.amazonaws.com/?Action=GetCallerIdentity"
    ...        "&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256"
    ...        "&X-Amz-Credential=AKIDEXAMPLE%2F20250101%2Feu-west-1%2Fsts%2Faws4_request"
    ...        "&X-Amz-Date=20250101T120000Z&X-Amz-Expires=60"
    ...        "&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&X-Amz-Signature=0123abcd")
    >>> def token_of(url):
    ...     return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
    >>> at = datetime(2025, 1, 1, 12, 14, tzinfo=timezone.utc)
    >>> decode_token(token_of(url), now=at) == url
    True
    >>> def why(token, now=at):
    ...     try:
    ...         decode_token(token, now)
    ...     except TokenError as e:
    ...         print(e)
    >>> why(token_of(url), now=datetime(2025, 1, 1, 12, 16, tzinfo=timezone.utc))
    input token was not properly formatted: X-Amz-Date parameter is expired (15 minute expiration) 20250101T120000Z
    >>> why(token_of(url).replace("k8s-aws-v1.", "k8s-aws-v2."))
    input token was not properly formatted: token is missing expected 'k8s-aws-v1.' prefix
    >>> why(token_of(url.replace("host%3Bx-k8s-aws-id", "host")))
    input token was not properly formatted: client did not sign the x-k8s-aws-id header in the pre-signed URL
    >>> why(token_of(url.replace("GetCallerIdentity", "AssumeRole")))
    input token was not properly formatted: unexpected action parameter in pre-signed URL
    """  # noqa: E501
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("token is too large")
    if not token.startswith(TOKEN_PREFIX):
        raise TokenError(f"token is missing expected {TOKEN_PREFIX!r} prefix")
    encoded = token[len(TOKEN_PREFIX) :]
    if not _BASE64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
        raise TokenError("bad base64url encoding")
    try:
        url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as e:
        raise TokenError(f"bad base64url encoding ({e})") from e

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise TokenError(f"unexpected scheme {parts.scheme!r} in pre-signed URL")
    if parts.path != "/":
        raise TokenError("unexpected path in pre-signed URL")
    try:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError as e:
        raise TokenError("malformed query parameter") from e
    query: dict[str, str] = {}
    for key, value in pairs:
        lower = key.lower()
        if lower not in _QUERY_PARAMETERS:
            raise TokenError(f"non-whitelisted query parameter {key!r}")
        if lower in query:
            raise TokenError("query parameter with multiple values not supported")
        query[lower] = value
    if query.get("action") != "GetCallerIdentity":
        raise TokenError("unexpected action parameter in pre-signed URL")
    signed = [h.strip().lower() for h in query.get("x-amz-signedheaders", "").split(";")]
    if CLUSTER_ID_HEADER not in signed:
        raise TokenError(
            f"client did not sign the {CLUSTER_ID_HEADER} header in the pre-signed URL"
        )
    expires = query.get("x-amz-expires", "")
    if not expires.isdigit() or int(expires) > MAX_EXPIRES_SECONDS:
        raise TokenError(f"invalid X-Amz-Expires parameter in pre-signed URL: {expires!r}")
    date = query.get("x-amz-date", "")
    if not date:
        raise TokenError("X-Amz-Date parameter must be present in pre-signed URL")
    try:
        signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError as e:
        raise TokenError(f"error parsing X-Amz-Date parameter {date}") from e
    now = now or datetime.now(timezone.utc)
    if now > signed_at + TOKEN_LIFETIME:
        minutes = TOKEN_LIFETIME.total_seconds() / 60
        raise TokenError(
            f"X-Amz-Date parameter is expired ({minutes:.0f} minute expiration) {date}"
        )
    return url


@dataclass(frozen=True)
class Identity:
    """The caller STS named: what ``GetCallerIdentity`` answered for the token's URL."""

    arn: str
    account: str
    user_id: str
    session_name: str = ""
    access_key_id: str = ""

    @property
    def canonical_arn(self) -> str:
        """The IAM ARN of the principal: an assumed role's session becomes its role (no path).

        >>> Identity("arn:aws:sts::111122223333:assumed-role/R/s", "111122223333", "AROA1").canonical_arn
        'arn:aws:iam::111122223333:role/R'
        """  # noqa: E501
        return canonical_arn(self.arn)


def parse_caller_identity(body: bytes, access_key_id: str = "") -> Identity:
    """The :class:`Identity` in a ``GetCallerIdentity`` answer, XML (moto, STS by default) or
    JSON (STS asked for ``application/json``); :class:`STSError` for anything else.

    >>> parse_caller_identity(b'''<GetCallerIdentityResponse
    ...   xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><GetCallerIdentityResult>
    ...   <UserId>AROAEXAMPLE:alice</UserId><Account>111122223333</Account>
    ...   <Arn>arn:aws:sts::111122223333:assumed-role/R/alice</Arn>
    ...   </GetCallerIdentityResult></GetCallerIdentityResponse>''').session_name
    'alice'
    """
    fields: dict[str, str] = {}
    text = body.strip()
    if text.startswith(b"{"):
        try:
            result = json.loads(text)["GetCallerIdentityResponse"]["GetCallerIdentityResult"]
            fields = {k: str(result[k]) for k in ("Arn", "Account", "UserId")}
        except (ValueError, KeyError, TypeError) as e:
            raise STSError(f"unexpected answer (not a GetCallerIdentity response): {e}") from e
    else:
        try:
            root = ElementTree.fromstring(text)
        except ElementTree.ParseError as e:
            raise STSError(f"unreadable answer: {e}") from e
        result_node = root.find("{*}GetCallerIdentityResult")
        if not root.tag.endswith("GetCallerIdentityResponse") or result_node is None:
            raise STSError(f"unexpected answer (not a GetCallerIdentity response): {root.tag}")
        for key in ("Arn", "Account", "UserId"):
            node = result_node.find(f"{{*}}{key}")
            if node is None or not (node.text or "").strip():
                raise STSError(f"the GetCallerIdentity answer has no {key}")
            fields[key] = (node.text or "").strip()
    parts = fields["UserId"].split(":")
    if len(parts) > 2:
        raise STSError(f"malformed UserID {fields['UserId']!r}")
    return Identity(
        arn=fields["Arn"],
        account=fields["Account"],
        user_id=parts[0],
        session_name=parts[1] if len(parts) == 2 else "",
        access_key_id=access_key_id,
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def replay(url: str, cluster_name: str, timeout: float = STS_TIMEOUT) -> Identity:
    """Send presigned URL ``url`` (from :func:`decode_token`) to STS as EKS does, with
    ``x-k8s-aws-id: cluster_name``, and return who STS says signed it.

    For moto, the URL's own credential and signature also travel as the SigV4
    ``Authorization`` header (see the module's notes). :class:`STSError` when STS cannot be
    reached, answers other than 200 or does not answer a ``GetCallerIdentity``.
    """
    query = {k.lower(): v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)}
    credential = query.get("x-amz-credential", "")
    headers = {CLUSTER_ID_HEADER: cluster_name, "Accept": "application/json"}
    if credential:
        headers["Authorization"] = (
            f"{query.get('x-amz-algorithm', 'AWS4-HMAC-SHA256')} Credential={credential}, "
            f"SignedHeaders={query.get('x-amz-signedheaders', '')}, "
            f"Signature={query.get('x-amz-signature', '')}"
        )
        headers["X-Amz-Date"] = query.get("x-amz-date", "")
        if "x-amz-security-token" in query:
            headers["X-Amz-Security-Token"] = query["x-amz-security-token"]
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise STSError(f"error during GET: {reason}") from e
    if status != HTTPStatus.OK:
        text = body[:500].decode(errors="replace")
        raise STSError(f"error from AWS (expected 200, got {status}). Body: {text}")
    return parse_caller_identity(body, access_key_id=credential.split("/", 1)[0])


# -- access entries ---------------------------------------------------------------------------


def _principal(arn: str) -> tuple[str, ...]:
    """What identifies a principal: (partition, account, kind, name) for IAM users, roles and
    role sessions (case and path ignored); else the ARN itself."""
    found = _ARN.fullmatch(arn)
    if found is None:
        return ("arn", arn)
    partition, service, account, rest = found.group("partition", "service", "account", "rest")
    kind, _, resource = rest.partition("/")
    if service == "sts" and kind == "assumed-role" and resource.count("/") == 1:
        return (partition, account, "role", resource.split("/")[0].lower())
    if service == "iam" and kind in ("role", "user") and resource:
        return (partition, account, kind, resource.rsplit("/", 1)[-1].lower())
    return ("arn", arn)


def _assumed_role(arn: str) -> tuple[str, str, str, str] | None:
    """(partition, account, role, session) of an STS assumed-role ARN, else None."""
    found = _ARN.fullmatch(arn)
    if found is None or found.group("service") != "sts":
        return None
    parts = found.group("rest").split("/")
    if len(parts) != 3 or parts[0] != "assumed-role" or not all(parts):
        return None
    return found.group("partition"), found.group("account"), parts[1], parts[2]


def canonical_arn(arn: str) -> str:
    """The IAM ARN of ``arn``'s principal: an STS role session becomes its role.

    >>> canonical_arn("arn:aws:sts::111122223333:assumed-role/Researcher/alice")
    'arn:aws:iam::111122223333:role/Researcher'
    >>> canonical_arn("arn:aws:iam::111122223333:user/bob")
    'arn:aws:iam::111122223333:user/bob'
    """
    session = _assumed_role(arn)
    if session is None:
        return arn
    partition, account, role, _ = session
    return f"arn:{partition}:iam::{account}:role/{role}"


def session_name(arn: str) -> str:
    """The session name of an assumed-role ARN, else ``""``.

    >>> session_name("arn:aws:sts::111122223333:assumed-role/R/alice@example.org")
    'alice@example.org'
    """
    session = _assumed_role(arn)
    return "" if session is None else session[3]


@dataclass(frozen=True)
class AccessPolicy:
    """An access policy associated with an entry: ``name`` (or the policy's ARN) and its scope,
    ``namespaces=None`` for the cluster, else namespace names or prefixes ending in ``*``.

    >>> AccessPolicy("arn:aws:eks::aws:cluster-access-policy/AmazonEKSAdminPolicy", ["recc-*"])
    AccessPolicy(name='AmazonEKSAdminPolicy', namespaces=('recc-*',))
    >>> AccessPolicy("AmazonEKSAdminPolicy", ("recc-*",)).covers("recc-a")
    True
    >>> AccessPolicy("AmazonEKSAdminPolicy", ("recc-*",)).covers("")  # cluster-scoped request
    False
    """

    name: str
    namespaces: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        name = self.name.rsplit("/", 1)[-1]
        if name not in POLICY_ROLES:
            raise ValueError(
                f"access policy {self.name!r} is not modelled (known: {', '.join(POLICY_ROLES)})"
            )
        object.__setattr__(self, "name", name)
        if self.namespaces is None:
            return
        if isinstance(self.namespaces, str):
            raise TypeError("namespaces is a sequence of names or patterns, not one string")
        namespaces = tuple(self.namespaces)
        if not namespaces:
            raise ValueError(f"{name}: a namespace scope needs at least one namespace")
        for pattern in namespaces:
            if not pattern or "*" in pattern[:-1]:
                raise ValueError(f"{name}: bad namespace {pattern!r} (a '*' may only end it)")
        object.__setattr__(self, "namespaces", namespaces)

    @property
    def role(self) -> str:
        """The ClusterRole whose rules stand in for this policy's permissions."""
        return POLICY_ROLES[self.name]

    @property
    def scope(self) -> str:
        """``cluster``, or ``namespaces a, b-*``: for messages."""
        return "cluster" if self.namespaces is None else "namespaces " + ", ".join(self.namespaces)

    def covers(self, namespace: str) -> bool:
        """Whether a request in ``namespace`` (``""``: cluster-scoped) is in this policy's scope."""
        if self.namespaces is None:
            return True
        if not namespace:
            return False
        return any(
            namespace.startswith(p[:-1]) if p.endswith("*") else namespace == p
            for p in self.namespaces
        )


@dataclass(frozen=True)
class AccessEntry:
    """An EKS access entry of type STANDARD: the IAM user or role ``principal_arn``, the
    Kubernetes ``username`` (None: as EKS sets it) and ``groups``, and its access ``policies``.

    >>> AccessEntry("arn:aws:iam::111122223333:user/bob").username_for()
    'arn:aws:iam::111122223333:user/bob'
    >>> AccessEntry("arn:aws:iam::111122223333:role/ci/Harvester").username
    'arn:aws:sts::111122223333:assumed-role/Harvester/{{SessionName}}'
    """

    principal_arn: str
    username: str | None = None
    groups: tuple[str, ...] = ()
    policies: tuple[AccessPolicy, ...] = ()

    def __post_init__(self) -> None:
        key = _principal(self.principal_arn)
        if self.principal_arn.split(":")[2:3] == ["sts"]:
            raise ValueError(
                f"{self.principal_arn}: an STS session cannot be an access entry's principal "
                "(give its role's IAM ARN)"
            )
        if key[0] == "arn" and not self.principal_arn.startswith("arn:"):
            raise ValueError(f"{self.principal_arn!r} is not an IAM principal ARN")
        if isinstance(self.groups, str) or isinstance(self.policies, AccessPolicy):
            raise TypeError("groups and policies are sequences")
        object.__setattr__(self, "groups", tuple(self.groups))
        policies = tuple(self.policies)
        for policy in policies:
            if not isinstance(policy, AccessPolicy):
                raise TypeError(f"{policy!r} is not an AccessPolicy")
        names = [p.name for p in policies]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.principal_arn}: each access policy can be associated once")
        object.__setattr__(self, "policies", policies)
        if self.username is None:
            object.__setattr__(self, "username", _default_username(self.principal_arn))
        else:
            _check_username(self.username)

    def username_for(self, session: str = "") -> str:
        """The Kubernetes user name for a caller in STS session ``session`` (``""`` for a user).

        >>> e = AccessEntry("arn:aws:iam::111122223333:role/R", username="r:{{SessionNameRaw}}")
        >>> e.username_for("alice@example.org")
        'r:alice@example.org'
        """
        return _PLACEHOLDER.sub(
            lambda m: session if m.group(1) == "SessionNameRaw" else session.replace("@", "-"),
            self.username or "",
        )

    def matches(self, arn: str) -> bool:
        """Whether caller ``arn`` (an IAM user, role, or role session) is this entry's principal."""
        return _principal(arn) == _principal(self.principal_arn)


def _default_username(principal_arn: str) -> str:
    key = _principal(principal_arn)
    if key[0] != "arn" and key[2] == "role":
        partition, account = key[0], key[1]
        role = principal_arn.rsplit("/", 1)[-1]
        return f"arn:{partition}:sts::{account}:assumed-role/{role}/{{{{SessionName}}}}"
    return principal_arn


def _check_username(username: str) -> None:
    if not username:
        raise ValueError("an access entry's username cannot be empty")
    if username.startswith(_RESERVED_USER_PREFIXES):
        raise ValueError(
            f"username {username!r} cannot start with {', '.join(_RESERVED_USER_PREFIXES)}"
        )
    for found in _PLACEHOLDER.finditer(username):
        if found.group(1) not in _SESSION_PLACEHOLDERS:
            raise ValueError(f"username {username!r}: unknown placeholder {found.group(0)}")
        if ":" not in username[: found.start()]:
            raise ValueError(f"username {username!r} needs a colon before {found.group(0)}")


def match_entry(arn: str, entries: Iterable[AccessEntry]) -> AccessEntry | None:
    """The access entry of caller ``arn`` among ``entries``, or None.

    >>> admins = AccessEntry("arn:aws:iam::111122223333:role/platform/Admins")
    >>> match_entry("arn:aws:sts::111122223333:assumed-role/Admins/carol", [admins]) is admins
    True
    >>> match_entry("arn:aws:sts::444455556666:assumed-role/Admins/carol", [admins]) is None
    True
    """
    key = _principal(arn)
    for entry in entries:
        if _principal(entry.principal_arn) == key:
            return entry
    return None


def _check_unique(entries: Iterable[AccessEntry]) -> tuple[AccessEntry, ...]:
    seen: dict[tuple[str, ...], str] = {}
    result = tuple(entries)
    for entry in result:
        if not isinstance(entry, AccessEntry):
            raise TypeError(f"{entry!r} is not an AccessEntry")
        key = _principal(entry.principal_arn)
        if key in seen:
            raise ValueError(
                f"{entry.principal_arn} and {seen[key]} are one principal: one access entry each"
            )
        seen[key] = entry.principal_arn
    return result


# -- authorization ----------------------------------------------------------------------------


def _rule_values(rule: Any, camel: str, snake: str) -> list[str]:
    if hasattr(rule, "to_dict"):  # a kubernetes.client.V1PolicyRule
        rule = rule.to_dict()
    value = rule.get(camel, rule.get(snake)) if isinstance(rule, Mapping) else None
    return list(value or ())


def rule_allows(rule: Mapping[str, Any], attributes: Mapping[str, Any]) -> bool:
    """Whether PolicyRule ``rule`` (camelCase as the API serves it, or the ``kubernetes``
    client's snake_case) allows a request with ``attributes`` (a SubjectAccessReview's
    ``resourceAttributes`` or ``nonResourceAttributes``), by RBAC's rules.

    >>> logs = {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}
    >>> rule_allows(logs, {"verb": "get", "resource": "pods", "subresource": "log"})
    True
    >>> rule_allows(logs, {"verb": "get", "resource": "pods"})
    False
    >>> rule_allows({"nonResourceURLs": ["/healthz/*"], "verbs": ["get"]},
    ...             {"path": "/healthz/etcd", "verb": "get"})
    True
    """
    verbs = _rule_values(rule, "verbs", "verbs")
    verb = attributes.get("verb") or ""
    if "*" not in verbs and verb not in verbs:
        return False
    if "path" in attributes and "resource" not in attributes:
        path = attributes.get("path") or ""
        return any(
            url == "*" or url == path or (url.endswith("*") and path.startswith(url.rstrip("*")))
            for url in _rule_values(rule, "nonResourceURLs", "non_resource_urls")
        )
    groups = _rule_values(rule, "apiGroups", "api_groups")
    if "*" not in groups and (attributes.get("group") or "") not in groups:
        return False
    resource = attributes.get("resource") or ""
    subresource = attributes.get("subresource") or ""
    combined = f"{resource}/{subresource}" if subresource else resource
    if not any(
        r == "*" or r == combined or (subresource and r == f"*/{subresource}")
        for r in _rule_values(rule, "resources", "resources")
    ):
        return False
    names = _rule_values(rule, "resourceNames", "resource_names")
    return not names or (attributes.get("name") or "") in names


def _request_attributes(attributes: Mapping[str, Any]) -> tuple[bool, Mapping[str, Any]]:
    """(is a resource request, its attributes), from a SAR spec or either attributes dict."""
    if "resourceAttributes" in attributes or "nonResourceAttributes" in attributes:
        resource = attributes.get("resourceAttributes")
        if resource is not None:
            return True, resource
        return False, attributes.get("nonResourceAttributes") or {}
    return ("path" not in attributes or "resource" in attributes), attributes


def authorize(
    attributes: Mapping[str, Any],
    entry: AccessEntry | None,
    role_rules: Mapping[str, Sequence[Mapping[str, Any]]],
) -> tuple[bool, str]:
    """Whether ``entry``'s access policies allow a request, and why (or why not).

    ``attributes``: a SubjectAccessReview spec, or its ``resourceAttributes`` or
    ``nonResourceAttributes``. ``role_rules``: ClusterRole name -> its PolicyRules, for the
    roles of the entry's policies (:data:`POLICY_ROLES`; ``cluster-admin`` defaults to
    :data:`CLUSTER_ADMIN_RULES`). A namespaced policy only covers requests in its namespaces.

    >>> admin = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]
    >>> entry = AccessEntry("arn:aws:iam::111122223333:role/R",
    ...                     policies=(AccessPolicy("AmazonEKSAdminPolicy", ("recc-*",)),))
    >>> pod = {"verb": "create", "group": "", "resource": "pods"}
    >>> authorize({**pod, "namespace": "recc-a"}, entry, {"admin": admin})[0]
    True
    >>> authorize({**pod, "namespace": "kube-system"}, entry, {"admin": admin})
    (False, 'no access policy of arn:aws:iam::111122223333:role/R allows it')
    """
    if entry is None:
        return False, "no access entry"
    is_resource, request = _request_attributes(attributes)
    namespace = (request.get("namespace") or "") if is_resource else ""
    for policy in entry.policies:
        if policy.namespaces is not None and (not is_resource or not policy.covers(namespace)):
            continue
        rules = role_rules.get(policy.role)
        if rules is None and policy.role == "cluster-admin":
            rules = CLUSTER_ADMIN_RULES
        if rules is None:
            raise KeyError(f"no rules given for ClusterRole {policy.role!r} ({policy.name})")
        if any(rule_allows(rule, request) for rule in rules):
            return True, (
                f"EKS access policy {policy.name} ({policy.scope}) of {entry.principal_arn} "
                f"allows it (ClusterRole {policy.role})"
            )
    return False, f"no access policy of {entry.principal_arn} allows it"


class _RolesOnDemand(Mapping[str, Sequence[Mapping[str, Any]]]):
    """ClusterRole rules fetched when :func:`authorize` first asks, once per review."""

    def __init__(self, fetch: Callable[[str], Sequence[Mapping[str, Any]]] | None) -> None:
        self._fetch = fetch
        self._got: dict[str, Sequence[Mapping[str, Any]]] = {}

    def __getitem__(self, role: str) -> Sequence[Mapping[str, Any]]:
        if role not in self._got:
            if role == "cluster-admin":
                self._got[role] = CLUSTER_ADMIN_RULES
            elif self._fetch is None:
                raise KeyError(role)
            else:
                self._got[role] = list(self._fetch(role))
        return self._got[role]

    def __iter__(self) -> Iterator[str]:
        return iter(self._got)

    def __len__(self) -> int:
        return len(self._got)


# -- the webhooks -----------------------------------------------------------------------------


def webhook_kubeconfig(url: str, path: Path) -> Path:
    """Write the kubeconfig kube-apiserver's ``--authentication-token-webhook-config-file`` and
    ``--authorization-webhook-config-file`` take, for the webhook at ``url`` (with its path);
    ``path``, the file. The cluster is the webhook; the user (kube-apiserver) has no
    credentials. Plain http only to a loopback address.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "webhook.kubeconfig"
    >>> config = yaml.safe_load(webhook_kubeconfig("http://127.0.0.1:8443/authorize", target).read_text())
    >>> config["clusters"][0]["cluster"]["server"], config["current-context"]
    ('http://127.0.0.1:8443/authorize', 'webhook')
    """  # noqa: E501
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a webhook URL is http(s)://host[:port]/path, not {url!r}")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError(f"plain http only on loopback, not to {parts.hostname}")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "eks-auth", "cluster": {"server": url}}],
        "users": [{"name": "kube-apiserver", "user": {}}],
        "contexts": [
            {"name": "webhook", "context": {"cluster": "eks-auth", "user": "kube-apiserver"}}
        ],
        "current-context": "webhook",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EKSAuthWebhooks:
    """EKS's token authenticator and access-policy authorizer for cluster ``cluster_name``, as
    one HTTP server on ``host`` (loopback; ``port`` 0 picks a free one).

    POST ``/authenticate`` takes a ``TokenReview``, POST ``/authorize`` a
    ``SubjectAccessReview`` (``authentication.k8s.io/v1``, ``authorization.k8s.io/v1``), each
    through its kubeconfig (:meth:`kubeconfigs`); any other path answers by the review's kind.

    ``cluster_role_rules(name)`` gives the PolicyRules of ClusterRole ``name`` (``admin``,
    ``edit``, ``view``) when a policy needs them, e.g. read from the API server with an
    administrator's client and cached by the caller; it is called from the server's threads.
    Right after a control plane starts, ``admin``, ``edit`` and ``view`` may still be empty
    (the controller manager aggregates them): a cache should not keep an empty answer.
    """

    def __init__(
        self,
        cluster_name: str,
        entries: Iterable[AccessEntry] = (),
        cluster_role_rules: Callable[[str], Sequence[Mapping[str, Any]]] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        sts_timeout: float = STS_TIMEOUT,
    ) -> None:
        if not _loopback(host):
            raise ValueError(f"the webhooks serve plain http on loopback only, not on {host}")
        self.cluster_name = cluster_name
        self.url = ""
        self._host, self._port = host, port
        self._rules = cluster_role_rules
        self._sts_timeout = sts_timeout
        self._lock = threading.Lock()
        self._entries = _check_unique(entries)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- entries ----------------------------------------------------------------------------

    @property
    def entries(self) -> tuple[AccessEntry, ...]:
        with self._lock:
            return self._entries

    def set_entries(self, entries: Iterable[AccessEntry]) -> None:
        """Replace the access entries (takes effect for the next review)."""
        checked = _check_unique(entries)
        with self._lock:
            self._entries = checked

    # -- reviews ----------------------------------------------------------------------------

    def authenticate(self, review: Mapping[str, Any]) -> dict[str, Any]:
        """The answered ``TokenReview`` for request ``review``."""
        token = str((review.get("spec") or {}).get("token") or "")
        try:
            identity = replay(decode_token(token), self.cluster_name, self._sts_timeout)
        except (TokenError, STSError) as e:
            logger.info("token refused: %s", e)
            return _answer(review, "TokenReview", {"authenticated": False, "error": str(e)})
        entry = match_entry(identity.arn, self.entries)
        if entry is None:
            message = f"{identity.arn} has no access entry on cluster {self.cluster_name}"
            logger.info("token refused: %s", message)
            return _answer(review, "TokenReview", {"authenticated": False, "error": message})
        groups = list(dict.fromkeys([*entry.groups, AUTHENTICATED_GROUP]))
        user = {
            "username": entry.username_for(identity.session_name),
            "uid": f"{UID_PREFIX}:{identity.account}:{identity.user_id}",
            "groups": groups,
            "extra": {
                "arn": [identity.arn],
                "canonicalArn": [identity.canonical_arn],
                "sessionName": [identity.session_name],
                "accessKeyId": [identity.access_key_id],
                "principalId": [identity.user_id],
            },
        }
        return _answer(review, "TokenReview", {"authenticated": True, "user": user})

    def authorize_review(self, review: Mapping[str, Any]) -> dict[str, Any]:
        """The answered ``SubjectAccessReview`` for request ``review``: allowed, or no opinion."""
        spec = review.get("spec") or {}
        arns = list((spec.get("extra") or {}).get("arn") or ())
        if not arns:
            reason = "not an EKS-authenticated user: RBAC decides"
            return _answer(review, "SubjectAccessReview", {"allowed": False, "reason": reason})
        entry = match_entry(arns[0], self.entries)
        if entry is None or entry.username_for(session_name(arns[0])) != spec.get("user"):
            reason = f"{arns[0]} has no access entry for user {spec.get('user')!r}"
            return _answer(review, "SubjectAccessReview", {"allowed": False, "reason": reason})
        try:
            allowed, reason = authorize(spec, entry, _RolesOnDemand(self._rules))
        except Exception as e:  # the rules could not be had: no opinion, and say why
            logger.warning("cannot evaluate access policies of %s: %s", entry.principal_arn, e)
            status = {"allowed": False, "evaluationError": f"cannot read ClusterRole rules: {e}"}
            return _answer(review, "SubjectAccessReview", status)
        return _answer(review, "SubjectAccessReview", {"allowed": allowed, "reason": reason})

    # -- server -----------------------------------------------------------------------------

    def kubeconfigs(self, directory: Path) -> tuple[Path, Path]:
        """Write the kubeconfigs of kube-apiserver's two webhook flags into ``directory``:
        (``authenticate.kubeconfig`` for ``--authentication-token-webhook-config-file``,
        ``authorize.kubeconfig`` for ``--authorization-webhook-config-file``)."""
        if not self.url:
            raise RuntimeError("start the webhooks first: their port is chosen then")
        directory = Path(directory)
        return (
            webhook_kubeconfig(f"{self.url}/authenticate", directory / "authenticate.kubeconfig"),
            webhook_kubeconfig(f"{self.url}/authorize", directory / "authorize.kubeconfig"),
        )

    def start(self) -> EKSAuthWebhooks:
        """Listen and serve in a daemon thread; ``url`` is then ``http://host:port``."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer((self._host, self._port), _handler(self))
        server.daemon_threads = True
        self._server = server
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, name="eks-auth-webhooks", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> EKSAuthWebhooks:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answer(review: Mapping[str, Any], kind: str, status: dict[str, Any]) -> dict[str, Any]:
    group = "authentication.k8s.io" if kind == "TokenReview" else "authorization.k8s.io"
    api_version = str(review.get("apiVersion") or f"{group}/v1")
    return {"apiVersion": api_version, "kind": kind, "status": status}


_PATH_KINDS = {"/authenticate": "TokenReview", "/authorize": "SubjectAccessReview"}


def _handler(hooks: EKSAuthWebhooks) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            if self.path in ("/healthz", "/readyz"):
                self._send(HTTPStatus.OK, b"ok", "text/plain")
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            try:
                review = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(review, dict):
                    raise ValueError("a review is a JSON object")
            except ValueError as e:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad request body: {e}"})
                return
            kind = review.get("kind")
            wanted = _PATH_KINDS.get(self.path.split("?", 1)[0])
            if wanted is not None and kind != wanted:
                self._json(HTTPStatus.BAD_REQUEST, {"error": f"{self.path} takes a {wanted}"})
            elif kind == "TokenReview":
                self._json(HTTPStatus.OK, hooks.authenticate(review))
            elif kind == "SubjectAccessReview":
                self._json(HTTPStatus.OK, hooks.authorize_review(review))
            else:
                message = f"expected a TokenReview or SubjectAccessReview, got {kind!r}"
                self._json(HTTPStatus.BAD_REQUEST, {"error": message})

        def _json(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("%s " + format, self.address_string(), *args)

    return Handler
