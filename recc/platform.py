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
import copy
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from recc import aws, config
from recc.errors import BackendError, ConfigError

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
    Setting("system_namespace", "eks.system-namespace", str, False, "recc"),
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
    return config.get(key, default=None)


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
    session: Any | None = None, get: Callable[[str], Any] = _current, timeout: float = 5.0
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


# ---------------------------------------------------------------------------------------------
# install: the Kubernetes side of the platform (operator, RBAC, harvester schedule)
# ---------------------------------------------------------------------------------------------

# Platform objects say they are part of RECC but are *not* managed-by=recc: the harvester may
# delete whatever carries that label, and it must never take the platform for an orphan.
PLATFORM_LABELS = {
    "app.kubernetes.io/part-of": "recc",
    "app.kubernetes.io/component": "platform",
    "app.kubernetes.io/managed-by": "recc-platform",
}
OPERATOR_NAME = "dask-kubernetes-operator"
SYSTEM_POOL = {"recc.io/pool": "system"}  # the Terraform module's system node group label
_CHART = ("operator", "deployment", "helm", "dask-kubernetes-operator")


def _labels(**extra: str) -> dict[str, str]:
    return {**PLATFORM_LABELS, **extra}


def _meta(name: str, namespace: str | None = None, **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels()}
    if namespace:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = annotations
    return meta


def _chart_file(*parts: str) -> Any:
    from importlib.resources import files

    return files("dask_kubernetes").joinpath(*_CHART, *parts)


def _chart_template(name: str, **values: str) -> dict[str, Any]:
    """One of the operator chart's static templates, with its few Helm expressions filled in.

    Only the RBAC templates are read this way: they are plain YAML between ``{{- if }}`` lines
    plus the service account name and release namespace. Anything else left unrendered means
    the chart changed shape, which is an error rather than a silently wrong manifest.
    """
    text = _chart_file("templates", name).read_text()
    substitutions = {
        '{{ include "dask_kubernetes_operator.serviceAccountName" . }}': values["account"],
        "{{ .Release.Namespace }}": values.get("namespace", ""),
    }
    lines = []
    for line in text.splitlines():
        if re.fullmatch(r"\s*\{\{-.*\}\}\s*", line):
            continue  # {{- if ... }} / {{- end }}: RECC always wants cluster-wide RBAC
        for template, value in substitutions.items():
            line = line.replace(template, value)
        if "{{" in line:
            raise ConfigError(
                f"dask-kubernetes' chart template {name} has an expression RECC cannot fill: "
                f"{line.strip()!r}; install a dask-kubernetes version RECC supports"
            )
        lines.append(line)
    manifest = yaml.safe_load("\n".join(lines))
    manifest["metadata"]["labels"] = _labels()
    return manifest


@cache
def _operator_crds() -> list[dict[str, Any]]:
    # ~900 kB of YAML: parsed once per process, with the C loader when PyYAML has it.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [
        yaml.load(f.read_text(), Loader=loader)
        for f in sorted(_chart_file("crds").iterdir(), key=lambda f: f.name)
        if f.name.endswith(".yaml")
    ]


def operator_manifests(namespace: str) -> list[dict[str, Any]]:
    """The dask-kubernetes operator as its Helm chart installs it, from the installed package.

    CRDs and RBAC come verbatim from the chart inside ``dask_kubernetes``; the Deployment
    follows the chart's defaults (security context, kopf arguments, liveness probe) with the
    image tag of the installed ``dask_kubernetes``, so operator and client library match.
    """
    import dask_kubernetes

    crds = copy.deepcopy(_operator_crds())
    values = yaml.safe_load(_chart_file("values.yaml").read_text())
    selector = {"app.kubernetes.io/name": OPERATOR_NAME, "app.kubernetes.io/instance": "recc"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**_meta(OPERATOR_NAME, namespace), "labels": _labels(**selector)},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # two kopf peers would fight over resources
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": _labels(**selector)},
                "spec": {
                    "serviceAccountName": OPERATOR_NAME,
                    "nodeSelector": SYSTEM_POOL,
                    "containers": [
                        {
                            "name": OPERATOR_NAME,
                            "image": f"{values['image']['name']}:{dask_kubernetes.__version__}",
                            "imagePullPolicy": values["image"]["pullPolicy"],
                            "args": ["--liveness=http://0.0.0.0:8080/healthz", *values["kopfArgs"]],
                            "securityContext": values["securityContext"],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "256Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": 8080},
                                "timeoutSeconds": values["livenessProbe"]["timeoutSeconds"],
                            },
                        }
                    ],
                },
            },
        },
    }
    return [
        *crds,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(OPERATOR_NAME, namespace)},
        _chart_template("clusterrole.yaml", account=OPERATOR_NAME),
        _chart_template("clusterrolebinding.yaml", account=OPERATOR_NAME, namespace=namespace),
        deployment,
    ]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def _cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta(name),
        "rules": rules,
    }


