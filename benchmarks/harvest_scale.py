"""One harvest pass over many RECC clusters on EKS: how long, and how many API calls per cluster.

AWS is moto (in this process) and Kubernetes is RECC's fake API server; each cluster is made
directly as RECC's tags and labels describe it - a namespace, a launch template and a node
group, with no Dask processes - most complete, some orphaned (namespace or node group gone),
plus node groups and launch templates that are not RECC's. AWS calls are counted with a
botocore ``before-call`` handler, Kubernetes calls by the fake server.

The pass (a dry run: observe + decide) is compared, in the same run, with discovery by a
describe per node group (what ``EKSBackend.list`` / ``recc ls`` does), the baseline the issue
rules out for the harvester.

    python benchmarks/harvest_scale.py --clusters 1000
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import dask.config
import kubernetes.client
from moto import mock_aws

from recc.backends.eks_platform import Connection, discover_all
from recc.harvest.reap import harvest
from recc.nodegroups import NodeGroupSpec, launch_template_request, nodegroup_request
from recc.tags import Ownership, aws_tags, k8s_annotations, k8s_labels
from recc.testing.fake_kube import FakeKubeServer, fake_kubernetes
from recc.testing.faults import AWSFaults

REGION, EKS_CLUSTER = "us-east-1", "bench"


@contextmanager
def ec2_paging() -> Iterator[None]:
    """Make moto page DescribeLaunchTemplates as EC2 does.

    moto cuts the answer at ``MaxResults`` (default 15) and never returns a ``NextToken``, so
    with more launch templates than one page any listing looks short. Here its answer starts
    at the offset a ``NextToken`` names and carries the token of the next page.
    """
    from moto.ec2.responses.launch_templates import LaunchTemplates

    original = LaunchTemplates.describe_launch_templates

    def paged(self: Any) -> Any:
        start = int(self._get_param("NextToken") or 0)
        size = self._get_int_param("MaxResults", 15)
        backend, seen = self.ec2_backend, []
        everything = backend.describe_launch_templates

        def from_start(**kwargs: Any) -> list[Any]:
            found = everything(**kwargs)
            seen.append(len(found))
            return found[start:]

        backend.describe_launch_templates = from_start
        try:
            answer = original(self)
        finally:
            del backend.describe_launch_templates
        if start + size < seen[0]:
            answer.result["NextToken"] = str(start + size)
        return answer

    LaunchTemplates.describe_launch_templates = paged
    try:
        yield
    finally:
        LaunchTemplates.describe_launch_templates = original


def make_platform() -> tuple[list[str], str]:
    """The EKS cluster in moto; returns (subnets, node role ARN)."""
    ec2, iam, eks = (boto3.client(s, region_name=REGION) for s in ("ec2", "iam", "eks"))
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    role = iam.create_role(RoleName="node", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    eks.create_cluster(name=EKS_CLUSTER, roleArn=role, resourcesVpcConfig={"subnetIds": [subnet]})
    return [subnet], role


def make_clusters(core: Any, n: int, subnets: list[str], role: str) -> collections.Counter:
    """``n`` RECC clusters (5% without namespace, 5% without node group) and 20 resources that
    are not RECC's; returns how many of each kind were made."""
    ec2, eks = (boto3.client(s, region_name=REGION) for s in ("ec2", "eks"))
    now = dt.datetime.now(dt.timezone.utc)
    made: collections.Counter = collections.Counter()
    for i in range(n):
        name = f"recc-bench-{i:05d}"
        owner = Ownership(
            cluster=name,
            user=f"user{i % 37}",
            namespace=name,
            created_at=now - dt.timedelta(hours=i % 48),
            idle_timeout=3600,
            max_lifetime=24 * 3600 if i % 3 else None,
        )
        tags = aws_tags(owner, "0.1.0")
        ng = NodeGroupSpec(name, "default", EKS_CLUSTER, "c5.xlarge", 1 + i % 3, i % 4 == 0,
                           tuple(subnets), role, tags)  # fmt: skip
        template = ec2.create_launch_template(**launch_template_request(ng))
        kind = (
            "orphan: no namespace"
            if i % 20 == 1
            else "orphan: no node group"
            if i % 20 == 2
            else "complete"
        )  # noqa: E501
        made[kind] += 1
        if kind != "orphan: no node group":
            eks.create_nodegroup(
                **nodegroup_request(ng, template["LaunchTemplate"]["LaunchTemplateId"])
            )
        if kind != "orphan: no namespace":
            annotations = {**k8s_annotations(owner), "recc.io/usd-per-hour": "0.5100"}
            core.create_namespace(
                {
                    "metadata": {
                        "name": name,
                        "labels": k8s_labels(owner),
                        "annotations": annotations,
                    }
                }
            )
    for i in range(20):  # not RECC's: no recc:managed-by
        eks.create_nodegroup(
            clusterName=EKS_CLUSTER, nodegroupName=f"team-pool-{i}", nodeRole=role,
            subnets=subnets, scalingConfig={"minSize": 0, "maxSize": 1, "desiredSize": 0},
        )  # fmt: skip
        ec2.create_launch_template(LaunchTemplateName=f"team-lt-{i}", LaunchTemplateData={})
        made["not RECC's"] += 1
    core.create_namespace({"metadata": {"name": "recc"}})  # the harvester's own
    return made


