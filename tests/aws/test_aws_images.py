"""AMIs as images: list, prune with their snapshots, never one in use."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from awskit import TargetFactory

from kiln.aws.ami import bake_ami
from kiln.aws.images import list_amis, prune_amis
from kiln.aws.session import Aws
from kiln.config import LoadedConfig
from kiln.errors import AwsError
from kiln.home import Home

pytestmark = pytest.mark.aws


def test_prune_keeps_newest_and_in_use_and_deletes_snapshots_with_amis(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    amis = []
    for version in ("1", "2", "3"):
        if amis:
            time.sleep(1.1)  # AMI creation dates have one-second resolution
        result = bake_ami(app_factory(version=version), home, aws=aws, ssh_target=loopback_target)
        amis.append(result)
    oldest, middle, newest = amis
    listed = list_amis(aws, "acme")
    assert [a.id for a in listed] == [newest.ami, middle.ami, oldest.ami]
    assert listed[0].image == newest.image and listed[0].state == "available"
    assert list_amis(aws, "other-app") == []

    # an instance still runs the oldest, a warm server group (scaled to zero) the middle one
    aws.ec2.run_instances(ImageId=oldest.ami, MinCount=1, MaxCount=1)
    _warm_group(aws, middle.ami)
    untouched = prune_amis(aws, "acme", keep=1)
    assert untouched.deleted == ()
    assert {a.id for a in untouched.in_use} == {oldest.ami, middle.ami}
    aws.client("autoscaling").delete_auto_scaling_group(AutoScalingGroupName="kiln-acme-v001")

    preview = prune_amis(aws, "acme", keep=1, dry_run=True)
    assert [a.id for a in preview.deleted] == [middle.ami]
    assert len(list_amis(aws, "acme")) == 3

    done = prune_amis(aws, "acme", keep=1)
    assert [a.id for a in done.deleted] == [middle.ami]
    assert [a.id for a in done.in_use] == [oldest.ami]
    assert [a.id for a in done.kept] == [newest.ami]
    assert {a.id for a in list_amis(aws, "acme")} == {newest.ami, oldest.ami}
    remaining = {
        s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    }
    assert not set(middle.snapshots) & remaining
    assert set(newest.snapshots) <= remaining and set(oldest.snapshots) <= remaining

    with pytest.raises(AwsError, match="at least 1"):
        prune_amis(aws, "acme", keep=0)


def _warm_group(aws: Aws, ami: str) -> None:
    """A server group the way kiln's deploys leave a warm one: zero instances, tagged AMI."""
    aws.ec2.create_launch_template(
        LaunchTemplateName="kiln-acme",
        LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.micro"},
    )
    subnet = aws.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    aws.client("autoscaling").create_auto_scaling_group(
        AutoScalingGroupName="kiln-acme-v001",
        LaunchTemplate={"LaunchTemplateName": "kiln-acme", "Version": "1"},
        MinSize=0,
        MaxSize=0,
        DesiredCapacity=0,
        VPCZoneIdentifier=subnet,
        Tags=[{"Key": "kiln:ami", "Value": ami, "PropagateAtLaunch": False}],
    )
