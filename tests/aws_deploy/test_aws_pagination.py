"""Every listing paginates: moto (like EC2) returns at most 100 reservations a page."""

from __future__ import annotations

import pytest

from aws_deploy.awsworld import World
from kiln.aws.groups import describe_instances

pytestmark = pytest.mark.aws


def test_instances_across_many_reservations_are_all_read(world: World) -> None:
    ids = [
        world.admin.ec2.run_instances(ImageId=world.base_ami, MinCount=1, MaxCount=1)["Instances"][
            0
        ]["InstanceId"]
        for _ in range(110)  # one reservation each: more than one page
    ]
    requests: list[str] = []
    world.deploy.session.events.register(
        "before-call.ec2.DescribeInstances", lambda **_: requests.append("page")
    )
    found = describe_instances(world.deploy, ids)
    assert sorted(found) == sorted(ids)
    assert len(requests) >= 2
    world.admin.ec2.terminate_instances(InstanceIds=ids)
