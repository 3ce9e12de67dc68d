"""The platform RECC runs on: configured from Terraform, then checked.

Platform engineers stand the platform up once with the module in ``terraform/``; this module
turns its outputs into RECC's dask config and tells anyone whether that config is complete and
the platform answers::

    terraform output -json > platform.json
    recc platform configure --from-terraform platform.json   # writes recc-platform.yaml
    recc platform check                                        # configured? reachable?

Both are a pure core (outputs -> settings, settings -> findings) with the side effects at the
edges: one function writes the YAML file, one function talks to AWS and Kubernetes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dask.config
import yaml

from recc import config
from recc.errors import ConfigError

PLATFORM_FILE = "recc-platform.yaml"
"""Name of the file ``configure`` writes in the user's dask config directory."""


@dataclass(frozen=True)
class Setting:
    """One platform setting: the Terraform output it comes from and the RECC key it sets."""

    output: str
    key: str
    kind: type
    required: bool
    example: str
    pattern: str | None = None


_ARN_IAM = r"^arn:aws[a-z-]*:iam::"
_ROLE = "arn:aws:iam::123456789012:role/research-dask-recc-"

# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # Required: the EKS backend cannot create a node group without these.
    Setting("cluster_name", "eks.cluster-name", str, True, "research-dask",
            r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$"),
    Setting("region", "eks.region", str, True, "eu-west-1", r"^[a-z]{2}(-[a-z]+)+-\d$"),
    Setting("subnet_ids", "eks.subnets", list, True, '["subnet-0a1b2c3d4e5f60718"]',
            r"^subnet-[0-9a-f]+$"),
    Setting("node_role_arn", "eks.node-role-arn", str, True, _ROLE + "node", _ARN_IAM),
    # Optional: RECC has a default or the feature is off without them.
    Setting("security_group_ids", "eks.security-groups", list, False, '["sg-0a1b2c3d4e5f60718"]',
            r"^sg-[0-9a-f]+$"),
    Setting("worker_role_arn", "eks.worker-role-arn", str, False, _ROLE + "worker", _ARN_IAM),
    Setting("harvester_role_arn", "eks.harvester-role-arn", str, False, _ROLE + "harvester",
            _ARN_IAM),
    Setting("allowed_client_cidrs", "eks.allowed-client-cidrs", list, False, '["10.0.0.0/8"]',
            r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$"),
    Setting("cluster_endpoint", "eks.endpoint", str, False,
            "https://0123456789ABCDEF.gr7.eu-west-1.eks.amazonaws.com", r"^https?://"),
    Setting("cluster_ca_data", "eks.ca-data", str, False, "LS0tLS1CRUdJTi...",
            r"^[A-Za-z0-9+/=\s]+$"),
    Setting("operator_namespace", "eks.operator-namespace", str, False, "dask-operator"),
    Setting("system_namespace", "eks.system-namespace", str, False, "recc-system"),
    Setting("namespace_prefix", "eks.namespace-prefix", str, False, "recc-"),
    Setting("worker_service_account", "eks.worker-service-account", str, False, "recc-worker"),
    Setting("harvester_service_account", "eks.harvester-service-account", str, False,
            "recc-harvester"),
    Setting("researcher_group", "eks.researcher-group", str, False, "recc-researchers"),
    Setting("harvester_group", "eks.harvester-group", str, False, "recc-harvester"),
    Setting("harvester_schedule", "eks.harvester-schedule", str, False, "*/10 * * * *",
            r"^\S+(\s+\S+){4}$"),
    Setting("harvester_image", "eks.harvester-image", str, False, "ghcr.io/example/recc:0.1.0"),
    Setting("source_nfs_server", "eks.source-nfs-server", str, False,
            "fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com"),
    Setting("source_nfs_path", "eks.source-nfs-path", str, False, "/recc/branches"),
)
# fmt: on
"""Every setting ``configure`` writes, in display order (required ones first)."""

TERRAFORM_OUTPUTS: dict[str, str] = {s.output: s.key for s in SETTINGS}
"""Terraform output name -> RECC config key (under ``recc.``)."""


# ---------------------------------------------------------------------------------------------
# configure: terraform output -json -> settings -> YAML
# ---------------------------------------------------------------------------------------------


def read_terraform_outputs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The values of the outputs in a ``terraform output -json`` file.

    Example::

        >>> read_terraform_outputs("platform.json")["cluster_name"]  # doctest: +SKIP
        'research-dask'
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read Terraform outputs from {path}: {e.strerror}") from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is not JSON ({e.msg} at line {e.lineno}); create it with "
            f"`terraform output -json > {path.name}`"
        ) from e
    return parse_terraform_outputs(raw, source=str(path))


