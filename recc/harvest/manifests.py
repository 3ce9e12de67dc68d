"""The harvester's Kubernetes objects, rendered from ``templates/k8s/harvester-cronjob.yaml.j2``,
and the AWS permissions it needs. Pure: settings in, dicts out.

:func:`harvester_manifests` takes the platform settings ``recc platform install`` uses (the
``eks.*`` keys) and returns the harvester's namespace, service account (IRSA), its
least-privilege ClusterRole and namespaced Role with their bindings, its config, and the
CronJob; ``recc platform install`` applies them with the rest of the platform.

Example
-------
>>> from recc.platform import platform_settings
>>> settings = {**platform_settings(lambda key: None), "image": "ghcr.io/dask/dask:2026.8.0",
...             "eks.harvester-role-arn": "arn:aws:iam::123456789012:role/recc-harvester"}
>>> [m["kind"] for m in harvester_manifests(settings, "0.1.0")]  # doctest: +NORMALIZE_WHITESPACE
['Namespace', 'ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding',
 'ConfigMap', 'CronJob']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from recc.errors import ConfigError

NAME = "recc-harvester"
CONFIG_MAP = "recc-platform"
ARGS = ["recc", "harvest", "--backend", "eks", "--yes", "--json"]

AWS_PERMISSIONS: dict[str, str] = {
    "eks:DescribeCluster": "the Kubernetes endpoint, when recc.eks.endpoint is not set",
    "eks:ListNodegroups": "discovery: the node group names of the EKS cluster",
    "eks:DescribeNodegroup": "tags of node groups nothing else accounts for; delete checks",
    "eks:UpdateNodegroupConfig": "reap: scale a RECC node group to 0 (tag-conditioned)",
    "eks:DeleteNodegroup": "reap: delete a RECC node group (tag-conditioned)",
    "ec2:DescribeLaunchTemplates": "discovery: RECC's launch templates, filtered by tag",
    "ec2:DeleteLaunchTemplate": "reap: delete a RECC launch template (tag-conditioned)",
    "sts:GetCallerIdentity": "the audit trail's record of who reaped (needs no permission)",
    "pricing:GetProducts": "$/h of orphaned node groups (optional: the bundled table else)",
}
"""IAM actions the harvester calls, and why. Deletes are conditioned on
``aws:ResourceTag/recc:managed-by = recc`` (terraform/irsa.tf, ``reap-recc-clusters``)."""


def harvester_manifests(
    settings: Mapping[str, Any], recc_version: str, extra_config: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The harvester's objects for ``recc platform install``, in apply order.

    ``settings``: the platform settings (``eks.system-namespace``,
    ``eks.harvester-service-account``, ``eks.harvester-role-arn``, ``eks.harvester-group``,
    ``eks.harvester-schedule``, ``eks.harvester-image``, ``image`` ...), as
    :func:`recc.platform.platform_settings` returns them. ``extra_config``: more dask config
    for the pod under ``recc.`` (default: the ledger's ``cost.ledger-url`` and storage options
    when set, so the pod's reaps reach the team's ledger and audit trail rather than its
    ephemeral disk). Raises :class:`ConfigError` without the harvester's IAM role.
    """
    from recc import config
    from recc.platform.install import PLATFORM_LABELS, SYSTEM_POOL
    from recc.platform.settings import PLATFORM_FILE, nest
    from recc.render import _render

    role_arn = settings.get("eks.harvester-role-arn")
    if not role_arn:
        raise ConfigError(
            "recc.eks.harvester-role-arn is not set: the harvester needs its IRSA role (for "
            "example: arn:aws:iam::123456789012:role/research-dask-recc-harvester; run recc "
            "platform configure --from-terraform)"
        )
    image = settings.get("eks.harvester-image") or settings["image"]
    env = {"DASK_CONFIG": "/etc/recc", "DASK_RECC__STATE_DIR": "/var/lib/recc"}
    if not settings.get("eks.harvester-image"):
        # The Dask image's entrypoint installs EXTRA_PIP_PACKAGES before running the args.
        env["EXTRA_PIP_PACKAGES"] = f"recc=={recc_version}"
    if extra_config is None:
        extra_config = {
            key: config.get(key)
            for key in ("cost.ledger-url", "cost.ledger-storage-options")
            if config.get(key)
        }
    pod_config = {k: v for k, v in settings.items() if k.startswith("eks.")}
    pod_config.update(extra_config)
    context = {
        "name": NAME,
        "namespace": settings["eks.system-namespace"],
        "account": settings["eks.harvester-service-account"],
        "group": settings["eks.harvester-group"],
        "role_arn": role_arn,
        "labels": dict(PLATFORM_LABELS),
        "pod_labels": {**PLATFORM_LABELS, "app.kubernetes.io/name": "harvester"},
        "config_map": CONFIG_MAP,
        "config_file": PLATFORM_FILE,
        "config_yaml": yaml.safe_dump(nest(pod_config), sort_keys=False),
        "schedule": settings["eks.harvester-schedule"],
        "node_selector": dict(SYSTEM_POOL),
        "image": image,
        "args": ARGS,
        "env": env,
    }
    return _render("harvester-cronjob", context)


def permits(
    manifests: list[dict[str, Any]],
    verb: str,
    resource: str,
    namespace: str | None = None,
    group: str = "",
) -> bool:
    """Whether the harvester's rendered RBAC allows ``verb`` on ``resource`` (a plural, with
    a subresource as ``pods/log``) in ``namespace``: its ClusterRole anywhere, its Role only
    in its own namespace. For reviews and tests of least privilege.

    >>> from recc.platform import platform_settings
    >>> settings = {**platform_settings(lambda key: None), "image": "i",
    ...             "eks.harvester-role-arn": "arn:aws:iam::1:role/h"}
    >>> objects = harvester_manifests(settings, "0.1.0")
    >>> permits(objects, "delete", "namespaces"), permits(objects, "create", "namespaces")
    (True, False)
    >>> permits(objects, "update", "configmaps", "recc"), permits(objects, "update", "configmaps")
    (True, False)
    """
    for role in manifests:
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        if role["kind"] == "Role" and role["metadata"].get("namespace") != namespace:
            continue
        for rule in role.get("rules") or []:
            if (
                group in rule.get("apiGroups", ())
                and resource in rule.get("resources", ())
                and verb in rule.get("verbs", ())
            ):
                return True
    return False
