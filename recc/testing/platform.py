"""An emulated RECC platform on one machine: moto for AWS, the fake Kubernetes API, and the
dask-kubernetes operator emulated with local processes.

:func:`emulated_platform` builds what RECC's Terraform module builds (a VPC with two subnets,
a security group, the node IAM role, an EKS cluster with a small system node group) in moto,
starts the fake Kubernetes API server with the emulated operator (:mod:`recc.testing.operator`)
and Nodes for the node groups (:mod:`recc.testing.nodes`), and points RECC's ``recc.eks.*``
dask config at it, so ``RECCCluster(backend="eks")`` runs end to end here. :func:`serve`
runs the same platform for other processes (``python -m recc.testing serve``).

One platform at a time per process: moto's state, botocore's built-in handlers and the
environment are process-wide.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dask.config
import kubernetes.client

from recc.testing.fake_kube import FakeKubeServer
from recc.testing.faults import AWSFaults
from recc.testing.nodes import NodeSync, moto_nodegroups
from recc.testing.operator import DaskOperator, EmulatedProcess

_FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}
# Variables that would send boto3 to a real account or another endpoint while emulating.
_AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_ACTIVE = threading.Lock()


@dataclass(frozen=True)
class _Base:
    """The AWS side of the base platform, as created in moto."""

    account_id: str
    vpc_id: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    node_role_arn: str


class EmulatedPlatform:
    """A running emulated platform; made by :func:`emulated_platform`, not directly.

    Attributes
    ----------
    kube : FakeKubeServer
        The fake Kubernetes API server (objects, hooks, ``calls``, ``inject_failure``).
    eks_cluster_name, region, account_id : str
        The EKS cluster in moto, its region and the moto account.
    subnets, security_groups : tuple of str
        The base platform's subnet and security group ids.
    node_role_arn : str
        The IAM role node groups run as.
    state_dir : Path
        RECC's state directory for the platform's lifetime.
    aws_endpoint_url : str or None
        The moto server's URL when served to other processes; None in-process.
    """

    def __init__(
        self,
        kube: FakeKubeServer,
        operator: DaskOperator,
        base: _Base,
        eks_cluster_name: str,
        region: str,
        state_dir: Path,
        aws_endpoint_url: str | None,
    ) -> None:
        self.kube = kube
        self.operator = operator
        self._faults = AWSFaults(record=self._record_aws)
        self.eks_cluster_name = eks_cluster_name
        self.region = region
        self.account_id = base.account_id
        self.vpc_id = base.vpc_id
        self.subnets = base.subnets
        self.security_groups = base.security_groups
        self.node_role_arn = base.node_role_arn
        self.state_dir = state_dir
        self.aws_endpoint_url = aws_endpoint_url
        self._lock = threading.Lock()
        self._aws_calls: list[tuple[int, tuple[str, str, str]]] = []

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes.client.ApiClient`` for the fake API server."""
        return self.kube.api_client()

    def inject_failure(
        self,
        *,
        aws: tuple[str, str] | None = None,
        kube: tuple[str, str] | None = None,
        times: int | None = 1,
        hang: bool = False,
        code: str = "InternalFailure",
        status: int = 500,
        hang_seconds: float | None = None,
    ) -> None:
        """Make the next ``times`` matching calls fail (``times=None``: until cleared).

        Give either ``aws=(service, operation)``, e.g. ``("eks", "CreateNodegroup")``, or
        ``kube=(verb, resource)``, e.g. ``("create", "namespaces")``. An AWS failure raises
        ``ClientError`` with ``code`` and HTTP ``status``; a Kubernetes one answers ``status``.
        ``hang=True`` makes the call block instead: an AWS call for ``hang_seconds`` (default:
        the client's read timeout) then ReadTimeoutError; a Kubernetes call gets no answer for
        ``hang_seconds`` (default 30 s) so the client's ``_request_timeout`` fires. AWS faults
        reach boto3 clients of this process only (also when served).
        """
        if (aws is None) == (kube is None):
            raise ValueError(
                "give exactly one of aws=(service, operation) or kube=(verb, resource), "
                "for example: inject_failure(aws=('eks', 'CreateNodegroup'))"
            )
        if aws is not None:
            self._faults.inject(*aws, times, code, status, hang, hang_seconds)
        else:
            extra = {} if hang_seconds is None else {"hang_seconds": hang_seconds}
            self.kube.inject_failure(*kube, times=times, status=status, hang=hang, **extra)

    def clear_failures(self) -> None:
        """Forget every injected AWS and Kubernetes failure that has not fired yet."""
        self._faults.clear()
        self.kube.clear_failures()

    def processes(self) -> list[EmulatedProcess]:
        """The local processes standing for Dask pods right now."""
        return self.operator.processes()

    @property
    def calls(self) -> list[tuple[str, str, str]]:
        """Every AWS and Kubernetes API call made through the platform, oldest first:
        ``("aws", service, operation)`` and ``("kube", verb, resource)``. The platform's own
        setup and the emulated operator's work are not included."""
        kube_calls = [("kube", c.verb, c.resource) for c in self.kube.calls]
        with self._lock:
            aws_calls = list(self._aws_calls)
        merged: list[tuple[str, str, str]] = []
        seen = 0
        for kube_seen, call in aws_calls:  # an AWS call follows the kube calls made before it
            merged += kube_calls[seen:kube_seen]
            seen = max(seen, kube_seen)
            merged.append(call)
        return merged + kube_calls[seen:]

    def clear_calls(self) -> None:
        """Forget the calls recorded so far (e.g. after a test's setup)."""
        with self._lock:
            self._aws_calls.clear()
            self.kube.clear_calls()

    def _record_aws(self, call: tuple[str, str, str]) -> None:
        with self._lock:
            self._aws_calls.append((len(self.kube.calls), call))

    def dask_config(self) -> dict[str, Any]:
        """The RECC settings that point at this platform (set for its lifetime)."""
        return {
            "recc.eks.cluster-name": self.eks_cluster_name,
            "recc.eks.region": self.region,
            "recc.eks.subnets": list(self.subnets),
            "recc.eks.security-groups": list(self.security_groups),
            "recc.eks.node-role-arn": self.node_role_arn,
            "recc.eks.endpoint": self.kube.url,
            "recc.eks.ca-data": None,
            "recc.eks.profile": None,
            "recc.eks.scheduled-profile": None,
            # moto has no Pricing API: prices come from RECC's bundled table.
            "recc.cost.price-source": "bundled",
            "recc.state-dir": str(self.state_dir),
        }

    def environment(self) -> dict[str, str]:
        """Environment variables that point boto3 and RECC in another process at this
        platform (needs ``aws_endpoint_url``, i.e. a served platform)."""
        if self.aws_endpoint_url is None:
            raise RuntimeError(
                "an in-process platform cannot be reached from other processes; "
                "run `python -m recc.testing serve` instead"
            )
        env = {
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            **_FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "DASK_RECC__BACKEND": "eks",
        }
        for key, value in self.dask_config().items():
            if value is None:
                continue
            name = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
            # dask reads variables with ast.literal_eval: lists as JSON-style literals.
            env[name] = json.dumps(value) if isinstance(value, list) else str(value)
        return env


