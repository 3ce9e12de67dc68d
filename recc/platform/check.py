"""``recc platform check``: is RECC's platform config complete, and does the platform answer?

Pure given the config (settings -> findings) except :func:`reachability_findings`, which asks
STS, EKS and the Kubernetes API::

    recc platform check            # configured? reachable?
    recc platform check --offline  # configured?
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recc import aws
from recc.errors import ConfigError
from recc.platform.settings import SETTINGS, current

OK, MISSING, UNSET, FAILED, SKIPPED = "ok", "missing", "not set", "failed", "skipped"


@dataclass(frozen=True)
class Finding:
    """One line of ``recc platform check``: a config key or a service, and its state."""

    name: str
    status: str
    detail: str = ""
    required: bool = True

    @property
    def ok(self) -> bool:
        """False only for what makes the platform unusable."""
        return self.status in (OK, UNSET, SKIPPED) or not self.required


@dataclass(frozen=True)
class CheckReport:
    """Everything ``check_platform`` found; ``ok`` is the exit status of ``recc platform check``."""

    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "findings": [asdict(f) for f in self.findings]}


def configuration_findings(get: Callable[[str], Any] = current) -> list[Finding]:
    """Set / missing for every platform setting in the current dask config (pure given ``get``)."""
    findings = []
    for s in SETTINGS:
        value = get(s.key)
        if value in (None, "", [], ()):
            findings.append(
                Finding(
                    f"recc.{s.key}",
                    MISSING if s.required else UNSET,
                    (
                        f"run `recc platform configure`, or set it (e.g. {s.example})"
                        if s.required
                        else f"optional (e.g. {s.example})"
                    ),
                    s.required,
                )
            )
        else:
            findings.append(Finding(f"recc.{s.key}", OK, display_value(s.key, value), s.required))
    return findings


def display_value(key: str, value: Any) -> str:
    """A setting's value as ``recc platform`` prints it (the CA shortened, lists joined)."""
    if key == "eks.ca-data" and isinstance(value, str) and len(value) > 24:
        return f"{value[:12]}...({len(value)} characters)"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def reachability_findings(
    session: Any | None = None, get: Callable[[str], Any] = current, timeout: float = 5.0
) -> list[Finding]:
    """Ask STS who we are, EKS whether the cluster exists, Kubernetes for its version.

    ``session`` is a :class:`boto3.session.Session` (default: from ``recc.eks.profile`` and
    ``recc.eks.region``). Every failure becomes a finding with the reason, never an exception.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    region, name = get("eks.region"), get("eks.cluster-name")
    session = session or aws.session()
    findings = []
    try:
        who = session.client("sts", region_name=region or None).get_caller_identity()
        findings.append(Finding("aws: sts get-caller-identity", OK, who["Arn"]))
    except (ClientError, BotoCoreError) as e:
        findings.append(
            Finding(
                "aws: sts get-caller-identity",
                FAILED,
                f"{e} (check your AWS credentials / recc.eks.profile)",
            )
        )
        return findings + [
            Finding("aws: eks describe-cluster", SKIPPED, "no AWS identity"),
            Finding("kubernetes: /version", SKIPPED, "no AWS identity"),
        ]

    if not name or not region:
        return findings + [
            Finding("aws: eks describe-cluster", SKIPPED, "recc.eks.cluster-name/region not set"),
            Finding("kubernetes: /version", SKIPPED, "recc.eks.cluster-name/region not set"),
        ]
    try:
        cluster = session.client("eks", region_name=region).describe_cluster(name=name)["cluster"]
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        detail = (
            f"no EKS cluster {name!r} in {region}"
            if code == "ResourceNotFoundException"
            else str(e)
        )
        return findings + [
            Finding("aws: eks describe-cluster", FAILED, detail),
            Finding("kubernetes: /version", SKIPPED, "EKS cluster not found"),
        ]
    except BotoCoreError as e:
        return findings + [
            Finding("aws: eks describe-cluster", FAILED, str(e)),
            Finding("kubernetes: /version", SKIPPED, "EKS unreachable"),
        ]
    status = cluster.get("status", "UNKNOWN")
    findings.append(
        Finding(
            "aws: eks describe-cluster",
            OK if status == "ACTIVE" else FAILED,
            f"{name}: {status}, Kubernetes {cluster.get('version', '?')}",
        )
    )

    endpoint = get("eks.endpoint") or cluster.get("endpoint")
    ca_data = get("eks.ca-data") or (cluster.get("certificateAuthority") or {}).get("data")
    findings.append(_kubernetes_version(session, name, region, endpoint, ca_data, timeout))
    return findings


@contextmanager
def kubernetes_api_client(
    session: Any, cluster_name: str, region: str, endpoint: str, ca_data: str | None
) -> Iterator[Any]:
    """A :class:`kubernetes.client.ApiClient` for the platform, authenticated as the AWS caller.

    ``https://`` endpoints need the cluster's CA (base64 PEM, as EKS returns it); plain
    ``http://`` is accepted for local test servers. Raises :class:`ConfigError` when the CA is
    missing or the token cannot be made.
    """
    import kubernetes.client
    from botocore.exceptions import BotoCoreError

    try:
        token = eks_token(session, cluster_name, region)
    except BotoCoreError as e:
        raise ConfigError(f"cannot make an EKS token for {cluster_name}: {e}") from e
    conf = kubernetes.client.Configuration()
    conf.host = endpoint
    conf.api_key = {"authorization": f"Bearer {token}"}
    conf.retries = 0  # callers report failures; urllib3's retries would only delay them
    ca_file = None
    try:
        if endpoint.startswith("https://"):
            if not ca_data:
                raise ConfigError(
                    "recc.eks.ca-data is not set and EKS did not return a CA "
                    "(for example: recc platform configure --from-terraform platform.json)"
                )
            with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as f:
                f.write(base64.b64decode(ca_data))
            ca_file = conf.ssl_ca_cert = f.name
        with kubernetes.client.ApiClient(conf) as api:
            yield api
    finally:
        if ca_file:
            Path(ca_file).unlink(missing_ok=True)


def _kubernetes_version(
    session: Any,
    name: str,
    region: str,
    endpoint: str | None,
    ca_data: str | None,
    timeout: float,
) -> Finding:
    import kubernetes.client
    import urllib3
    from kubernetes.client.exceptions import ApiException

    label = "kubernetes: /version"
    if not endpoint:
        return Finding(label, FAILED, "no endpoint: set recc.eks.endpoint")
    try:
        with kubernetes_api_client(session, name, region, endpoint, ca_data) as api:
            version = kubernetes.client.VersionApi(api).get_code(_request_timeout=timeout)
        return Finding(label, OK, f"{endpoint}: {version.git_version}")
    except ConfigError as e:
        return Finding(label, FAILED, str(e))
    except ApiException as e:
        return Finding(label, FAILED, f"{endpoint}: HTTP {e.status} {e.reason}")
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
        return Finding(label, FAILED, f"{endpoint}: {e}")


def eks_token(session: Any, cluster_name: str, region: str, expires_in: int = 60) -> str:
    """A bearer token for the EKS Kubernetes API, made as ``aws eks get-token`` makes it.

    It is a presigned STS GetCallerIdentity URL bound to the cluster by the ``x-k8s-aws-id``
    header; EKS's authenticator replays it to learn the caller's IAM identity.
    """
    from botocore.signers import RequestSigner

    sts = session.client("sts", region_name=region)
    signer = RequestSigner(
        sts.meta.service_model.service_id,
        region,
        "sts",
        "v4",
        session.get_credentials(),
        session.events,
    )
    url = signer.generate_presigned_url(
        {
            "method": "GET",
            "url": f"{sts.meta.endpoint_url}/?Action=GetCallerIdentity&Version=2011-06-15",
            "body": {},
            "headers": {"x-k8s-aws-id": cluster_name},
            "context": {},
        },
        region_name=region,
        expires_in=expires_in,
        operation_name="",
    )
    return "k8s-aws-v1." + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def check_platform(
    session: Any | None = None,
    offline: bool = False,
    get: Callable[[str], Any] = current,
) -> CheckReport:
    """What is configured, and (unless ``offline``) what answers.

    Example::

        >>> report = check_platform()  # doctest: +SKIP
        >>> report.ok, [f.name for f in report.findings if not f.ok]  # doctest: +SKIP
        (False, ['recc.eks.cluster-name'])
    """
    findings: list[Finding] = configuration_findings(get)
    if not offline:
        findings += reachability_findings(session, get)
    return CheckReport(tuple(findings))
