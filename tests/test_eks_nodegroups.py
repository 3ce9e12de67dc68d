"""The AWS side, in moto: launch templates and managed node groups from the plan, found by
tags, scaled, and deleted only when RECC made them."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from recc import nodegroups
from recc.catalog import bundled_catalog
from recc.nodegroups import NodeGroupFailed, NotManaged
from recc.plan import plan_cluster
from recc.spec import resolve_spec

TAGS = {
    "recc:managed-by": "recc",
    "recc:cluster": "recc-alice-1",
    "recc:user": "alice",
    "team": "risk",
}


@pytest.fixture
def aws(fake_aws_credentials):
    with mock_aws():
        iam = boto3.client("iam")
        role = iam.create_role(RoleName="node", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        eks = boto3.client("eks")
        eks.create_cluster(name="research", roleArn=role, resourcesVpcConfig={})
        yield eks, boto3.client("ec2"), role


def spec_of(aws, n_workers: int = 4, **kwargs):
    _, _, role = aws
    spec = resolve_spec(n_workers=n_workers, name="recc-alice-1", **kwargs)
    plan = plan_cluster(spec, bundled_catalog())
    return plan, nodegroups.nodegroup_specs(
        "recc-alice-1", plan, TAGS, "research", ["subnet-1", "subnet-2"], role, ["sg-1"]
    )


def create(aws, ng):
    eks, ec2, _ = aws
    template = nodegroups.create_launch_template(ec2, ng)
    nodegroups.create_nodegroup(eks, ng, template)
    return template


def create_by_hand(aws, name: str, tags: dict[str, str]) -> None:
    """A node group made outside RECC's code path, with whatever tags it was given."""
    eks, _, role = aws
    eks.create_nodegroup(
        clusterName="research", nodegroupName=name, nodeRole=role, subnets=["subnet-1"], tags=tags
    )


def eks_calls(eks) -> list[str]:
    """The names of the EKS operations ``eks`` sends from now on, in order."""
    calls: list[str] = []
    eks.meta.events.register("before-call.eks.*", lambda model, **kw: calls.append(model.name))
    return calls


def test_one_node_group_per_worker_group_sized_by_the_plan(aws):
    groups = [
        {
            "name": "gpu",
            "instance_type": "g4dn.xlarge",
            "n_workers": 2,
            "worker_memory": "4GiB",
            "worker_cpu": 1,
            "spot": True,
        }
    ]
    plan, ngs = spec_of(aws, 7, worker_groups=groups)
    assert [ng.name for ng in ngs] == ["recc-alice-1-default", "recc-alice-1-gpu"]
    assert [ng.instances for ng in ngs] == [g.instances for g in plan.groups]
    assert [ng.spot for ng in ngs] == [False, True]


def test_launch_template_tags_instances_volumes_and_itself(aws):
    eks, ec2, _ = aws
    _, (ng,) = spec_of(aws)
    template_id = create(aws, ng)
    template = ec2.describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"][0]
    assert {t["Key"]: t["Value"] for t in template["Tags"]} == TAGS
    data = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)[
        "LaunchTemplateVersions"
    ][0]["LaunchTemplateData"]
    specs = {
        s["ResourceType"]: {t["Key"]: t["Value"] for t in s["Tags"]}
        for s in data["TagSpecifications"]
    }
    assert specs["instance"] == TAGS and specs["volume"] == TAGS
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 1}
    assert data["SecurityGroupIds"] == ["sg-1"]


def test_node_group_carries_label_taint_capacity_tags_and_template(aws):
    eks, _, role = aws
    _, (ng,) = spec_of(aws)
    template_id = create(aws, ng)
    made = eks.describe_nodegroup(clusterName="research", nodegroupName=ng.name)["nodegroup"]
    assert made["labels"] == {
        "recc.io/nodegroup": "recc-alice-1-default",
        "recc.io/cluster": "recc-alice-1",
    }
    assert made["taints"] == [
        {"key": "recc.io/cluster", "value": "recc-alice-1", "effect": "NO_SCHEDULE"}
    ]
    assert made["capacityType"] == "ON_DEMAND" and made["instanceTypes"] == ["c5.xlarge"]
    assert made["tags"] == TAGS and made["nodeRole"] == role
    assert made["subnets"] == ["subnet-1", "subnet-2"]
    assert made["launchTemplate"]["id"] == template_id


def test_plans_for_100_workers_are_what_the_node_group_requests(aws):
    eks, _, _ = aws
    plan, (ng,) = spec_of(aws, 100)
    create(aws, ng)
    scaling = eks.describe_nodegroup(clusterName="research", nodegroupName=ng.name)["nodegroup"][
        "scalingConfig"
    ]
    expected = plan_cluster(resolve_spec(n_workers=100), bundled_catalog()).instances
    assert scaling == {"minSize": expected, "maxSize": expected, "desiredSize": expected}
    assert expected * plan.groups[0].workers_per_node >= 100  # room for every worker