@contextmanager
def time_in_moto() -> Iterator[list[float]]:
    """Seconds spent answering AWS calls inside moto (slow with thousands of resources: it
    filters and serialises everything on each call), to tell them from RECC's own time."""
    from moto.core.botocore_stubber import BotocoreStubber

    spent = [0.0]
    original = BotocoreStubber.__call__

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    BotocoreStubber.__call__ = timed
    try:
        yield spent
    finally:
        BotocoreStubber.__call__ = original


def counted(kube: FakeKubeServer, action: Callable[[], Any]) -> tuple[Any, float, float, dict]:
    """Run ``action``; its result, seconds (in all, in moto) and its API calls by name."""
    aws_calls: list[tuple[str, str, str]] = []
    kube.clear_calls()
    with AWSFaults(record=aws_calls.append).installed(), time_in_moto() as moto:
        start = time.perf_counter()
        result = action()
        seconds = time.perf_counter() - start
    calls = collections.Counter(f"aws {s}:{op}" for _, s, op in aws_calls)
    calls.update(f"kube {c.verb} {c.resource}" for c in kube.calls)
    return result, seconds, moto[0], dict(calls)


def report(title: str, seconds: float, in_moto: float, calls: dict, clusters: int) -> None:
    total = sum(calls.values())
    print(
        f"\n{title}: {seconds:.2f} s ({in_moto:.2f} s of it inside moto), {total} API calls, "
        f"{total / clusters:.3f} per cluster"
    )
    for name, count in sorted(calls.items(), key=lambda kv: -kv[1]):
        print(f"  {count:>6}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1000)
    args = parser.parse_args()
    n = args.clusters
    with (
        tempfile.TemporaryDirectory() as state,
        mock_aws(),
        ec2_paging(),
        fake_kubernetes() as kube,
    ):
        settings = {
            "recc.state-dir": state,
            "recc.eks.cluster-name": EKS_CLUSTER,
            "recc.eks.region": REGION,
            "recc.eks.endpoint": kube.url,
            "recc.cost.price-source": "bundled",
            "recc.harvest.orphan-grace": "30m",
        }
        with dask.config.set(settings):
            core = kubernetes.client.CoreV1Api(kube.api_client())
            start = time.perf_counter()
            made = make_clusters(core, n, *make_platform())
            print(f"made in {time.perf_counter() - start:.1f} s: {dict(made)}")

            first, seconds, moto, calls = counted(kube, lambda: harvest("eks", dry_run=True))
            decided = collections.Counter(r.decision.category for r in first.rows)
            print(f"\nharvest pass 1 (dry run) decided {len(first.rows)} clusters: {dict(decided)}")
            report("harvest pass 1 (dry run; writes its memory)", seconds, moto, calls, n)
            _, seconds, moto, calls = counted(kube, lambda: harvest("eks", dry_run=True))
            report("harvest pass 2 (dry run)", seconds, moto, calls, n)

            def describe_everything() -> int:
                conn = Connection.open()
                try:
                    return len(discover_all(conn))
                finally:
                    conn.close()

            found, seconds, moto, calls = counted(kube, describe_everything)
            report(f"baseline: discovery by a describe per node group ({found} found)",
                   seconds, moto, calls, n)  # fmt: skip


if __name__ == "__main__":
    main()
