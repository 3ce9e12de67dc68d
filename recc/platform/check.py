"""``recc platform check``: is RECC's platform config complete, and does the platform answer?

Pure given the config (settings -> findings) except :func:`reachability_findings`, which asks
STS, EKS and the Kubernetes API through the same client every other RECC command uses
(:func:`recc.kube.client.api_client`)::

    recc platform check            # configured? reachable?
    recc platform check --offline  # configured?
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    The Kubernetes step connects as every RECC command does (:func:`recc.kube.client.api_client`,
    endpoint and CA from the dask config, else EKS), so it checks the connection RECC will use.
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
    findings.append(_kubernetes_version(session, name, endpoint, timeout))
    return findings


def _kubernetes_version(session: Any, name: str, endpoint: str | None, timeout: float) -> Finding:
    import kubernetes.client
    import urllib3
    from botocore.exceptions import BotoCoreError
    from kubernetes.client.exceptions import ApiException

    from recc.kube.client import api_client

    label = "kubernetes: /version"
    if not endpoint:
        return Finding(label, FAILED, "no endpoint: set recc.eks.endpoint")
    try:
        with api_client(session) as api:
            version = kubernetes.client.VersionApi(api).get_code(_request_timeout=timeout)
        return Finding(label, OK, f"{endpoint}: {version.git_version}")
    except ConfigError as e:
        return Finding(label, FAILED, str(e))
    except BotoCoreError as e:  # the bearer token is made (signed) when the request is sent
        return Finding(label, FAILED, f"cannot make an EKS token for {name}: {e}")
    except ApiException as e:
        return Finding(label, FAILED, f"{endpoint}: HTTP {e.status} {e.reason}")
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
        return Finding(label, FAILED, f"{endpoint}: {e}")


class _InRegion:
    """``session``, seen as being in ``region`` (the region :func:`recc.kube.auth.eks_token`
    signs for); everything else is the session's own."""

    def __init__(self, session: Any, region: str) -> None:
        self._session, self.region_name = session, region

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def eks_token(session: Any, cluster_name: str, region: str) -> str:
    """A bearer token for the EKS Kubernetes API, made as ``aws eks get-token`` makes it.

    :func:`recc.kube.auth.eks_token` with the STS region given explicitly rather than taken
    from ``session``; signing is local, nothing is sent.

    Example::

        >>> eks_token(boto3.Session(), "research-dask", "eu-west-1")  # doctest: +SKIP
        'k8s-aws-v1.aHR0cHM6Ly9zdHMuZXUtd2VzdC0xLmFtYXpvbmF3cy5jb20v...'
    """
    from recc.kube.auth import eks_token as token_for

    return token_for(cluster_name, _InRegion(session, region))


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