def _binding(name: str, subjects: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": subjects,
    }


def _group(name: str) -> dict[str, Any]:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name}


def researcher_manifests(group: str, namespace_prefix: str) -> list[dict[str, Any]]:
    """What researchers need beyond EKS's namespace-scoped admin policy, and its fence.

    Creating a namespace and DaskCluster resources is cluster-scoped in RBAC, which cannot
    restrict by name or label; a ValidatingAdmissionPolicy confines those writes to namespaces
    named ``<prefix>*`` and labelled managed-by=recc, for members of ``group`` only.
    """
    dask_resources = ["daskclusters", "daskworkergroups", "daskjobs", "daskautoscalers"]
    name = "recc-researcher"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": _meta(f"{name}-scope"),
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["namespaces", "resourcequotas"],
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                    },
                    {
                        "apiGroups": ["kubernetes.dask.org"],
                        "apiVersions": ["*"],
                        "resources": dask_resources,
                        "operations": ["CREATE", "UPDATE", "DELETE"],
                    },
                ]
            },
            "matchConditions": [
                {"name": "researchers-only", "expression": f"{group!r} in request.userInfo.groups"}
            ],
            "variables": [
                {
                    "name": "target",
                    "expression": "request.operation == 'DELETE' ? oldObject : object",
                },
                {
                    "name": "ns",
                    "expression": "request.resource.resource == 'namespaces' ? request.name"
                    " : request.namespace",
                },
            ],
            "validations": [
                {
                    "expression": f"variables.ns.startsWith({namespace_prefix!r})",
                    "messageExpression": f"'RECC researchers may only write in namespaces named"
                    f" {namespace_prefix}*, not ' + variables.ns",
                },
                {
                    "expression": "request.resource.resource != 'namespaces' || "
                    "(has(variables.target.metadata.labels) && "
                    "variables.target.metadata.labels.exists(k, "
                    "k == 'app.kubernetes.io/managed-by' && "
                    "variables.target.metadata.labels[k] == 'recc'))",
                    "message": "RECC researchers may only create or delete namespaces labelled "
                    "app.kubernetes.io/managed-by=recc",
                },
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": _meta(f"{name}-scope"),
        "spec": {"policyName": f"{name}-scope", "validationActions": ["Deny"]},
    }
    role = _cluster_role(
        name,
        [
            _rule([""], ["namespaces"], ["get", "list", "watch", "create", "patch", "delete"]),
            _rule([""], ["resourcequotas"], ["get", "list", "create", "patch", "delete"]),
            _rule(["kubernetes.dask.org"], dask_resources, ["*"]),
            # Waiting for a cluster's nodes to be Ready.
            _rule([""], ["nodes"], ["get", "list", "watch"]),
        ],
    )
    return [role, _binding(name, [_group(group)]), policy, binding]