@contextmanager
def emulated_platform(
    *,
    region: str = "us-east-1",
    eks_cluster_name: str = "recc-emulated",
    state_dir: str | Path | None = None,
    require_nodes: bool = True,
    start_timeout: float = 60.0,
    serve_aws: bool = False,
) -> Iterator[EmulatedPlatform]:
    """Run the emulated platform for the duration of a ``with`` block.

    Inside it, boto3 clients created in this process reach moto (fake credentials, ``region``,
    no instance metadata), ``recc.eks.*`` points at the EKS cluster ``eks_cluster_name`` and
    the fake Kubernetes API, and RECC's state lives in ``state_dir`` (default: a temporary
    directory). Every process started for a Dask cluster is stopped on exit, also when the
    block raised; the environment and dask config are restored.

    ``require_nodes=False`` runs Dask pods without waiting for a Node that matches their node
    selector; ``start_timeout`` bounds a scheduler's start. ``serve_aws=True`` serves moto on
    127.0.0.1 instead of patching this process (what ``python -m recc.testing serve`` uses).

    Example
    -------
    .. code-block:: python

        from recc import RECCCluster, RECCClient
        from recc.testing import emulated_platform

        with emulated_platform() as platform:
            with RECCCluster(backend="eks", n_workers=2) as cluster, RECCClient(cluster) as c:
                assert c.submit(sum, [1, 2]).result() == 3
            platform.inject_failure(aws=("eks", "CreateNodegroup"))
            ...  # the next RECCCluster fails at its node group and leaves nothing behind
    """
    if not _ACTIVE.acquire(blocking=False):
        raise RuntimeError("an emulated platform is already running in this process")
    with ExitStack() as stack:
        stack.callback(_ACTIVE.release)
        workdir = Path(tempfile.mkdtemp(prefix="recc-platform-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        state = Path(state_dir) if state_dir is not None else workdir / "state"
        stack.enter_context(_aws_environment(workdir, region))
        # boto3's default session may predate the platform (then it lacks the fault handler).
        saved_session, boto3.DEFAULT_SESSION = boto3.DEFAULT_SESSION, None
        stack.callback(setattr, boto3, "DEFAULT_SESSION", saved_session)

        endpoint = None
        if serve_aws:
            from moto.server import ThreadedMotoServer

            # No access-log line per AWS call on stderr (werkzeug logs them at INFO).
            access_log = logging.getLogger("werkzeug")
            stack.callback(access_log.setLevel, access_log.level)
            access_log.setLevel(logging.WARNING)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            stack.callback(server.stop)
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            # moto's state is process-wide and a server keeps it: forget it on exit, as
            # mock_aws does, so a later platform in this process starts clean.
            stack.callback(_reset_moto, endpoint)
            stack.enter_context(_environ({"AWS_ENDPOINT_URL": endpoint}))
        else:
            from moto import mock_aws

            stack.enter_context(mock_aws())
        base = _create_base(region, eks_cluster_name)

        kube = FakeKubeServer().start()
        stack.callback(kube.stop)
        nodes = NodeSync(
            kube, lambda: moto_nodegroups(base.account_id, region, eks_cluster_name), region
        ).start()
        stack.callback(nodes.stop)
        operator = DaskOperator(
            kube, workdir / "pods", require_nodes=require_nodes, start_timeout=start_timeout
        ).start()
        stack.callback(operator.stop)

        platform = EmulatedPlatform(kube, operator, base, eks_cluster_name, region, state, endpoint)
        stack.enter_context(dask.config.set(platform.dask_config()))
        stack.enter_context(platform._faults.installed())
        yield platform


def _create_base(region: str, eks_cluster_name: str) -> _Base:
    """What RECC's Terraform module makes, in moto: network, node role, EKS cluster, and a
    one-node system node group (where the operator would run; not RECC's, so untagged)."""
    session = boto3.Session(region_name=region)
    ec2, iam, eks = (session.client(s) for s in ("ec2", "iam", "eks"))
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = tuple(
        ec2.create_subnet(
            VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{region}{zone}"
        )["Subnet"]["SubnetId"]
        for i, zone in ((1, "a"), (2, "b"))
    )
    group = ec2.create_security_group(
        GroupName=f"{eks_cluster_name}-nodes", Description="RECC nodes", VpcId=vpc
    )["GroupId"]

    def role(name: str, service: str) -> str:
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": service},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"][
            "Arn"
        ]

    node_role = role(f"{eks_cluster_name}-node", "ec2.amazonaws.com")
    eks.create_cluster(
        name=eks_cluster_name,
        version="1.32",
        roleArn=role(f"{eks_cluster_name}-cluster", "eks.amazonaws.com"),
        resourcesVpcConfig={"subnetIds": list(subnets), "securityGroupIds": [group]},
    )
    eks.create_nodegroup(
        clusterName=eks_cluster_name,
        nodegroupName="system",
        nodeRole=node_role,
        subnets=list(subnets),
        instanceTypes=["t3.medium"],
        scalingConfig={"minSize": 1, "desiredSize": 1, "maxSize": 1},
    )
    account = session.client("sts").get_caller_identity()["Account"]
    return _Base(account, vpc, subnets, (group,), node_role)


def _reset_moto(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=30):
        pass


@contextmanager
def _aws_environment(workdir: Path, region: str) -> Iterator[None]:
    """Fake credentials and region; no profile, instance metadata or user AWS config."""
    for name in ("config", "credentials"):
        (workdir / f"aws-{name}").touch()
    values: dict[str, str | None] = {
        **_FAKE_CREDENTIALS,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(workdir / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "aws-credentials"),
        **dict.fromkeys(_AWS_UNSET),
    }
    with _environ(values):
        yield


@contextmanager
def _environ(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables; restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
