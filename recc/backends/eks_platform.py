"""The EKS platform as the EKS backend sees it: its settings, the clients of one operation,
and what a cluster has there, found from tags and labels alone.

A RECC cluster on EKS is the union, by name, of a namespace labelled
``app.kubernetes.io/managed-by=recc`` + ``recc.io/cluster=<name>``, and of node groups and
launch templates tagged ``recc:managed-by=recc`` + ``recc:cluster=<name>``. Any of them may be
missing (a create interrupted midway); :class:`Found` holds what exists, and says how to
remove each piece by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recc import aws, config, nodegroups
from recc.kube import apply
from recc.kube.apply import Ref
from recc.kube.client import api_client, eks_setting
from recc.lifecycle import Leftover
from recc.tags import CLUSTER_LABEL, CLUSTER_TAG, MANAGED_BY_LABEL, MANAGED_BY_VALUE

MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"


@dataclass(frozen=True)
class EKSPlatform:
    """The ``recc.eks.*`` settings, checked before anything is created.

    Example
    -------
    >>> import boto3, dask
    >>> with dask.config.set({"recc.eks.cluster-name": "research", "recc.eks.region": "eu-west-1",
    ...                       "recc.eks.subnets": ["subnet-1"], "recc.eks.node-role-arn": None}):
    ...     EKSPlatform.from_config(boto3.Session())
    Traceback (most recent call last):
    recc.errors.ConfigError: recc.eks.node-role-arn is not set (for example: \
arn:aws:iam::111122223333:role/recc-node): set it in ~/.config/dask/recc.yaml or \
DASK_RECC__EKS__NODE_ROLE_ARN, or run `recc platform configure --from-terraform outputs.json`
    """

    cluster_name: str
    region: str
    subnets: tuple[str, ...] = ()
    node_role_arn: str = ""
    security_groups: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, session: Any, for_create: bool = True) -> EKSPlatform:
        """Read ``recc.eks.*``; :class:`ConfigError` names the first missing key and where to
        set it. Finding and deleting clusters needs only the cluster name and region."""
        name = eks_setting("eks.cluster-name", "research-dask")
        region = config.get("eks.region") or session.region_name
        if not region:
            eks_setting("eks.region", "eu-west-1")  # raises, saying where to set it
        if not for_create:
            return cls(name, region)
        subnets = eks_setting("eks.subnets", '["subnet-0a1b2c3d4e5f60718"]')
        role = eks_setting("eks.node-role-arn", "arn:aws:iam::111122223333:role/recc-node")
        if isinstance(subnets, str):
            subnets = [subnets]
        return cls(
            name, region, tuple(subnets), role, tuple(config.get("eks.security-groups") or ())
        )

    def remove_nodegroup(self, name: str) -> str:
        """The command that deletes node group ``name`` by hand."""
        return (
            f"aws eks delete-nodegroup --cluster-name {self.cluster_name} "
            f"--nodegroup-name {name} --region {self.region}"
        )

    def remove_launch_template(self, name: str) -> str:
        """The command that deletes launch template ``name`` by hand."""
        return (
            f"aws ec2 delete-launch-template --launch-template-name {name} --region {self.region}"
        )


@dataclass
class Connection:
    """The clients one operation uses: AWS (one boto3 session) and the Kubernetes API."""

    session: Any
    platform: EKSPlatform
    eks: Any
    ec2: Any
    api: Any

    @classmethod
    def open(cls, for_create: bool = False) -> Connection:
        """Check the settings (ConfigError before anything is made), then make the clients."""
        session = aws.session()
        platform = EKSPlatform.from_config(session, for_create)
        return cls(
            session,
            platform,
            session.client("eks", region_name=platform.region),
            session.client("ec2", region_name=platform.region),
            api_client(session),
        )

    def close(self) -> None:
        self.api.close()


def namespace_ref(name: str) -> Ref:
    """The namespace of cluster ``name`` (it has the cluster's name)."""
    return Ref("v1", "Namespace", name)


def tag_map(resource: dict[str, Any]) -> dict[str, str]:
    """An EC2 ``Tags`` list as a dict."""
    return {t["Key"]: t["Value"] for t in resource.get("Tags") or []}


@dataclass
class Found:
    """What exists of one cluster."""

    name: str
    namespace: dict[str, Any] | None = None
    nodegroups: list[dict[str, Any]] = field(default_factory=list)
    launch_templates: list[dict[str, Any]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespace or self.nodegroups or self.launch_templates)

    def leftovers(self, platform: EKSPlatform) -> list[Leftover]:
        """Each resource as a leftover, with the command that removes it by hand."""
        out = [
            Leftover(
                f"node group {ng['nodegroupName']}",
                f"still exists ({ng.get('status', '?')})",
                platform.remove_nodegroup(ng["nodegroupName"]),
            )
            for ng in self.nodegroups
        ]
        out += [
            Leftover(
                f"launch template {lt['LaunchTemplateName']}",
                "still exists",
                platform.remove_launch_template(lt["LaunchTemplateName"]),
            )
            for lt in self.launch_templates
        ]
        if self.namespace is not None:
            out.append(
                Leftover(
                    f"namespace {self.name}",
                    "still exists",
                    f"kubectl delete namespace {self.name}",
                )
            )
        return out


def discover(conn: Connection, name: str) -> Found:
    """Everything of cluster ``name``, by its labels and tags."""
    namespace = apply.read(conn.api, namespace_ref(name))
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or labels.get(CLUSTER_LABEL) != name:
        namespace = None  # somebody else's namespace of that name is not ours to report
    return Found(
        name,
        namespace,
        nodegroups.find_nodegroups(conn.eks, conn.platform.cluster_name, name),
        nodegroups.find_launch_templates(conn.ec2, name),
    )


def discover_all(conn: Connection) -> dict[str, Found]:
    """Every RECC cluster on the platform (everyone's), by labels and tags."""
    everything: dict[str, Found] = {}
    for ns in apply.list_objects(conn.api, "v1", "Namespace", label_selector=MANAGED_SELECTOR):
        cluster = (ns["metadata"].get("labels") or {}).get(CLUSTER_LABEL)
        if cluster == ns["metadata"]["name"]:
            everything.setdefault(cluster, Found(cluster)).namespace = ns
    for ng in nodegroups.find_nodegroups(conn.eks, conn.platform.cluster_name):
        cluster = ng["tags"].get(CLUSTER_TAG)
        everything.setdefault(cluster, Found(cluster)).nodegroups.append(ng)
    for lt in nodegroups.find_launch_templates(conn.ec2):
        cluster = tag_map(lt).get(CLUSTER_TAG)
        everything.setdefault(cluster, Found(cluster)).launch_templates.append(lt)
    return everything
