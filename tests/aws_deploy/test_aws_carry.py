"""Each new server group carries the serving group's scaling policies, hooks and warm pool.

On the IAM-enforcing moto server with the deploy user's keys (deploy and
scaling policies). moto keeps a lifecycle hook's name, transition, timeout
and default result (not its notification target, role or metadata, which
kiln copies too), and runs no alarms: that a carried target-tracking policy
really scales is what only AWS shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aws_deploy.awsworld import World
from kiln.aws.deployments import AwsDeployments
from kiln.deploy.settings import Settings
from kiln.home import Home

pytestmark = pytest.mark.aws


def _carried(world: World, group: str) -> dict[str, Any]:
    scaling = world.admin.client("autoscaling")
    policies = scaling.describe_policies(AutoScalingGroupName=group)["ScalingPolicies"]
    hooks = scaling.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]
    pool = scaling.describe_warm_pool(AutoScalingGroupName=group).get("WarmPoolConfiguration")
    return {
        "policies": {
            p["PolicyName"]: (
                p["PolicyType"],
                p.get("TargetTrackingConfiguration", {}).get("TargetValue"),
                [s["ScalingAdjustment"] for s in p.get("StepAdjustments", [])],
            )
            for p in policies
        },
        "hooks": {
            h["LifecycleHookName"]: (
                h["LifecycleTransition"],
                h["HeartbeatTimeout"],
                h["DefaultResult"],
            )
            for h in hooks
        },
        "pool": (pool or {}).get("MinSize"),
        "pool_state": (pool or {}).get("PoolState"),
    }


def test_a_release_carries_policies_hooks_and_warm_pool(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    images = ["img-c00000000001", "img-c00000000002", "img-c00000000003"]
    for image in images:
        world.ami(image)
        world.addresses[image] = good_app
    loaded = world.config(tmp_path / "app")
    provider = world.provider(home, loaded)
    fleet = AwsDeployments(provider, Settings.from_config(loaded.config), world.app, lock_ttl=30)
    assert fleet.deploy(images[0]).ok
    first = f"kiln-{world.app}-v001"
    assert _carried(world, first)["policies"] == {}  # nothing to carry yet
    world.decorate(first)
    expected = _carried(world, first)

    assert fleet.deploy(images[1]).ok
    second = f"kiln-{world.app}-v002"
    assert _carried(world, second) == expected
    assert expected["policies"] == {
        "cpu55": ("TargetTrackingScaling", 55.0, []),
        "step-out": ("StepScaling", None, [2]),
    }
    assert expected["hooks"] == {
        "drain-sessions": ("autoscaling:EC2_INSTANCE_TERMINATING", 120, "CONTINUE")
    }
    assert expected["pool"] == 1
    # created empty to meet its hooks, then sized like the group it replaced
    group = world.groups()[second]
    assert group["DesiredCapacity"] == 2 and len(group["Instances"]) == 2

    # kiln.toml's warm_pool wins over what the serving group had
    configured = world.config(
        tmp_path / "app", extra_aws='warm_pool = { min_size = 2, state = "Running" }'
    )
    provider = world.provider(home, configured)
    fleet = AwsDeployments(
        provider, Settings.from_config(configured.config), world.app, lock_ttl=30
    )
    assert fleet.deploy(images[2]).ok
    third = _carried(world, f"kiln-{world.app}-v003")
    assert third["pool"] == 2 and third["pool_state"] == "Running"
    assert third["policies"] == expected["policies"] and third["hooks"] == expected["hooks"]