def harvester_manifests(settings: Mapping[str, Any], recc_version: str) -> list[dict[str, Any]]:
    """The harvester: service account (IRSA), RBAC, its config, and the CronJob.

    ``settings`` are the platform settings (``eks.*`` keys, as ``configure`` writes them); the
    harvester pod gets them as its dask config, so it acts on the same platform as the CLI.
    """
    namespace = settings["eks.system-namespace"]
    account = settings["eks.harvester-service-account"]
    role_arn = settings.get("eks.harvester-role-arn")
    if not role_arn:
        raise ConfigError(
            "recc.eks.harvester-role-arn is not set: the harvester needs its IRSA role (for "
            "example: arn:aws:iam::123456789012:role/research-dask-recc-harvester; run recc "
            "platform configure --from-terraform)"
        )
    image = settings.get("eks.harvester-image") or settings["image"]
    env = [{"name": "DASK_CONFIG", "value": "/etc/recc"}]
    if not settings.get("eks.harvester-image"):
        # The Dask image's entrypoint installs EXTRA_PIP_PACKAGES before running the args.
        env.append({"name": "EXTRA_PIP_PACKAGES", "value": f"recc=={recc_version}"})
    platform_yaml = yaml.safe_dump(
        nest({k: v for k, v in settings.items() if k.startswith("eks.")}), sort_keys=False
    )
    cron_job = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _meta("recc-harvester", namespace),
        "spec": {
            "schedule": settings["eks.harvester-schedule"],
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",  # a slow pass must not race the next one
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": _labels()},
                "spec": {
                    "backoffLimit": 0,  # the next scheduled pass is the retry
                    "activeDeadlineSeconds": 1800,
                    "template": {
                        "metadata": {"labels": _labels(**{"app.kubernetes.io/name": "harvester"})},
                        "spec": {
                            "serviceAccountName": account,
                            "restartPolicy": "Never",
                            "nodeSelector": SYSTEM_POOL,
                            "containers": [
                                {
                                    "name": "harvester",
                                    "image": image,
                                    # args, not command: keep the image's entrypoint.
                                    "args": [
                                        "recc",
                                        "harvest",
                                        "--backend",
                                        "eks",
                                        "--yes",
                                        "--json",
                                    ],
                                    "env": env,
                                    "resources": {
                                        "requests": {"cpu": "100m", "memory": "256Mi"},
                                        "limits": {"memory": "1Gi"},
                                    },
                                    "securityContext": {"allowPrivilegeEscalation": False},
                                    "volumeMounts": [
                                        {
                                            "name": "config",
                                            "mountPath": "/etc/recc",
                                            "readOnly": True,
                                        }
                                    ],
                                }
                            ],
                            "volumes": [{"name": "config", "configMap": {"name": "recc-platform"}}],
                        },
                    },
                },
            },
        },
    }
    role = _cluster_role(
        "recc-harvester",
        [
            _rule([""], ["namespaces"], ["get", "list", "watch", "delete"]),
            _rule([""], ["pods", "services"], ["get", "list", "watch"]),
            # Idle checks talk to each scheduler over TLS with the cluster's client credentials,
            # from outside the cluster through a port-forward.
            _rule([""], ["secrets"], ["get"]),
            _rule([""], ["pods/portforward"], ["create"]),
            _rule(
                ["kubernetes.dask.org"],
                ["daskclusters", "daskworkergroups"],
                ["get", "list", "watch", "patch", "delete"],
            ),
            _rule([""], ["nodes"], ["get", "list", "watch"]),
        ],
    )
    subjects = [
        {"kind": "ServiceAccount", "name": account, "namespace": namespace},
        _group(settings["eks.harvester-group"]),
    ]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace)},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(account, namespace, **{"eks.amazonaws.com/role-arn": role_arn}),
        },
        role,
        _binding("recc-harvester", subjects),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("recc-platform", namespace),
            "data": {PLATFORM_FILE: platform_yaml},
        },
        cron_job,
    ]


INSTALL_DEFAULTS = {
    "eks.operator-namespace": "dask-operator",
    "eks.system-namespace": "recc",
    "eks.namespace-prefix": "recc-",
    "eks.harvester-service-account": "recc-harvester",
    "eks.researcher-group": "recc-researchers",
    "eks.harvester-group": "recc-harvester",
    "eks.harvester-schedule": "*/10 * * * *",
}
"""What ``install`` assumes for settings Terraform did not provide (the module's defaults)."""


def platform_settings(get: Callable[[str], Any] = _current) -> dict[str, Any]:
    """The current platform settings (every ``SETTINGS`` key, plus ``image``), defaults filled."""
    settings = {s.key: get(s.key) for s in SETTINGS}
    for key, default in INSTALL_DEFAULTS.items():
        settings[key] = settings.get(key) or default
    settings["image"] = get("image")
    return settings


def platform_manifests(settings: Mapping[str, Any], recc_version: str) -> list[dict[str, Any]]:
    """Every Kubernetes object of the platform, in the order they must be applied. Pure.

    Example::

        >>> settings = {**platform_settings(), "eks.harvester-role-arn": "arn:aws:iam::1:role/h"}
        >>> sorted({m["kind"] for m in platform_manifests(settings, "0.1.0")})[:3]
        ['ClusterRole', 'ClusterRoleBinding', 'ConfigMap']
    """
    prefix = settings["eks.namespace-prefix"]
    for key in ("eks.system-namespace", "eks.operator-namespace"):
        if settings[key].startswith(prefix):
            raise ConfigError(
                f"recc.{key}={settings[key]!r} starts with recc.eks.namespace-prefix={prefix!r}: "
                "researchers are admins in those namespaces and could act as the platform "
                "(for example: recc, dask-operator)"
            )
    manifests = [
        *operator_manifests(settings["eks.operator-namespace"]),
        *researcher_manifests(settings["eks.researcher-group"], settings["eks.namespace-prefix"]),
        *harvester_manifests(settings, recc_version),
    ]
    order = ["CustomResourceDefinition", "Namespace"]  # what other objects live in or refer to
    return sorted(manifests, key=lambda m: order.index(m["kind"]) if m["kind"] in order else 2)


