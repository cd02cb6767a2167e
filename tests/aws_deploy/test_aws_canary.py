"""Canary on AWS, on moto under IAM enforcement, with the deploy user's keys.

The listener's weighted forward action is real moto state at every step; the
ALB's traffic and CloudWatch metrics come from :class:`AlbTraffic`, which
reads those weights and puts what each target group would report.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

from aws_deploy.albtraffic import AlbTraffic, Answers
from aws_deploy.awsworld import World
from kiln.aws import canary
from kiln.aws.deployments import AwsDeployments
from kiln.deploy.engine import Event
from kiln.deploy.settings import Settings
from kiln.errors import ConfigError
from kiln.home import Home

pytestmark = pytest.mark.aws

V1, V2 = "img-cccccccccc01", "img-cccccccccc02"
# Each share is watched for 3 s: AlbTraffic posts a tick every 0.2 s, but on a machine at
# load 9 its moto calls stalled for a whole 1 s window (a CI run saw a canary with 0 requests).
CANARY = '\n[canary]\nduration = "3s"\nmin_requests = 5\nmax_error_rate = 0.05\n'


def open_fleet(
    world: World, home: Home, tmp_path: Path, events: list[Event] | None = None, **config: str
) -> AwsDeployments:
    loaded = world.config(tmp_path / "app", extra_fleet=CANARY, **config)
    provider = world.provider(home, loaded)
    return AwsDeployments(
        provider,
        Settings.from_config(loaded.config),
        world.app,
        lock_ttl=30,
        on_event=events.append if events is not None else None,
    )


def first_release(world: World, home: Home, tmp_path: Path, good_app: str) -> AwsDeployments:
    for image in (V1, V2):
        world.ami(image)
        world.addresses[image] = good_app
    fleet = open_fleet(world, home, tmp_path, extra_aws=world.canary_settings())
    assert fleet.deploy(V1).ok
    return fleet


def plain(world: World) -> list[dict[str, str]]:
    return [{"Type": "forward", "TargetGroupArn": world.target_group}]


def test_a_canary_steps_the_listener_judges_each_share_then_rolls_on(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    fleet = first_release(world, home, tmp_path, good_app)
    tg, cg = world.target_group, world.canary_group
    with AlbTraffic(world) as traffic:
        result = fleet.deploy(V2, strategy="canary")
    assert result.ok, result.message
    assert traffic.shapes == [{tg: 100}, {tg: 90, cg: 10}, {tg: 50, cg: 50}, {tg: 100}]
    assert world.default_actions() == plain(world)
    v2 = world.live_members(f"kiln-{world.app}-v002")
    assert world.targets() == v2 and len(v2) == 2
    assert world.targets(cg) == set()  # detached from the canaries' group once judged
    steps = result.figures["canary"]["steps"]
    assert [s["traffic_percent"] for s in steps] == [10, 50]
    assert all(s["canary_requests"] >= 5 and s["canary_errors"] == 0 for s in steps)
    assert steps[1]["canary_requests"] > steps[0]["canary_requests"]  # 50% vs 10% of requests
    assert all(s["fleet_requests"] > 0 and s["canary_p99"] == 0.02 for s in steps)


@pytest.mark.parametrize(
    ("answers", "words"),
    [(Answers(error_rate=0.3), "5xx rate"), (Answers(seconds=0.5), "p99 latency")],
)
def test_a_bad_canary_trips_at_its_first_share_and_all_traffic_goes_back(
    world: World, home: Home, tmp_path: Path, good_app: str, answers: Answers, words: str
) -> None:
    fleet = first_release(world, home, tmp_path, good_app)
    v1 = world.live_members(f"kiln-{world.app}-v001")
    tg, cg = world.target_group, world.canary_group
    with AlbTraffic(world, answers={cg: answers}) as traffic:
        result = fleet.deploy(V2, strategy="canary")
    assert result.outcome == "rolled back" and result.gate == "canary", result.message
    assert "canary gate at 10% of requests: " + words in (result.message or "")
    assert traffic.shapes == [{tg: 100}, {tg: 90, cg: 10}, {tg: 100}]
    assert world.default_actions() == plain(world)
    assert world.targets() == v1  # the old fleet never left
    assert f"kiln-{world.app}-v002" not in world.groups()  # the failed release is deleted
    assert fleet.history()[0]["outcome"] == "rolled back"


def test_a_canary_without_traffic_is_not_judged_good(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    fleet = first_release(world, home, tmp_path, good_app)
    result = fleet.deploy(V2, strategy="canary")  # nobody puts metrics: no requests seen
    assert result.outcome == "rolled back" and "min_requests" in (result.message or "")
    assert world.default_actions() == plain(world)


def test_a_split_left_by_a_killed_deployment_is_ended_by_the_next_operation(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    first_release(world, home, tmp_path, good_app)
    elb = world.admin.client("elbv2")
    groups = [
        {"TargetGroupArn": world.target_group, "Weight": 90},
        {"TargetGroupArn": world.canary_group, "Weight": 10},
    ]
    elb.modify_listener(
        ListenerArn=world.listener,
        DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": groups}}],
    )
    events: list[Event] = []
    fleet = open_fleet(world, home, tmp_path, events, extra_aws=world.canary_settings())
    assert fleet.scale(2).outcome == "unchanged"
    assert world.default_actions() == plain(world)
    assert any("canary split left by an interrupted deployment" in e.message for e in events)


def test_canary_settings_missing_or_a_listener_kiln_cannot_weight_are_one_line_errors(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    first_release(world, home, tmp_path, good_app)
    bare = open_fleet(world, home, tmp_path)
    with pytest.raises(ConfigError, match="second target group") as missing:
        bare.deploy(V2, strategy="canary")
    assert missing.value.hint and "canary_target_group_arn" in missing.value.hint
    world.admin.client("elbv2").modify_listener(
        ListenerArn=world.listener,
        DefaultActions=[
            {
                "Type": "fixed-response",
                "FixedResponseConfig": {"StatusCode": "503", "ContentType": "text/plain"},
            }
        ],
    )
    fleet = open_fleet(world, home, tmp_path, extra_aws=world.canary_settings())
    with pytest.raises(ConfigError, match="default action is not a single forward"):
        fleet.deploy(V2, strategy="canary")
    assert world.live_members(f"kiln-{world.app}-v001") == world.targets()  # nothing changed


def test_cloudwatch_reads_sum_each_target_group_in_its_window(world: World) -> None:
    """Exact figures from put_metric_data: per group, from the window's minute, p99."""
    cloudwatch = world.admin.client("cloudwatch")
    lb = canary.dimension(world.balancer, "loadbalancer")
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    minute = now.replace(second=0)

    def put(group: str, at: datetime.datetime, requests: int, errors: int, p: list[float]) -> None:
        dims = [
            {"Name": "TargetGroup", "Value": canary.dimension(group, "targetgroup")},
            {"Name": "LoadBalancer", "Value": lb},
        ]
        data: list[Any] = [
            {"MetricName": "RequestCount", "Value": requests},
            {"MetricName": "HTTPCode_Target_5XX_Count", "Value": errors},
            {"MetricName": "TargetResponseTime", "Values": p},
        ]
        for item in data:
            item.update(Dimensions=dims, Timestamp=at)
        cloudwatch.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=data)

    put(world.target_group, minute - datetime.timedelta(minutes=2), 999, 999, [9.0])  # before
    put(world.target_group, minute, 100, 1, [0.01] * 99 + [0.2])
    put(world.canary_group, minute, 40, 4, [0.03] * 98 + [0.4, 0.5])
    put(world.canary_group, now, 10, 0, [0.02])
    sides = canary.read_sides(
        world.deploy,
        world.balancer,
        {"canary": world.canary_group, "fleet": world.target_group},
        since=now.timestamp(),
        until=now.timestamp() + 1,
    )
    assert (sides["fleet"].requests, sides["fleet"].errors) == (100, 1)
    assert sides["fleet"].p99_seconds == 0.01
    assert (sides["canary"].requests, sides["canary"].errors) == (50, 4)
    assert sides["canary"].p99_seconds == 0.4


