"""The AWS side of a cluster: one EC2 launch template and one EKS managed node group per
worker group, created from the plan, found again by their tags, scaled and deleted.

The request builders are pure (:func:`nodegroup_specs`, :func:`launch_template_request`,
:func:`nodegroup_request`); the functions that call AWS take the boto3 client as their first
argument. Every delete is idempotent and guarded: a resource without
``recc:managed-by=recc`` is never touched (:class:`NotManaged`).

Why a launch template: tags on a node group stay on the node group. The launch template's tag
specifications put the cost tags on the EC2 instances and their volumes, where the bill is.

Example
-------
>>> ng = NodeGroupSpec(cluster="c", group="default", eks_cluster="research",
...                    instance_type="c5.xlarge", instances=3, spot=False,
...                    subnets=("subnet-1",), node_role_arn="arn:aws:iam::1:role/node",
...                    tags={"recc:managed-by": "recc"})
>>> nodegroup_request(ng, "lt-0abc")["scalingConfig"]
{'minSize': 3, 'maxSize': 3, 'desiredSize': 3}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from recc.errors import BackendError
from recc.plan import NodePlan
from recc.render import NODEGROUP_LABEL, TAINT_KEY, nodegroup_name
from recc.tags import CLUSTER_LABEL, CLUSTER_TAG, MANAGED_BY_TAG, MANAGED_BY_VALUE, is_managed

ABSENT, DELETED, DELETING = "absent", "deleted", "deleting"
ACTIVE = "ACTIVE"
FAILED_STATES = ("CREATE_FAILED", "DELETE_FAILED", "DEGRADED")
_NOT_FOUND = ("ResourceNotFoundException", "InvalidLaunchTemplateName.NotFoundException")


class NotManaged(BackendError):
    """Refused to change an AWS resource that RECC did not create."""


class NodeGroupFailed(BackendError):
    """A node group reached a failed state; the message carries EKS's health issues."""


@dataclass(frozen=True)
class NodeGroupSpec:
    """One worker group's node group and launch template (both named ``<cluster>-<group>``)."""

    cluster: str
    group: str
    eks_cluster: str
    instance_type: str
    instances: int
    spot: bool
    subnets: tuple[str, ...]
    node_role_arn: str
    tags: Mapping[str, str]
    security_groups: tuple[str, ...] = ()
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", nodegroup_name(self.cluster, self.group))

    @property
    def labels(self) -> dict[str, str]:
        """Node labels: pods select their node group with these."""
        return {NODEGROUP_LABEL: self.name, CLUSTER_LABEL: self.cluster}

    @property
    def taints(self) -> list[dict[str, str]]:
        """Only pods tolerating ``recc.io/cluster=<cluster>`` run on these nodes."""
        return [{"key": TAINT_KEY, "value": self.cluster, "effect": "NO_SCHEDULE"}]


def nodegroup_specs(
    cluster: str,
    plan: NodePlan,
    tags: Mapping[str, str],
    eks_cluster: str,
    subnets: Sequence[str],
    node_role_arn: str,
    security_groups: Sequence[str] = (),
) -> list[NodeGroupSpec]:
    """One :class:`NodeGroupSpec` per group of ``plan``, sized as the plan says."""
    return [
        NodeGroupSpec(
            cluster=cluster,
            group=group.name,
            eks_cluster=eks_cluster,
            instance_type=group.instance_type,
            instances=group.instances,
            spot=group.spot,
            subnets=tuple(subnets),
            node_role_arn=node_role_arn,
            tags=dict(tags),
            security_groups=tuple(security_groups),
        )
        for group in plan.groups
    ]


def scaling_config(instances: int) -> dict[str, int]:
    """A fixed size: RECC sizes node groups from the plan (EKS needs ``maxSize`` >= 1)."""
    return {"minSize": instances, "maxSize": max(instances, 1), "desiredSize": instances}


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def launch_template_request(ng: NodeGroupSpec) -> dict[str, Any]:
    """Keyword arguments of ``ec2.create_launch_template`` for ``ng``."""
    data: dict[str, Any] = {
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": _tag_list(ng.tags)},
            {"ResourceType": "volume", "Tags": _tag_list(ng.tags)},
        ],
        # IMDSv2 only, one hop: pods cannot borrow the node's role (they use IRSA).
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
    }
    if ng.security_groups:
        data["SecurityGroupIds"] = list(ng.security_groups)
    return {
        "LaunchTemplateName": ng.name,
        "VersionDescription": f"RECC cluster {ng.cluster}, worker group {ng.group}",
        "LaunchTemplateData": data,
        "TagSpecifications": [{"ResourceType": "launch-template", "Tags": _tag_list(ng.tags)}],
    }


def nodegroup_request(ng: NodeGroupSpec, launch_template_id: str) -> dict[str, Any]:
    """Keyword arguments of ``eks.create_nodegroup`` for ``ng``."""
    return {
        "clusterName": ng.eks_cluster,
        "nodegroupName": ng.name,
        "scalingConfig": scaling_config(ng.instances),
        "subnets": list(ng.subnets),
        "instanceTypes": [ng.instance_type],
        "capacityType": "SPOT" if ng.spot else "ON_DEMAND",
        "nodeRole": ng.node_role_arn,
        "labels": ng.labels,
        "taints": ng.taints,
        "tags": dict(ng.tags),
        "launchTemplate": {"id": launch_template_id},  # its default version
    }


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


# -- launch templates ---------------------------------------------------------------------


def create_launch_template(ec2: Any, ng: NodeGroupSpec) -> str:
    """Create the launch template of ``ng``; returns its id."""
    answer = ec2.create_launch_template(**launch_template_request(ng))
    return answer["LaunchTemplate"]["LaunchTemplateId"]


