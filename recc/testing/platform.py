"""RECC's EKS platform on one machine: moto for AWS, and for Kubernetes the real control plane,
the real dask-kubernetes operator and the node agent.

Two layers, so a test session pays for Kubernetes once:

- :func:`kubernetes_platform` starts what EKS gives and ``recc platform install`` adds: the
  control plane (:mod:`recc.testing.controlplane`) with EKS's authentication and access
  policies as webhooks (:mod:`recc.testing.eks_auth`), a fault-injecting proxy in front of the
  API server for RECC's own calls (:mod:`recc.testing.kubefaults`), the node agent
  (:mod:`recc.testing.nodeagent`) with one system node, and the platform's manifests applied
  as an administrator: the dask-kubernetes operator (CRDs, RBAC, Deployment, which the agent
  runs as a Pod under kopf), the researchers' RBAC and admission policy, the harvester's RBAC.
- :func:`emulated_platform` adds, per ``with`` block, what RECC's Terraform module makes in AWS
  (in a moto server: VPC, subnets, security group, node role, the EKS cluster), the access
  entries of the caller, and points RECC's ``recc.eks.*`` config and boto3 at it all. Nodes
  follow the EKS managed node groups in moto.

One emulated platform at a time per process: moto's state, botocore's handlers and the
environment are process-wide.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dask.config
import kubernetes.client
import yaml

from recc.errors import BackendError
from recc.platform.install import install_platform, platform_manifests, platform_settings
from recc.testing.controlplane import ControlPlane
from recc.testing.eks_auth import AccessEntry, AccessPolicy, EKSAuthWebhooks
from recc.testing.faults import AWSFaults
from recc.testing.kubefaults import FaultProxy
from recc.testing.nodeagent import NodeAgent
from recc.testing.nodes import NodegroupView, moto_nodegroups
from recc.tls import issue, write_private

logger = logging.getLogger(__name__)

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
SYSTEM_NODEGROUP = NodegroupView(
    "system", "ACTIVE", 1, "t3.large", labels={"recc.io/pool": "system"}
)
RESEARCHER = "researcher"
RESEARCHER_GROUP = "recc-researchers"
HARVESTER_GROUP = "recc-harvester"
# The harvester's IAM role, as RECC's Terraform module names it (its access entry names it).
HARVESTER_ROLE = "recc-harvester"
NAMESPACE_PREFIX = "recc-"
OPERATOR_TIMEOUT = 120.0
# Where `recc platform install` puts the operator and the harvester (its defaults).
PLATFORM_NAMESPACES = ("dask-operator", "recc", "kube-system")


class KubernetesPlatform:
    """A running control plane with the operator and the node agent; made by
    :func:`kubernetes_platform`.

    Attributes
    ----------
    control_plane : ControlPlane
        The API server and its companions (``url``, ``ca_file``, ``api_client(user, groups)``).
    auth : EKSAuthWebhooks
        EKS's authenticator and access-policy authorizer (``set_entries``).
    faults : FaultProxy
        The proxy RECC's calls go through (``url``, ``inject``, ``calls``).
    agent : NodeAgent
        Nodes, Pods and Services.
    kubeconfig : Path
        An administrator's kubeconfig (for kubectl).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.auth = EKSAuthWebhooks(cluster_name="", cluster_role_rules=self._cluster_role_rules)
        self.control_plane = ControlPlane(
            directory / "control-plane",
            webhooks=(directory / "authenticate.kubeconfig", directory / "authorize.kubeconfig"),
        )
        self._extra_nodegroups: Any = list
        self.agent: NodeAgent | None = None
        self.faults: FaultProxy | None = None
        self.kubeconfig = directory / "admin.kubeconfig"
        self._rules: dict[str, list[dict[str, Any]]] = {}

    def _cluster_role_rules(self, name: str) -> list[dict[str, Any]]:
        if name not in self._rules:
            api = kubernetes.client.RbacAuthorizationV1Api(self.control_plane.api_client())
            role = api.read_cluster_role(name, _preload_content=False)
            rules = json.loads(role.data).get("rules") or []
            if not rules:  # not aggregated yet by the controller manager: ask again next time
                return rules
            self._rules[name] = rules
        return self._rules[name]

    def start(self) -> KubernetesPlatform:
        with ExitStack() as stack:
            self.auth.start()
            stack.callback(self.auth.stop)
            self.auth.kubeconfigs(self.directory)
            cp = self.control_plane.start()
            stack.callback(cp.stop)
            self.control_plane.kubeconfig(self.kubeconfig)
            pki = self.directory / "pki"
            pki.mkdir(mode=0o700, exist_ok=True)
            ca = cp.certificate_authority
            for name in ("kubelet", "proxy"):
                cert, key = issue(ca, f"recc-testing-{name}", ("127.0.0.1", "localhost"))
                (pki / f"{name}.crt").write_bytes(cert)
                write_private(pki / f"{name}.key", key)
            self.faults = FaultProxy(cp.url, cp.ca_file, pki / "proxy.crt", pki / "proxy.key")
            self.faults.start()
            stack.callback(self.faults.stop)
            self.agent = NodeAgent(
                cp.api_client(),
                self.directory / "agent",
                cp.binaries["recc-kubelet"],
                (pki / "kubelet.crt", pki / "kubelet.key", cp.ca_file),
                ("127.0.0.1", cp.port),
                lambda: [SYSTEM_NODEGROUP, *self._extra_nodegroups()],
                "us-east-1",
            ).start()
            stack.callback(self.agent.stop)
            self._install()
            stack.pop_all()
        return self

    def stop(self) -> None:
        """Stop the agent (and every Pod's processes), the proxy, the control plane and the
        webhooks."""
        for part in (self.agent, self.faults):
            if part is not None:
                part.stop()
        self.control_plane.stop()
        self.auth.stop()

    def follow_nodegroups(self, source: Any) -> None:
        """Make Nodes for the node groups ``source()`` returns (besides the system one)."""
        self._extra_nodegroups = source or list

    def _install(self) -> None:
        settings = {
            **platform_settings(),
            # moto's account: the role emulated_platform() creates.
            "eks.harvester-role-arn": f"arn:aws:iam::123456789012:role/{HARVESTER_ROLE}",
            "eks.cluster-name": "recc-emulated",
            "eks.region": "us-east-1",
        }
        with self.control_plane.api_client() as api:
            install_platform(api, platform_manifests(settings, "0.1.0"))
            # Tests harvest when they choose: the scheduled harvester would run real AWS calls.
            kubernetes.client.BatchV1Api(api).patch_namespaced_cron_job(
                "recc-harvester", settings["eks.system-namespace"], {"spec": {"suspend": True}}
            )
            _wait_available(api, settings["eks.operator-namespace"], "dask-kubernetes-operator")