# (apiVersion, kind) -> (kubernetes.client API class, method suffix, namespaced)
_KUBE_APIS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): (
        "ApiextensionsV1Api", "custom_resource_definition", False),
    ("v1", "Namespace"): ("CoreV1Api", "namespace", False),
    ("v1", "ServiceAccount"): ("CoreV1Api", "namespaced_service_account", True),
    ("v1", "ConfigMap"): ("CoreV1Api", "namespaced_config_map", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): (
        "RbacAuthorizationV1Api", "cluster_role", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): (
        "RbacAuthorizationV1Api", "cluster_role_binding", False),
    ("apps/v1", "Deployment"): ("AppsV1Api", "namespaced_deployment", True),
    ("batch/v1", "CronJob"): ("BatchV1Api", "namespaced_cron_job", True),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): (
        "AdmissionregistrationV1Api", "validating_admission_policy", False),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): (
        "AdmissionregistrationV1Api", "validating_admission_policy_binding", False),
}  # fmt: skip


@dataclass(frozen=True)
class Applied:
    """One object ``install`` applied: ``created`` or ``updated``."""

    kind: str
    name: str
    namespace: str | None
    action: str


def apply_manifest(api_client: Any, manifest: Mapping[str, Any]) -> Applied:
    """Create ``manifest``, or replace it when it exists (so install can be re-run)."""
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    api_name, suffix, namespaced = _KUBE_APIS[(manifest["apiVersion"], manifest["kind"])]
    api = getattr(kubernetes.client, api_name)(api_client)
    name = manifest["metadata"]["name"]
    where = {"namespace": manifest["metadata"]["namespace"]} if namespaced else {}
    try:
        getattr(api, f"create_{suffix}")(body=manifest, **where)
        return Applied(manifest["kind"], name, where.get("namespace"), "created")
    except ApiException as e:
        if e.status != 409:
            raise
    current = getattr(api, f"read_{suffix}")(name=name, **where)
    body = {
        **manifest,
        "metadata": {**manifest["metadata"], "resourceVersion": current.metadata.resource_version},
    }
    getattr(api, f"replace_{suffix}")(name=name, body=body, **where)
    return Applied(manifest["kind"], name, where.get("namespace"), "updated")


def install_platform(api_client: Any, manifests: list[dict[str, Any]]) -> list[Applied]:
    """Apply ``manifests`` in order; stop at the first failure with what was applied so far.

    Install is idempotent rather than transactional: re-running it after a failure finishes
    the job, and nothing it applies is ever deleted by RECC.
    """
    from kubernetes.client.exceptions import ApiException

    applied: list[Applied] = []
    for manifest in manifests:
        try:
            applied.append(apply_manifest(api_client, manifest))
        except ApiException as e:
            done = ", ".join(f"{a.kind}/{a.name}" for a in applied) or "nothing"
            raise BackendError(
                f"applying {manifest['kind']}/{manifest['metadata']['name']} failed: HTTP "
                f"{e.status} {e.reason} {e.body or ''}".strip()
                + f". Applied before it: {done}. Fix the cause and re-run recc platform install."
            ) from e
    return applied


def recc_version() -> str:
    """The installed RECC's version (what the harvester image must run)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recc")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.1.0"


def install(session: Any | None = None) -> list[Applied]:
    """``recc platform install``: apply the platform's Kubernetes objects to its EKS cluster.

    Needs platform-admin rights on the cluster. :func:`platform_manifests` shows what it
    applies without contacting anything (``recc platform install --dry-run``).

    Example::

        >>> for a in install():  # doctest: +SKIP
        ...     print(a.action, a.kind, a.name)
        created CustomResourceDefinition daskclusters.kubernetes.dask.org
    """
    settings = platform_settings()
    manifests = platform_manifests(settings, recc_version())
    name, region = settings["eks.cluster-name"], settings["eks.region"]
    if not name or not region:
        raise ConfigError(
            "recc.eks.cluster-name and recc.eks.region must be set before installing (for "
            "example: recc platform configure --from-terraform platform.json)"
        )
    session = session or aws.session()
    endpoint, ca_data = settings["eks.endpoint"], settings["eks.ca-data"]
    if not endpoint:
        from botocore.exceptions import ClientError

        try:
            cluster = session.client("eks", region_name=region).describe_cluster(name=name)
        except ClientError as e:
            raise BackendError(f"cannot describe EKS cluster {name} in {region}: {e}") from e
        endpoint = cluster["cluster"]["endpoint"]
        ca_data = ca_data or cluster["cluster"]["certificateAuthority"]["data"]
    with kubernetes_api_client(session, name, region, endpoint, ca_data) as api:
        return install_platform(api, manifests)
