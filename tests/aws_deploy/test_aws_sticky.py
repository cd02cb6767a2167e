"""[fleet] sticky on AWS: the target groups' lb_cookie stickiness, on moto under IAM
enforcement with the deploy user's keys (moto stores the attributes and the listener's
group stickiness; it serves no traffic, so the AWSALB cookie itself is AWS's to prove)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aws_deploy.albtraffic import AlbTraffic, weights
from aws_deploy.awsworld import World
from kiln.aws import sticky
from kiln.aws.deployments import AwsDeployments
from kiln.aws.provider import AwsProvider
from kiln.deploy.engine import Event
from kiln.deploy.settings import Settings
from kiln.errors import AwsError
from kiln.home import Home

pytestmark = pytest.mark.aws

V1, V2 = "img-5c0000000001", "img-5c0000000002"
# 5 s, not 1: on a busy machine the simulated ALB traffic (a thread putting metrics
# every 0.2 s) may put fewer than min_requests into a 1 s window, and the gate trips.
CANARY = '\n[canary]\nduration = "5s"\nmin_requests = 5\nmax_error_rate = 0.05\n'


def stickiness(world: World, tg: str) -> dict[str, str]:
    found = world.admin.client("elbv2").describe_target_group_attributes(TargetGroupArn=tg)
    return {a["Key"]: a["Value"] for a in found["Attributes"] if a["Key"].startswith("stickiness.")}


def provider(world: World, home: Home, tmp_path: Path, fleet: str) -> AwsProvider:
    loaded = world.config(tmp_path / "app", extra_fleet=fleet, extra_aws=world.canary_settings())
    return world.provider(home, loaded)


def test_sticky_cookie_sets_both_groups_and_the_canary_split_keeps_clients_on_one_side(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    for image in (V1, V2):
        world.ami(image)
        world.addresses[image] = good_app
    tg, cg = world.target_group, world.canary_group
    assert stickiness(world, tg)["stickiness.enabled"] == "false"  # as the group was made
    aws = provider(world, home, tmp_path, 'sticky = "cookie"\nsticky_duration = "1h"' + CANARY)
    events: list[Event] = []
    settings = Settings.from_config(aws.loaded.config)
    fleet = AwsDeployments(aws, settings, world.app, lock_ttl=30, on_event=events.append)
    assert fleet.deploy(V1).ok
    wanted = {
        "stickiness.enabled": "true",
        "stickiness.type": "lb_cookie",
        "stickiness.lb_cookie.duration_seconds": "3600",
    }
    assert stickiness(world, tg) == wanted and stickiness(world, cg) == wanted
    said = [e.message for e in events]
    assert f"{tg.rsplit(':', 1)[-1]} is sticky by the ALB's cookie for 3600s from now on" in said
    assert aws.apply_settings(world.app) == []  # as wanted already: read, not written

    with AlbTraffic(world) as traffic:
        outcome = fleet.deploy(V2, strategy="canary")
        assert outcome.ok, (outcome.message, outcome.gate, [e.message for e in events][-8:])
    split: list[Any] = [a for a in traffic.actions if len(weights(a)) == 2]
    assert split, traffic.shapes
    for (action,) in split:  # a client stays with the group that answered it first
        pinned = action["ForwardConfig"]["TargetGroupStickinessConfig"]
        assert pinned == {"Enabled": True, "DurationSeconds": 3600}


def test_off_turns_it_off_and_unset_leaves_the_groups_as_they_are(
    world: World, home: Home, tmp_path: Path
) -> None:
    tg, cg = world.target_group, world.canary_group
    assert len(provider(world, home, tmp_path, 'sticky = "cookie"').apply_settings("x")) == 2
    assert stickiness(world, tg)["stickiness.lb_cookie.duration_seconds"] == "86400"  # ALB's
    assert provider(world, home, tmp_path, "").apply_settings("x") == []  # unset: not kiln's
    assert stickiness(world, cg)["stickiness.enabled"] == "true"
    off = provider(world, home, tmp_path, 'sticky = "off"').apply_settings("x")
    assert off == [f"{g.rsplit(':', 1)[-1]} is not sticky from now on" for g in (tg, cg)]
    assert stickiness(world, tg)["stickiness.enabled"] == "false"
    assert stickiness(world, cg)["stickiness.enabled"] == "false"
    # a Network Load Balancer's TCP group cannot do lb_cookie: AWS's reason, in one line
    elb = world.admin.client("elbv2")
    vpc = elb.describe_target_groups(TargetGroupArns=[tg])["TargetGroups"][0]["VpcId"]
    tcp = elb.create_target_group(Name="nlb", Protocol="TCP", Port=3000, VpcId=vpc)
    arn = tcp["TargetGroups"][0]["TargetGroupArn"]
    with pytest.raises(AwsError) as refused:
        sticky.ensure(world.deploy, arn, sticky.attributes("cookie", None) or {})
    assert "setting the target group's stickiness ([fleet] sticky)" in str(refused.value)
    assert "lb_cookie' is not supported for target groups with the TCP protocol" in str(
        refused.value
    )