def describe_launch_template(ec2: Any, name: str) -> dict[str, Any] | None:
    """The launch template called ``name``, or None."""
    try:
        found = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]
    except ClientError as e:
        if _code(e) in _NOT_FOUND:
            return None
        raise
    return found[0] if found else None


def delete_launch_template(ec2: Any, name: str) -> str:
    """Delete launch template ``name`` if RECC made it: :data:`DELETED` or :data:`ABSENT`."""
    template = describe_launch_template(ec2, name)
    if template is None:
        return ABSENT
    _check_managed(f"launch template {name}", _tags(template.get("Tags")))
    try:
        ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
    except ClientError as e:
        if _code(e) in _NOT_FOUND:
            return ABSENT
        raise
    return DELETED


def find_launch_templates(ec2: Any, cluster: str | None = None) -> list[dict[str, Any]]:
    """RECC's launch templates (of ``cluster``), found by their tags."""
    filters = [{"Name": f"tag:{MANAGED_BY_TAG}", "Values": [MANAGED_BY_VALUE]}]
    if cluster is not None:
        filters.append({"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]})
    found = []
    pages = ec2.get_paginator("describe_launch_templates").paginate(
        Filters=filters, PaginationConfig={"PageSize": 200})  # EC2's largest page
    for page in pages:
        found += [t for t in page["LaunchTemplates"] if is_managed(_tags(t.get("Tags")))]
    return found


# -- node groups ----------------------------------------------------------------------------


def create_nodegroup(eks: Any, ng: NodeGroupSpec, launch_template_id: str) -> dict[str, Any]:
    """Create the node group of ``ng``; returns EKS's description of it."""
    return eks.create_nodegroup(**nodegroup_request(ng, launch_template_id))["nodegroup"]


def describe_nodegroup(eks: Any, eks_cluster: str, name: str) -> dict[str, Any] | None:
    """EKS's description of node group ``name``, or None when it does not exist."""
    try:
        return eks.describe_nodegroup(clusterName=eks_cluster, nodegroupName=name)["nodegroup"]
    except ClientError as e:
        if _code(e) in _NOT_FOUND:
            return None
        raise


def check_active(nodegroup: dict[str, Any]) -> bool:
    """True once ACTIVE; raises :class:`NodeGroupFailed` with EKS's reasons when it failed."""
    status = nodegroup.get("status", "")
    if status in FAILED_STATES:
        issues = (nodegroup.get("health") or {}).get("issues") or []
        reasons = "; ".join(f"{i.get('code')}: {i.get('message')}" for i in issues)
        raise NodeGroupFailed(
            f"node group {nodegroup.get('nodegroupName')} is {status}"
            + (f" ({reasons})" if reasons else "")
        )
    return status == ACTIVE


def scale_nodegroup(eks: Any, eks_cluster: str, name: str, instances: int) -> None:
    """Set the node group's size (it must be RECC's and exist)."""
    current = describe_nodegroup(eks, eks_cluster, name)
    if current is None:
        raise BackendError(f"node group {name} does not exist on {eks_cluster}")
    _check_managed(f"node group {name}", current.get("tags") or {})
    eks.update_nodegroup_config(
        clusterName=eks_cluster, nodegroupName=name, scalingConfig=scaling_config(instances)
    )


def delete_nodegroup(eks: Any, eks_cluster: str, name: str) -> str:
    """Scale node group ``name`` to 0, then delete it, if RECC made it.

    Returns :data:`DELETED` (deletion started), :data:`DELETING` (it was being deleted) or
    :data:`ABSENT`. Raises ``ClientError`` ``ResourceInUseException`` while the node group is
    busy (creating or updating): call again later.
    """
    current = describe_nodegroup(eks, eks_cluster, name)
    if current is None:
        return ABSENT
    _check_managed(f"node group {name}", current.get("tags") or {})
    if current.get("status") == "DELETING":
        return DELETING
    desired = (current.get("scalingConfig") or {}).get("desiredSize", 0)
    try:
        if desired and current.get("status") == ACTIVE:
            # Workers go first and gracefully, then the (now empty) node group.
            eks.update_nodegroup_config(
                clusterName=eks_cluster, nodegroupName=name, scalingConfig=scaling_config(0)
            )
        eks.delete_nodegroup(clusterName=eks_cluster, nodegroupName=name)
    except ClientError as e:
        if _code(e) in _NOT_FOUND:
            return ABSENT
        raise
    return DELETED


def find_nodegroups(eks: Any, eks_cluster: str, cluster: str | None = None) -> list[dict]:
    """RECC's node groups on ``eks_cluster`` (of ``cluster``), found by their tags.

    With ``cluster``, only names that could be its node groups are described (one call
    each), so deleting one cluster costs the same however many others share the platform.
    """
    prefix = nodegroup_name(cluster, "") if cluster is not None else ""
    found = []
    for page in eks.get_paginator("list_nodegroups").paginate(clusterName=eks_cluster):
        for name in page["nodegroups"]:
            if not name.startswith(prefix):
                continue
            described = describe_nodegroup(eks, eks_cluster, name)
            tags = (described or {}).get("tags") or {}
            if described and is_managed(tags) and cluster in (None, tags.get(CLUSTER_TAG)):
                found.append(described)
    return found


def _tags(tag_list: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tag_list or []}


def _check_managed(what: str, tags: Mapping[str, str]) -> None:
    if not is_managed(tags):
        raise NotManaged(
            f"refusing to change {what}: it lacks the tag {MANAGED_BY_TAG}={MANAGED_BY_VALUE}, "
            "so RECC did not create it"
        )
