"""``recc platform install``: the Kubernetes side of the platform, applied by a platform admin.

The dask-kubernetes operator (CRDs, RBAC and Deployment from the chart inside the installed
``dask_kubernetes``), the researchers' RBAC with its admission policy, and the harvester
(ServiceAccount, RBAC, ConfigMap, CronJob). The manifests are pure (settings -> dicts,
:func:`platform_manifests`); :func:`install` applies them through
:func:`recc.kube.client.api_client`::

    recc platform install --dry-run   # print the manifests, contact nothing
    recc platform install             # apply them; safe to re-run
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

from recc import aws
from recc.errors import BackendError, ConfigError
from recc.harvest.manifests import harvester_manifests
from recc.platform.settings import SETTINGS, current
from recc.render import OWNER_ROLE

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
            # Granting a cluster's owner recc-owner in its namespace (RECC's RoleBinding).
            {
                "apiGroups": ["rbac.authorization.k8s.io"],
                "resources": ["clusterroles"],
                "resourceNames": [OWNER_ROLE],
                "verbs": ["bind"],
            },
        ],
    )
    return [role, _binding(name, [_group(group)]), owner_role(), policy, binding]


def owner_role() -> dict[str, Any]:
    """What a cluster's owner may do in its namespace (bound there by RECC): use the cluster,
    not administer the namespace."""
    return _cluster_role(
        OWNER_ROLE,
        [
            _rule(
                [""],
                ["pods", "pods/log", "services", "endpoints", "events", "resourcequotas"],
                ["get", "list", "watch"],
            ),
            _rule([""], ["pods/portforward"], ["get", "create"]),
            _rule([""], ["secrets"], ["get"]),  # the namespace holds one cluster's Secrets
            _rule(["apps"], ["deployments"], ["get", "list", "watch"]),
            _rule(
                ["kubernetes.dask.org"],
                [
                    "daskclusters",
                    "daskclusters/scale",
                    "daskworkergroups",
                    "daskworkergroups/scale",
                    "daskautoscalers",
                ],
                ["get", "list", "watch", "create", "update", "patch", "delete"],
            ),
        ],
    )


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


def platform_settings(get: Callable[[str], Any] = current) -> dict[str, Any]:
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
    ("rbac.authorization.k8s.io/v1", "Role"): (
        "RbacAuthorizationV1Api", "namespaced_role", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        "RbacAuthorizationV1Api", "namespaced_role_binding", True),
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


_CONFLICT_RETRIES = 5


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
    # Replace at the version just read; a controller writing the object in between (a
    # Deployment's status, say) makes that a 409 Conflict: read again and retry, as kubectl does.
    for attempt in range(_CONFLICT_RETRIES):
        existing = getattr(api, f"read_{suffix}")(name=name, **where)
        version = existing.metadata.resource_version
        body = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": version}}
        try:
            getattr(api, f"replace_{suffix}")(name=name, body=body, **where)
            return Applied(manifest["kind"], name, where.get("namespace"), "updated")
        except ApiException as e:
            if e.status != 409 or attempt == _CONFLICT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


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
    applies without contacting anything (``recc platform install --dry-run``). ``session``
    (default: :func:`recc.aws.session`) signs the token and, when ``recc.eks.endpoint`` is not
    set, finds the endpoint with EKS DescribeCluster in its region.

    Example::

        >>> for a in install():  # doctest: +SKIP
        ...     print(a.action, a.kind, a.name)
        created CustomResourceDefinition daskclusters.kubernetes.dask.org
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from recc.kube.client import api_client

    settings = platform_settings()
    manifests = platform_manifests(settings, recc_version())
    name, region = settings["eks.cluster-name"], settings["eks.region"]
    if not name or not region:
        raise ConfigError(
            "recc.eks.cluster-name and recc.eks.region must be set before installing (for "
            "example: recc platform configure --from-terraform platform.json)"
        )
    session = session or aws.session()
    try:
        with api_client(session) as api:
            return install_platform(api, manifests)
    except ClientError as e:  # DescribeCluster (signing the token is local)
        raise BackendError(f"cannot describe EKS cluster {name} in {region}: {e}") from e
    except BotoCoreError as e:  # the bearer token is made when the first request is sent
        raise ConfigError(f"cannot make an EKS token for {name}: {e}") from e