def parse_terraform_outputs(raw: Any, source: str = "outputs") -> dict[str, Any]:
    """Unwrap ``{"name": {"value": v, "type": ..., "sensitive": ...}}`` into ``{"name": v}``."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected the JSON object printed by `terraform output -json`, "
            f"got {type(raw).__name__}"
        )
    values = {}
    for name, output in raw.items():
        if not isinstance(output, dict) or "value" not in output:
            raise ConfigError(
                f'{source}: output {name!r} has no "value"; expected the format of '
                f'`terraform output -json`, e.g. {{"{name}": {{"value": ..., "type": "string"}}}}'
            )
        values[name] = output["value"]
    return values


def settings_from_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """RECC config keys (``eks.cluster-name``, ...) and values from Terraform output values.

    Pure: validates every known output (type and shape) and names the output, the value and a
    valid example when one is wrong; required outputs must be present. Outputs RECC does not
    read are ignored; empty optional strings become None (the packaged default).

    Example::

        >>> settings_from_outputs({"cluster_name": "research-dask", "region": "eu-west-1",
        ...     "subnet_ids": ["subnet-0abc"], "node_role_arn": "arn:aws:iam::1:role/n"})
        {'eks.cluster-name': 'research-dask', 'eks.region': 'eu-west-1', \
'eks.subnets': ['subnet-0abc'], 'eks.node-role-arn': 'arn:aws:iam::1:role/n'}
    """
    missing = [s.output for s in SETTINGS if s.required and s.output not in outputs]
    if missing:
        raise ConfigError(
            f"Terraform outputs lack {', '.join(missing)}: re-export them from the root module "
            "(see terraform/examples/complete/outputs.tf)"
        )
    settings: dict[str, Any] = {}
    for s in SETTINGS:
        if s.output in outputs:
            settings[s.key] = _validated(s, outputs[s.output])
    return settings


def _validated(setting: Setting, value: Any) -> Any:
    def bad(problem: str) -> ConfigError:
        return ConfigError(
            f"Terraform output {setting.output}={value!r} (for recc.{setting.key}): {problem} "
            f"(for example: {setting.example})"
        )

    if value is None or value == "":
        if setting.required:
            raise bad("is required")
        return None
    if setting.kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("must be a list of strings")
        if setting.required and not value:
            raise bad("must not be empty")
        items = value
    else:
        if not isinstance(value, str):
            raise bad("must be a string")
        items = [value]
    if setting.pattern:
        for item in items:
            if not re.search(setting.pattern, item):
                raise bad(f"{item!r} does not look right")
    return list(value) if setting.kind is list else value


def nest(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"eks.region": v}`` -> ``{"recc": {"eks": {"region": v}}}`` (the YAML layout)."""
    tree: dict[str, Any] = {}
    for dotted, value in settings.items():
        node = tree.setdefault("recc", {})
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def platform_config_path(directory: str | os.PathLike[str] | None = None) -> Path:
    """Where ``configure`` writes: ``<dask config dir>/recc-platform.yaml``."""
    return Path(directory or config.user_config_dir()) / PLATFORM_FILE


