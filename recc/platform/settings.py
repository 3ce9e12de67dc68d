"""The platform settings RECC reads: which Terraform output sets which ``recc.eks.*`` key.

Shared by :mod:`recc.platform.configure` (writes them), :mod:`recc.platform.check` (reports
them) and :mod:`recc.platform.install` (hands them to the harvester).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recc import config

PLATFORM_FILE = "recc-platform.yaml"
"""Name of the file ``configure`` writes in the user's dask config directory."""


@dataclass(frozen=True)
class Setting:
    """One platform setting: the Terraform output it comes from and the RECC key it sets.

    ``pattern`` is searched for (``re.search``): anchored with ``^`` and ``\\Z`` where the whole
    value must match (``$`` would also accept a trailing newline), with ``^`` alone for a prefix.
    """

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
            r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}\Z"),
    Setting("region", "eks.region", str, True, "eu-west-1", r"^[a-z]{2}(-[a-z]+)+-\d\Z"),
    Setting("subnet_ids", "eks.subnets", list, True, '["subnet-0a1b2c3d4e5f60718"]',
            r"^subnet-[0-9a-f]+\Z"),
    Setting("node_role_arn", "eks.node-role-arn", str, True, _ROLE + "node", _ARN_IAM),
    # Optional: RECC has a default or the feature is off without them.
    Setting("security_group_ids", "eks.security-groups", list, False, '["sg-0a1b2c3d4e5f60718"]',
            r"^sg-[0-9a-f]+\Z"),
    Setting("worker_role_arn", "eks.worker-role-arn", str, False, _ROLE + "worker", _ARN_IAM),
    Setting("harvester_role_arn", "eks.harvester-role-arn", str, False, _ROLE + "harvester",
            _ARN_IAM),
    Setting("allowed_client_cidrs", "eks.allowed-client-cidrs", list, False, '["10.0.0.0/8"]',
            r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}\Z"),
    Setting("cluster_endpoint", "eks.endpoint", str, False,
            "https://0123456789ABCDEF.gr7.eu-west-1.eks.amazonaws.com", r"^https?://"),
    Setting("cluster_ca_data", "eks.ca-data", str, False, "LS0tLS1CRUdJTi...",
            r"^[A-Za-z0-9+/=\s]+\Z"),
    Setting("operator_namespace", "eks.operator-namespace", str, False, "dask-operator"),
    Setting("system_namespace", "eks.system-namespace", str, False, "recc"),
    Setting("namespace_prefix", "eks.namespace-prefix", str, False, "recc-"),
    Setting("worker_service_account", "eks.worker-service-account", str, False, "recc-worker"),
    Setting("harvester_service_account", "eks.harvester-service-account", str, False,
            "recc-harvester"),
    Setting("researcher_group", "eks.researcher-group", str, False, "recc-researchers"),
    Setting("harvester_group", "eks.harvester-group", str, False, "recc-harvester"),
    Setting("harvester_schedule", "eks.harvester-schedule", str, False, "*/10 * * * *",
            r"^\S+(\s+\S+){4}\Z"),
    Setting("harvester_image", "eks.harvester-image", str, False, "ghcr.io/example/recc:0.1.0"),
    Setting("source_nfs_server", "eks.source-nfs-server", str, False,
            "fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com"),
    Setting("source_nfs_path", "eks.source-nfs-path", str, False, "/recc/branches"),
)
# fmt: on
"""Every setting ``configure`` writes, in display order (required ones first)."""

TERRAFORM_OUTPUTS: dict[str, str] = {s.output: s.key for s in SETTINGS}
"""Terraform output name -> RECC config key (under ``recc.``)."""


def current(key: str) -> Any:
    """The current value of ``recc.<key>``, None when unset."""
    # Keys this package introduced may be absent from older packaged defaults.
    return config.get(key, default=None)


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