def test_found_again_by_tags_alone(aws):
    eks, ec2, _ = aws
    _, (ng,) = spec_of(aws)
    create(aws, ng)
    create_by_hand(aws, "theirs", {"team": "risk"})
    ec2.create_launch_template(LaunchTemplateName="theirs", LaunchTemplateData={})
    assert [g["nodegroupName"] for g in nodegroups.find_nodegroups(eks, "research")] == [ng.name]
    assert [g["nodegroupName"] for g in nodegroups.find_nodegroups(eks, "research", "other")] == []
    assert [
        t["LaunchTemplateName"] for t in nodegroups.find_launch_templates(ec2, "recc-alice-1")
    ] == [ng.name]
    assert nodegroups.find_launch_templates(ec2, "other") == []


def test_finding_one_clusters_node_groups_describes_only_names_it_could_own(aws):
    """Deleting a cluster must not describe every node group on a shared platform."""
    eks, _, _ = aws
    _, (ng,) = spec_of(aws)
    create(aws, ng)
    for i in range(5):
        create_by_hand(aws, f"someone-else-{i}", TAGS)
    calls = eks_calls(eks)
    found = nodegroups.find_nodegroups(eks, "research", "recc-alice-1")
    assert [g["nodegroupName"] for g in found] == [ng.name]
    assert calls == ["ListNodegroups", "DescribeNodegroup"]


def test_delete_scales_to_zero_first_and_is_idempotent(aws):
    eks, ec2, _ = aws
    _, (ng,) = spec_of(aws)
    create(aws, ng)
    calls = eks_calls(eks)
    assert nodegroups.delete_nodegroup(eks, "research", ng.name) == nodegroups.DELETED
    assert calls == ["DescribeNodegroup", "UpdateNodegroupConfig", "DeleteNodegroup"]
    assert nodegroups.delete_nodegroup(eks, "research", ng.name) == nodegroups.ABSENT
    assert nodegroups.delete_launch_template(ec2, ng.name) == nodegroups.DELETED
    assert nodegroups.delete_launch_template(ec2, ng.name) == nodegroups.ABSENT
    assert nodegroups.find_launch_templates(ec2) == []


def test_nothing_without_the_managed_by_tag_is_changed(aws):
    eks, ec2, _ = aws
    create_by_hand(aws, "theirs", {"recc:cluster": "x"})
    ec2.create_launch_template(LaunchTemplateName="theirs", LaunchTemplateData={})
    with pytest.raises(NotManaged, match="recc:managed-by=recc"):
        nodegroups.delete_nodegroup(eks, "research", "theirs")
    with pytest.raises(NotManaged):
        nodegroups.scale_nodegroup(eks, "research", "theirs", 0)
    with pytest.raises(NotManaged):
        nodegroups.delete_launch_template(ec2, "theirs")
    assert (
        eks.describe_nodegroup(clusterName="research", nodegroupName="theirs")["nodegroup"][
            "scalingConfig"
        ]["desiredSize"]
        > 0
    )
    assert ec2.describe_launch_templates(LaunchTemplateNames=["theirs"])["LaunchTemplates"]


def test_scale_sets_a_fixed_size(aws):
    eks, _, _ = aws
    _, (ng,) = spec_of(aws)
    create(aws, ng)
    nodegroups.scale_nodegroup(eks, "research", ng.name, 9)
    scaling = eks.describe_nodegroup(clusterName="research", nodegroupName=ng.name)["nodegroup"][
        "scalingConfig"
    ]
    assert scaling == {"minSize": 9, "maxSize": 9, "desiredSize": 9}
    assert nodegroups.scaling_config(0) == {"minSize": 0, "maxSize": 1, "desiredSize": 0}


@pytest.mark.parametrize(
    "described, active",
    [({"status": "ACTIVE"}, True), ({"status": "CREATING"}, False)],
)
def test_check_active(described, active):
    assert nodegroups.check_active(described) is active


def test_a_failed_node_group_says_why():
    failed = {
        "nodegroupName": "c-default",
        "status": "CREATE_FAILED",
        "health": {
            "issues": [
                {"code": "AsgInstanceLaunchFailures", "message": "InsufficientInstanceCapacity"}
            ]
        },
    }
    with pytest.raises(
        NodeGroupFailed, match="c-default is CREATE_FAILED.*InsufficientInstanceCapacity"
    ):
        nodegroups.check_active(failed)