def test_kiln_ui_reads_the_fleets_traffic_per_minute_from_cloudwatch(
    world: World, home: Home, tmp_path: Path
) -> None:
    """AwsPlatform.traffic: both target groups summed per minute, as the deploy user."""
    cloudwatch = world.admin.client("cloudwatch")
    lb = canary.dimension(world.balancer, "loadbalancer")
    # the last whole minute: moto reads [StartTime, EndTime) with EndTime = now cut to the
    # second, so a point at the current minute's :00 was missed in that minute's first
    # second (a CI run)
    now = datetime.datetime.now(datetime.UTC)
    minute = (now - datetime.timedelta(minutes=1)).replace(second=0, microsecond=0)

    def put(group: str, at: datetime.datetime, requests: int, errors: int) -> None:
        dims = [
            {"Name": "TargetGroup", "Value": canary.dimension(group, "targetgroup")},
            {"Name": "LoadBalancer", "Value": lb},
        ]
        cloudwatch.put_metric_data(
            Namespace="AWS/ApplicationELB",
            MetricData=[
                {
                    "MetricName": "RequestCount",
                    "Value": requests,
                    "Dimensions": dims,
                    "Timestamp": at,
                },
                {
                    "MetricName": "HTTPCode_Target_5XX_Count",
                    "Value": errors,
                    "Dimensions": dims,
                    "Timestamp": at,
                },
            ],
        )

    earlier = minute - datetime.timedelta(minutes=3)
    put(world.target_group, earlier, 120, 0)
    put(world.target_group, minute, 80, 2)
    put(world.canary_group, minute, 20, 1)
    fleet = open_fleet(world, home, tmp_path, extra_aws=world.canary_settings())
    rows = fleet.provider.traffic(since=earlier.timestamp() - 60)
    assert rows == [
        [earlier.timestamp() + 60, 60.0, 120, 0],
        [minute.timestamp() + 60, 60.0, 100, 3],
    ]
    plain_fleet = open_fleet(world, home, tmp_path / "plain")
    assert plain_fleet.provider.traffic(since=earlier.timestamp()) is None  # no listener_arn
