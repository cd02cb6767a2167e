"""Server-group deployments on moto under IAM enforcement, with the deploy user's keys.

Releases are AMIs tagged as kiln's bake tags them; instance addresses map to
real local HTTP processes by image, so a failing release fails kiln's probe.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import pytest

from aws_deploy.awsworld import World, image_of
from kiln.aws.deployments import AwsDeployments
from kiln.deploy.settings import Settings
from kiln.errors import ConfigError
from kiln.home import Home

pytestmark = pytest.mark.aws


def open_fleet(world: World, home: Home, tmp_path: Path, **config: str) -> AwsDeployments:
    loaded = world.config(tmp_path / "app", **config)
    provider = world.provider(home, loaded)
    return AwsDeployments(provider, Settings.from_config(loaded.config), world.app, lock_ttl=30)


def test_rolling_releases_get_their_own_groups_and_old_ones_are_kept_then_deleted(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    for image in ("img-aaaaaaaaaaa1", "img-aaaaaaaaaaa2", "img-aaaaaaaaaaa3"):
        world.ami(image)
        world.addresses[image] = good_app
    fleet = open_fleet(world, home, tmp_path)
    v1, v2, v3 = (f"kiln-{world.app}-v00{n}" for n in (1, 2, 3))

    first = fleet.deploy("img-aaaaaaaaaaa1")
    assert first.ok, first.message
    assert world.targets() == world.live_members(v1) and len(world.targets()) == 2

    second = fleet.deploy("img-aaaaaaaaaaa2")
    assert second.ok and image_of(second.from_image) == "img-aaaaaaaaaaa1", second.message
    groups = world.groups()
    assert groups[v2]["DesiredCapacity"] == 2 and world.targets() == world.live_members(v2)
    assert groups[v1]["DesiredCapacity"] == 0  # scaled down, kept for rollback
    assert (
        world.admin.ec2.describe_launch_template_versions(
            LaunchTemplateName=f"kiln-{world.app}",
            Versions=[groups[v2]["LaunchTemplate"]["Version"]],
        )["LaunchTemplateVersions"][0]["LaunchTemplateData"]["InstanceType"]
        == "t3.micro"
    )

    third = fleet.deploy("img-aaaaaaaaaaa3")
    assert third.ok, third.message
    assert set(world.groups()) == {v2, v3}  # keep_server_groups = 2: v001 deleted
    assert world.targets() == world.live_members(v3)

    status = fleet.status()
    assert status["endpoint"] == f"http://{world.dns}"
    assert [i["image"] for i in status["instances"]] == ["img-aaaaaaaaaaa3"] * 2
    assert all(i["healthy"] and i["in_service"] for i in status["instances"])
    assert status["lock"] is None

    history = fleet.history()
    assert [(image_of(h["from"]), image_of(h["to"]), h["outcome"]) for h in history] == [
        ("img-aaaaaaaaaaa2", "img-aaaaaaaaaaa3", "succeeded"),
        ("img-aaaaaaaaaaa1", "img-aaaaaaaaaaa2", "succeeded"),
        (None, "img-aaaaaaaaaaa1", "succeeded"),
    ]
    assert history[0]["strategy"] == "rolling" and history[0]["id"] == third.deployment
    assert fleet.drift().clean

    again = fleet.deploy("img-aaaaaaaaaaa3")
    assert again.outcome == "unchanged" and len(fleet.history()) == 3
    with pytest.raises(ConfigError, match="canary") as canary:  # no second target group
        fleet.deploy("img-aaaaaaaaaaa2", strategy="canary")
    assert canary.value.hint and "canary_target_group_arn" in canary.value.hint


def test_failing_release_is_rolled_back_and_its_group_deleted(
    world: World, home: Home, tmp_path: Path, good_app: str, bad_app: str
) -> None:
    world.ami("img-good00000001")
    world.ami("img-bad000000001")
    world.addresses.update({"img-good00000001": good_app, "img-bad000000001": bad_app})
    fleet = open_fleet(world, home, tmp_path)
    assert fleet.deploy("img-good00000001").ok
    serving = world.targets()

    result = fleet.deploy("img-bad000000001")
    assert result.outcome == "rolled back" and not result.ok
    assert result.gate == "boot" and "unhealthy" in (result.message or "")
    assert set(world.groups()) == {f"kiln-{world.app}-v001"}  # the failed release is gone
    assert world.targets() == serving  # the old group was never touched
    entry = fleet.history()[0]
    assert (image_of(entry["to"]), entry["outcome"], entry["gate"]) == (
        "img-bad000000001",
        "rolled back",
        "boot",
    )


def test_blue_green_keeps_the_old_group_warm_and_rollback_reattaches_it(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    world.ami("img-blue00000001")
    world.ami("img-green0000001")
    world.addresses.update({"img-blue00000001": good_app, "img-green0000001": good_app})
    fleet = open_fleet(world, home, tmp_path, extra_fleet='strategy = "blue-green"\n', extra_aws="")
    fleet.settings = Settings(**{**fleet.settings.to_json(), "keep_warm": 600.0})
    v1, v2 = f"kiln-{world.app}-v001", f"kiln-{world.app}-v002"
    assert fleet.deploy("img-blue00000001").ok
    blue = world.live_members(v1)

    result = fleet.deploy("img-green0000001")
    assert result.ok, result.message
    groups = world.groups()
    assert groups[v2]["TargetGroupARNs"] == [world.target_group]
    assert groups[v1]["TargetGroupARNs"] == []  # detached...
    assert world.live_members(v1) == blue  # ...and warm
    assert world.targets() == world.live_members(v2)
    # attached from outside the target group: judged by the load balancer from now on
    assert groups[v2]["HealthCheckType"] == "ELB"

    started = time.monotonic()
    back = fleet.rollback()
    took = time.monotonic() - started
    assert back.ok and image_of(back.to_image) == "img-blue00000001", back.message
    assert world.targets() == blue  # the same instances: nothing was launched
    assert took < 20, took
    assert fleet.history()[0]["kind"] == "rollback"


def test_a_warm_standby_is_discarded_once_keep_warm_is_over(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    for image in ("img-warm00000001", "img-warm00000002"):
        world.ami(image)
        world.addresses[image] = good_app
    fleet = open_fleet(world, home, tmp_path, extra_fleet='strategy = "blue-green"\n')
    fleet.settings = Settings(**{**fleet.settings.to_json(), "keep_warm": 1.0})
    v1 = f"kiln-{world.app}-v001"
    assert fleet.deploy("img-warm00000001").ok
    assert fleet.deploy("img-warm00000002").ok
    assert len(world.live_members(v1)) == 2  # warm, detached
    assert world.groups()[v1]["Tags"] and any(
        t["Key"] == "kiln:warm-until" for t in world.groups()[v1]["Tags"]
    )
    time.sleep(1.5)
    assert fleet.deploy("img-warm00000002").outcome == "unchanged"  # reaps the standby first
    assert world.live_members(v1) == set() and world.groups()[v1]["DesiredCapacity"] == 0
    assert not any(t["Key"] == "kiln:warm-until" for t in world.groups()[v1]["Tags"])


def test_blue_green_never_detaches_the_old_group_before_elb_calls_the_new_one_healthy(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    """The runner's probe passes (it reaches both releases) but ELB keeps the new
    instances unhealthy: nothing is detached, the new group is taken out again, and
    the deployment rolls back with the old group serving throughout."""
    world.ami("img-blue00000002")
    world.ami("img-green0000002")
    world.addresses.update({"img-blue00000002": good_app, "img-green0000002": good_app})
    fleet = open_fleet(world, home, tmp_path, extra_fleet='strategy = "blue-green"\n')
    fleet.provider.attach_wait = 3.0
    v1, v2 = f"kiln-{world.app}-v001", f"kiln-{world.app}-v002"
    assert fleet.deploy("img-blue00000002").ok
    blue = world.live_members(v1)
    served: list[set[str]] = []

    def elb_says_unhealthy(parsed: dict[str, Any], **_kwargs: Any) -> None:
        green = world.live_members(v2)
        for description in parsed.get("TargetHealthDescriptions", []):
            if description["Target"]["Id"] in green:
                description["TargetHealth"] = {"State": "unhealthy"}
        served.append(world.targets())

    elb = world.deploy.client("elbv2")
    elb.meta.events.register(
        "after-call.elastic-load-balancing-v2.DescribeTargetHealth", elb_says_unhealthy
    )
    result = fleet.deploy("img-green0000002")
    assert result.outcome == "rolled back", result.message
    assert "not all healthy in the target group" in (result.message or "")
    assert all(blue <= targets for targets in served)  # the old group never left
    assert world.groups()[v1]["TargetGroupARNs"] == [world.target_group]
    assert world.targets() == blue


def test_a_launch_auto_scaling_gave_up_on_fails_the_gate_with_its_cause(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    """AWS says why a launch failed only in the group's scaling activities (moto
    launches everything and records none, so both are made AWS-like here)."""
    world.ami("img-nolaunch0001")
    world.addresses["img-nolaunch0001"] = good_app
    fleet = open_fleet(world, home, tmp_path)
    v1 = f"kiln-{world.app}-v001"
    why = (
        "You are not authorized to use launch template: kiln-shop. "
        "Not authorized to perform: iam:PassRole. Launching EC2 instance failed."
    )

    def nothing_launched(parsed: dict[str, Any], **_kwargs: Any) -> None:
        for group in parsed.get("AutoScalingGroups", []):
            if group["AutoScalingGroupName"] == v1:
                group["Instances"] = []

    def failed_activity(parsed: dict[str, Any], **_kwargs: Any) -> None:
        parsed["Activities"] = [
            {
                "ActivityId": "a-1",
                "AutoScalingGroupName": v1,
                "Cause": "an instance was started in response to a difference in capacity",
                "StartTime": datetime.datetime.now(datetime.UTC),
                "StatusCode": "Failed",
                "StatusMessage": why,
                "Progress": 100,
            }
        ]

    events = world.deploy.client("autoscaling").meta.events
    events.register("after-call.auto-scaling.DescribeAutoScalingGroups", nothing_launched)
    events.register("after-call.auto-scaling.DescribeScalingActivities", failed_activity)
    started = time.monotonic()
    result = fleet.deploy("img-nolaunch0001")
    took = time.monotonic() - started
    assert not result.ok and "iam:PassRole" in (result.message or ""), result.message
    assert "launched 0 of 2" in (result.message or "")
    assert took < 60, took  # read while waiting, not after the 120 s launch wait
