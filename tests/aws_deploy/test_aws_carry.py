"""Each new server group carries the serving group's scaling, hooks, schedule and warm pool.

On the IAM-enforcing moto server with the deploy user's keys (deploy and
scaling policies; tests/aws/motopatched.py keeps a hook's role, target and
metadata, and checks iam:PassRole on a hook's role as AWS does). moto
evaluates no alarms, fires no scheduled action and makes no target-tracking
alarms: that a carried policy really scales, on its re-pointed alarm, is
what only AWS shows. (moto also
keeps one scaling policy per name in a region, not per group: a copy replaces
the old group's, so the old group's policies are read before each deploy.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aws_deploy.awsworld import World
from kiln.aws.deployments import AwsDeployments
from kiln.deploy.settings import Settings
from kiln.errors import DeployError
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


def _scheduled(world: World, group: str) -> dict[str, Any]:
    found = world.admin.client("autoscaling").describe_scheduled_actions(
        AutoScalingGroupName=group
    )["ScheduledUpdateGroupActions"]
    return {
        a["ScheduledActionName"]: {
            k: a[k]
            for k in ("Recurrence", "StartTime", "MinSize", "MaxSize", "TimeZone")
            if a.get(k) is not None
        }
        for a in found
    }


def _alarms(world: World) -> dict[str, dict[str, Any]]:
    found = world.admin.client("cloudwatch").describe_alarms()["MetricAlarms"]
    return {a["AlarmName"]: a for a in found if world.app in a["AlarmName"]}


def _policy_arn(world: World, group: str, name: str) -> str:
    (policy,) = world.admin.client("autoscaling").describe_policies(
        AutoScalingGroupName=group, PolicyNames=[name]
    )["ScalingPolicies"]
    return str(policy["PolicyARN"])


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
    schedule = _scheduled(world, first)
    users = f"{world.app}-step-out-high"  # the alarm the team made for step-out
    theirs = _alarms(world)[users]
    assert theirs["AlarmActions"][0] == _policy_arn(world, first, "step-out")

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
    # the recurring action loses its past start; the one-off that ran yesterday is gone
    assert set(schedule) == {"nightly-down", "launch-day", "sale-ran"}
    carried = _scheduled(world, second)
    assert carried == {
        "nightly-down": {"Recurrence": "0 22 * * *", "MinSize": 1, "TimeZone": "Europe/Paris"},
        "launch-day": schedule["launch-day"],
    }
    # the step policy's alarm, re-pointed at the copy and the new group; the rest kept
    ours = _alarms(world)[f"{second}-{users}"]
    assert ours["AlarmActions"] == [
        _policy_arn(world, second, "step-out"),
        theirs["AlarmActions"][1],  # the pager: not a policy, kept
    ]
    assert ours["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": second}]
    same = ("AlarmDescription", "MetricName", "Namespace", "Statistic", "Period")
    same += ("EvaluationPeriods", "DatapointsToAlarm", "Threshold", "ComparisonOperator")
    assert {k: ours[k] for k in (*same, "TreatMissingData")} == {
        k: theirs[k] for k in (*same, "TreatMissingData")
    }
    assert _alarms(world)[users] == theirs  # the team's own alarm: untouched
    # created empty to meet its hooks, then sized like the group it replaced
    group = world.groups()[second]
    assert group["DesiredCapacity"] == 2 and len(group["Instances"]) == 2

    # kiln.toml's warm_pool wins over what the serving group had
    configured = world.config(
        tmp_path / "app",
        extra_aws='warm_pool = { min_size = 2, state = "Running" }\nkeep_server_groups = 1',
    )
    provider = world.provider(home, configured)
    fleet = AwsDeployments(
        provider, Settings.from_config(configured.config), world.app, lock_ttl=30
    )
    assert fleet.deploy(images[2]).ok
    third = _carried(world, f"kiln-{world.app}-v003")
    assert third["pool"] == 2 and third["pool_state"] == "Running"
    assert third["policies"] == expected["policies"] and third["hooks"] == expected["hooks"]
    # v001 and v002 deleted (keep_server_groups = 1): the alarm kiln made for v002 with
    # it, the team's own alarm left alone; v003's copy acts on v003's policy
    assert set(world.groups()) == {f"kiln-{world.app}-v003"}
    left = _alarms(world)
    assert set(left) == {users, f"kiln-{world.app}-v003-{users}"}
    assert left[f"kiln-{world.app}-v003-{users}"]["AlarmActions"][0] == _policy_arn(
        world, f"kiln-{world.app}-v003", "step-out"
    )


def test_a_hook_whose_role_kiln_may_not_pass_stops_the_deploy_first(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    """A hook's RoleARN is passed again: only roles in hook_roles (the policy's PassRole)."""
    images = ["img-c10000000001", "img-c10000000002"]
    for image in images:
        world.ami(image)
        world.addresses[image] = good_app
    loaded = world.config(tmp_path / "app")
    fleet = AwsDeployments(
        world.provider(home, loaded), Settings.from_config(loaded.config), world.app, lock_ttl=30
    )
    assert fleet.deploy(images[0]).ok
    first = f"kiln-{world.app}-v001"
    role = "arn:aws:iam::123456789012:role/hooks/kiln-notify"
    world.admin.client("autoscaling").put_lifecycle_hook(
        AutoScalingGroupName=first,
        LifecycleHookName="announce",
        LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
        NotificationTargetARN="arn:aws:sqs:eu-west-1:123456789012:launches",
        RoleARN=role,
        NotificationMetadata="from the team",
    )
    with pytest.raises(DeployError, match="role hooks/kiln-notify, which the scaling policy"):
        fleet.deploy(images[1])
    assert set(world.groups()) == {first}  # nothing made

    allowed = world.config(tmp_path / "app", extra_aws='hook_roles = ["hooks/kiln-notify"]')
    fleet = AwsDeployments(
        world.provider(home, allowed), Settings.from_config(allowed.config), world.app, lock_ttl=30
    )
    # listed in kiln.toml, but the deploy user's policies lack the PassRole statement:
    # the server checks iam:PassRole as AWS does (tests/aws/motopatched.py)
    with pytest.raises(DeployError, match="AccessDenied"):
        fleet.deploy(images[1])
    # the half-made group was deleted: a retry makes it again, hooks and all
    assert set(world.groups()) == {first}

    # the scaling policy rendered with hook_roles: its PassRole statement, as generated
    with world.hook_roles_passable(allowed):
        assert fleet.deploy(images[1]).ok
    newest = max(world.groups())
    (hook,) = world.admin.client("autoscaling").describe_lifecycle_hooks(
        AutoScalingGroupName=newest
    )["LifecycleHooks"]
    assert hook["RoleARN"] == role and hook["NotificationMetadata"] == "from the team"
    assert hook["NotificationTargetARN"] == "arn:aws:sqs:eu-west-1:123456789012:launches"