def _wait_available(api: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    deadline = time.monotonic() + OPERATOR_TIMEOUT
    while time.monotonic() < deadline:
        deployment = apps.read_namespaced_deployment(name, namespace)
        if (deployment.status.available_replicas or 0) >= 1:
            return
        time.sleep(0.25)
    raise BackendError(
        f"the dask-kubernetes operator did not become available in {OPERATOR_TIMEOUT:.0f} s; "
        "see its Pod's log under the node agent's directory"
    )


@contextmanager
def kubernetes_platform(directory: str | Path | None = None) -> Iterator[KubernetesPlatform]:
    """Run the Kubernetes side of the platform for a ``with`` block (see the module)."""
    with ExitStack() as stack:
        if directory is None:
            directory = tempfile.mkdtemp(prefix="recc-kubernetes-")
            stack.callback(shutil.rmtree, directory, ignore_errors=True)
        platform = KubernetesPlatform(Path(directory)).start()
        stack.callback(platform.stop)
        yield platform


@dataclass(frozen=True)
class _Base:
    """The AWS side of the base platform, as created in moto."""

    account_id: str
    vpc_id: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    node_role_arn: str
    caller_arn: str
    credentials: dict[str, str]
    harvester_role_arn: str
    harvester_credentials: dict[str, str]


class EmulatedPlatform:
    """A running emulated platform; made by :func:`emulated_platform`, not directly.

    Attributes
    ----------
    kubernetes : KubernetesPlatform
        The control plane, operator and node agent.
    eks_cluster_name, region, account_id : str
        The EKS cluster in moto, its region and the moto account.
    subnets, security_groups : tuple of str
        The base platform's subnet and security group ids.
    node_role_arn : str
        The IAM role node groups run as.
    caller_arn : str
        Who boto3's credentials are (a researcher, by its access entry).
    harvester_role_arn : str
        The harvester's IAM role (its access entry: the harvester's Kubernetes group); see
        :meth:`as_harvester`.
    state_dir : Path
        RECC's state directory for the platform's lifetime.
    aws_endpoint_url : str
        The moto server's URL.
    """

    def __init__(
        self,
        kube: KubernetesPlatform,
        base: _Base,
        eks_cluster_name: str,
        region: str,
        state_dir: Path,
        aws_endpoint_url: str,
        workdir: Path,
    ) -> None:
        self.kubernetes = kube
        self._workdir = workdir
        self._faults = AWSFaults(record=self._record_aws)
        self.eks_cluster_name = eks_cluster_name
        self.region = region
        self.account_id = base.account_id
        self.vpc_id = base.vpc_id
        self.subnets = base.subnets
        self.security_groups = base.security_groups
        self.node_role_arn = base.node_role_arn
        self.caller_arn = base.caller_arn
        self.harvester_role_arn = base.harvester_role_arn
        self._credentials = base.credentials
        self._harvester_credentials = base.harvester_credentials
        self.state_dir = state_dir
        self.aws_endpoint_url = aws_endpoint_url
        self._lock = threading.Lock()
        self._aws_calls: list[tuple[int, tuple[str, str, str]]] = []

    @property
    def kubeconfig(self) -> Path:
        """An administrator's kubeconfig for kubectl."""
        return self.kubernetes.kubeconfig

    @contextmanager
    def as_harvester(self) -> Iterator[None]:
        """Act as the harvester for the block: boto3's credentials (RECC's AWS calls and its
        EKS tokens) are a session of the harvester's IAM role, so the API server knows the
        caller by the role's access entry, as a platform engineer's `recc harvest` or the
        harvester's pod is known on EKS."""
        saved_session, boto3.DEFAULT_SESSION = boto3.DEFAULT_SESSION, None
        try:
            with _environ(self._harvester_credentials):
                yield
        finally:
            boto3.DEFAULT_SESSION = saved_session

    def kubeconfig_of(self, who: str) -> Path:
        """A kubeconfig that authenticates as ``who`` (``"researcher"`` or ``"harvester"``)
        the way EKS users do: a credential plugin (``python -m recc.testing token``) signs an
        EKS token with that identity's AWS credentials, so kubectl gets what RECC gets."""
        credentials = {"researcher": self._credentials, "harvester": self._harvester_credentials}
        if who not in credentials:
            raise ValueError(f"who: {who!r} is not one of {sorted(credentials)}")
        env = {
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            **credentials[who],
        }
        plugin = {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": ["-m", "recc.testing", "token", "--cluster-name", self.eks_cluster_name],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "interactiveMode": "Never",
        }
        control_plane = self.kubernetes.control_plane
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.eks_cluster_name,
                    "cluster": {
                        "server": control_plane.url,
                        "certificate-authority": str(control_plane.ca_file),
                    },
                }
            ],
            "users": [{"name": who, "user": {"exec": plugin}}],
            "contexts": [{"name": who, "context": {"cluster": self.eks_cluster_name, "user": who}}],
            "current-context": who,
        }
        path = self._workdir / f"{who}.kubeconfig"
        write_private(path, yaml.safe_dump(config, sort_keys=False).encode())  # credentials
        return path

    def api_client(
        self, user: str = "recc-admin", groups: tuple[str, ...] = ()
    ) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client of the API server as ``user`` (default: an administrator,
        straight to the API server; RECC's own calls go through the fault proxy)."""
        return self.kubernetes.control_plane.api_client(user, groups)

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
        ``ClientError`` with ``code`` and HTTP ``status``; a Kubernetes one answers ``status``
        from the proxy in front of the API server. ``hang=True`` makes the call block instead:
        an AWS call for ``hang_seconds`` (default: the client's read timeout) then
        ReadTimeoutError; a Kubernetes call gets no answer for ``hang_seconds`` (default 30 s)
        so the client's request timeout fires. AWS faults reach boto3 clients of this process
        only; Kubernetes faults reach every client of ``recc.eks.endpoint``.
        """
        if (aws is None) == (kube is None):
            raise ValueError(
                "give exactly one of aws=(service, operation) or kube=(verb, resource), "
                "for example: inject_failure(aws=('eks', 'CreateNodegroup'))"
            )
        if aws is not None:
            self._faults.inject(*aws, times, code, status, hang, hang_seconds)
        else:
            assert self.kubernetes.faults is not None
            extra = {} if hang_seconds is None else {"hang_seconds": hang_seconds}
            self.kubernetes.faults.inject(*kube, times=times, status=status, hang=hang, **extra)

    def clear_failures(self) -> None:
        """Forget every injected AWS and Kubernetes failure that has not fired yet."""
        self._faults.clear()
        assert self.kubernetes.faults is not None
        self.kubernetes.faults.clear()

    def processes(self) -> list[tuple[str, str, int]]:
        """(namespace, pod, pid) of every container process the node agent runs now for
        clusters (the platform's own Pods, such as the operator's, are left out)."""
        assert self.kubernetes.agent is not None
        return [p for p in self.kubernetes.agent.pods.running() if p[0] not in PLATFORM_NAMESPACES]

    @property
    def calls(self) -> list[tuple[str, str, str]]:
        """Every AWS call made in this process and every Kubernetes call made through
        ``recc.eks.endpoint``, oldest first: ``("aws", service, operation)`` and
        ``("kube", verb, resource)``. The platform's own work is not included."""
        assert self.kubernetes.faults is not None
        kube_calls = [("kube", verb, resource) for verb, resource in self.kubernetes.faults.calls]
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
        assert self.kubernetes.faults is not None
        with self._lock:
            self._aws_calls.clear()
            self.kubernetes.faults.clear_calls()

    def _record_aws(self, call: tuple[str, str, str]) -> None:
        assert self.kubernetes.faults is not None
        with self._lock:
            self._aws_calls.append((len(self.kubernetes.faults.calls), call))

    def dask_config(self) -> dict[str, Any]:
        """The RECC settings that point at this platform (set for its lifetime)."""
        assert self.kubernetes.faults is not None
        ca = self.kubernetes.control_plane.ca_file.read_bytes()
        return {
            "recc.eks.cluster-name": self.eks_cluster_name,
            "recc.eks.region": self.region,
            "recc.eks.subnets": list(self.subnets),
            "recc.eks.security-groups": list(self.security_groups),
            "recc.eks.node-role-arn": self.node_role_arn,
            "recc.eks.endpoint": self.kubernetes.faults.url,
            "recc.eks.ca-data": base64.b64encode(ca).decode(),
            "recc.eks.profile": None,
            "recc.eks.scheduled-profile": None,
            # moto has no Pricing API: prices come from RECC's bundled table.
            "recc.cost.price-source": "bundled",
            # Waits back off to a poll a second, not EKS's ten: calls on loopback are cheap
            # and nothing here has AWS's rate limits.
            "recc.eks.poll-interval": 1.0,
            "recc.state-dir": str(self.state_dir),
        }

    def environment(self) -> dict[str, str]:
        """Environment variables that point boto3, RECC and kubectl in another process at this
        platform."""
        assets = self.kubernetes.control_plane.binaries["kubectl"].parent
        env = {
            "AWS_ENDPOINT_URL": self.aws_endpoint_url,
            **self._credentials,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "DASK_RECC__BACKEND": "eks",
            "KUBECONFIG": str(self.kubeconfig),
            "RECC_TESTING_RESEARCHER_KUBECONFIG": str(self.kubeconfig_of("researcher")),
            "RECC_TESTING_HARVESTER_KUBECONFIG": str(self.kubeconfig_of("harvester")),
            "PATH": f"{assets}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for key, value in self.dask_config().items():
            if value is None:
                continue
            name = "DASK_" + key.upper().replace(".", "__").replace("-", "_")
            # dask reads variables with ast.literal_eval: lists as JSON-style literals.
            env[name] = json.dumps(value) if isinstance(value, list) else str(value)
        return env


def harvester_entry(arn: str) -> AccessEntry:
    """The harvester role's access entry in RECC's Terraform module: its Kubernetes group
    (bound by `recc platform install` to the harvester's ClusterRole and Role), no policy."""
    return AccessEntry(principal_arn=arn, groups=(HARVESTER_GROUP,))


def researcher_entry(arn: str) -> AccessEntry:
    """The access entry RECC's Terraform module gives a researcher: the researchers' group,
    and EKS's admin policy scoped to RECC's namespaces."""
    return AccessEntry(
        principal_arn=arn,
        groups=(RESEARCHER_GROUP,),
        policies=(AccessPolicy("AmazonEKSAdminPolicy", namespaces=(f"{NAMESPACE_PREFIX}*",)),),
    )


@contextmanager
def emulated_platform(
    *,
    region: str = "us-east-1",
    eks_cluster_name: str = "recc-emulated",
    state_dir: str | Path | None = None,
    kubernetes: KubernetesPlatform | None = None,
) -> Iterator[EmulatedPlatform]:
    """Run the emulated platform for the duration of a ``with`` block.

    Inside it, boto3 reaches a moto server on loopback (fake credentials, ``region``, no
    instance metadata); the caller is a researcher by an EKS access entry; ``recc.eks.*``
    points at the EKS cluster ``eks_cluster_name`` and the Kubernetes API; RECC's state lives
    in ``state_dir`` (default: a temporary directory). ``kubernetes``: a running
    :func:`kubernetes_platform` to use (a test session starts one and shares it); by default
    one is started for the block. On exit every Pod's processes of this block's clusters stop,
    and the environment and dask config are restored.

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
        if kubernetes is None:
            kubernetes = stack.enter_context(kubernetes_platform(workdir / "kubernetes"))
        stack.enter_context(_aws_environment(workdir, region))
        # boto3's default session may predate the platform (then it lacks the fault handler).
        saved_session, boto3.DEFAULT_SESSION = boto3.DEFAULT_SESSION, None
        stack.callback(setattr, boto3, "DEFAULT_SESSION", saved_session)

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
        # moto's state is process-wide and a server keeps it: forget it on exit, as mock_aws
        # does, so a later platform in this process starts clean.
        stack.callback(_reset_moto, endpoint)
        stack.enter_context(_environ({"AWS_ENDPOINT_URL": endpoint}))
        base = _create_base(region, eks_cluster_name)
        # From here on boto3 (RECC's calls among them) acts as the researcher.
        stack.enter_context(_environ({**base.credentials, "AWS_SESSION_TOKEN": None}))
        boto3.DEFAULT_SESSION = None

        kubernetes.auth.cluster_name = eks_cluster_name
        kubernetes.auth.set_entries(
            [researcher_entry(base.caller_arn), harvester_entry(base.harvester_role_arn)]
        )
        stack.callback(kubernetes.auth.set_entries, [])
        kubernetes.follow_nodegroups(
            lambda: moto_nodegroups(base.account_id, region, eks_cluster_name)
        )
        stack.callback(kubernetes.follow_nodegroups, None)
        platform = EmulatedPlatform(
            kubernetes, base, eks_cluster_name, region, state, endpoint, workdir
        )
        stack.enter_context(dask.config.set(platform.dask_config()))
        stack.enter_context(platform._faults.installed())
        stack.callback(platform.clear_failures)
        yield platform


def _create_base(region: str, eks_cluster_name: str) -> _Base:
    """What RECC's Terraform module makes, in moto: network, node role, EKS cluster. (Its
    system node group, where the operator runs, is the Kubernetes platform's own Node.)"""
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
        scalingConfig={"minSize": 0, "desiredSize": 0, "maxSize": 1},
    )
    # The caller: a researcher with an IAM user of their own (its access entry names it).
    user = iam.create_user(UserName=RESEARCHER)["User"]
    key = iam.create_access_key(UserName=RESEARCHER)["AccessKey"]
    credentials = {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    account = user["Arn"].split(":")[4]
    # The harvester: its IAM role (IRSA on EKS; here assumed with moto's default credentials).
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    harvester = iam.create_role(
        RoleName=HARVESTER_ROLE, AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]["Arn"]
    assumed = session.client("sts").assume_role(
        RoleArn=harvester, RoleSessionName="recc-harvester", DurationSeconds=43200
    )["Credentials"]
    harvester_credentials = {
        "AWS_ACCESS_KEY_ID": assumed["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": assumed["SecretAccessKey"],
        "AWS_SESSION_TOKEN": assumed["SessionToken"],
    }
    return _Base(
        account, vpc, subnets, (group,), node_role, user["Arn"], credentials,
        harvester, harvester_credentials,
    )  # fmt: skip


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
def _environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables; restore them afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set_environ(values)
        yield
    finally:
        _set_environ(saved)


def _set_environ(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