def write_platform_config(
    settings: Mapping[str, Any],
    directory: str | os.PathLike[str] | None = None,
    source: str | None = None,
) -> Path:
    """Write ``settings`` as dask YAML into the user's config directory, atomically.

    The file belongs to ``recc platform configure``: it is replaced as a whole, so it always
    reflects one Terraform state. A user's own ``recc.yaml`` in the same directory sorts after
    it and therefore overrides it; ``DASK_RECC__*`` variables override both.
    """
    path = platform_config_path(directory)
    header = (
        "# Written by `recc platform configure`"
        + (f" from {source}" if source else "")
        + f" at {datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}.\n"
        "# Re-run it after `terraform apply` instead of editing; put overrides in recc.yaml.\n"
    )
    body = yaml.safe_dump(nest(settings), sort_keys=False, default_flow_style=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader (another RECC process) never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".recc-platform-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(header + body)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from e
    return path


@dataclass(frozen=True)
class Configured:
    """What ``configure_from_terraform`` wrote, and where."""

    path: Path
    settings: dict[str, Any]


def configure_from_terraform(
    outputs_file: str | os.PathLike[str], directory: str | os.PathLike[str] | None = None
) -> Configured:
    """Read ``terraform output -json``, validate it, write RECC's platform config.

    Nothing is written unless every output is valid. Call :func:`recc.config.refresh` to see
    the new values in a running process.

    Example::

        >>> done = configure_from_terraform("platform.json")  # doctest: +SKIP
        >>> recc.config.refresh(); recc.config.get("eks.cluster-name")  # doctest: +SKIP
        'research-dask'
    """
    settings = settings_from_outputs(read_terraform_outputs(outputs_file))
    path = write_platform_config(settings, directory, source=str(outputs_file))
    return Configured(path=path, settings=settings)


# ---------------------------------------------------------------------------------------------
# check: configured? reachable?
# ---------------------------------------------------------------------------------------------

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


def _current(key: str) -> Any:
    # Keys this module introduced may be absent from older packaged defaults.
    return dask.config.get(f"recc.{key}", default=None)


def configuration_findings(get: Callable[[str], Any] = _current) -> list[Finding]:
    """Set / missing for every platform setting in the current dask config (pure given ``get``)."""
    findings = []
    for s in SETTINGS:
        value = get(s.key)
        if value in (None, "", [], ()):
            findings.append(
                Finding(
                    f"recc.{s.key}",
                    MISSING if s.required else UNSET,
                    f"set it, e.g. {s.example}",
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
    session: Any | None = None, get: Callable[[str], Any] = _current, timeout: float = 5.0
) -> list[Finding]:
    """Ask STS who we are, EKS whether the cluster exists, Kubernetes for its version.

    ``session`` is a :class:`boto3.session.Session` (default: from ``recc.eks.profile`` and
    ``recc.eks.region``). Every failure becomes a finding with the reason, never an exception.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    region, name = get("eks.region"), get("eks.cluster-name")
    if session is None:
        session = boto3.session.Session(
            profile_name=get("eks.profile") or None, region_name=region or None
        )
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
    from botocore.exceptions import BotoCoreError
    from kubernetes.client.exceptions import ApiException

    label = "kubernetes: /version"
    if not endpoint:
        return Finding(label, FAILED, "no endpoint: set recc.eks.endpoint")
    try:
        token = eks_token(session, name, region)
    except BotoCoreError as e:
        return Finding(label, FAILED, f"cannot make an EKS token: {e}")
    conf = kubernetes.client.Configuration()
    conf.host = endpoint
    conf.api_key = {"authorization": f"Bearer {token}"}
    conf.retries = 0
    ca_file = None
    try:
        if endpoint.startswith("https://"):
            if not ca_data:
                return Finding(label, FAILED, "no CA: set recc.eks.ca-data")
            with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as f:
                f.write(base64.b64decode(ca_data))
                ca_file = conf.ssl_ca_cert = f.name
        with kubernetes.client.ApiClient(conf) as api:
            version = kubernetes.client.VersionApi(api).get_code(_request_timeout=timeout)
        return Finding(label, OK, f"{endpoint}: {version.git_version}")
    except ApiException as e:
        return Finding(label, FAILED, f"{endpoint}: HTTP {e.status} {e.reason}")
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
        return Finding(label, FAILED, f"{endpoint}: {e}")
    finally:
        if ca_file:
            Path(ca_file).unlink(missing_ok=True)


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
    get: Callable[[str], Any] = _current,
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
