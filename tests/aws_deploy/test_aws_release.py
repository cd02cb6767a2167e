"""``[app] release`` on AWS: a runner instance of the new AMI runs it before anything changes.

kiln runs with the deploy user's keys on an IAM-enforcing moto; each runner it
launches is played by :mod:`aws_deploy.runners` (the real ``oneoff`` script in
a scratch root, reporting through moto's SSM).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aws_deploy.awsworld import World, image_of
from aws_deploy.runners import Runners, released_ami
from kiln.aws.deployments import AwsDeployments
from kiln.deploy.engine import Event
from kiln.deploy.settings import Settings
from kiln.home import Home

pytestmark = pytest.mark.aws

MIGRATE = "import os\nprint('applying 0002 with', os.environ['DB_PASSWORD'])\n"
BROKEN = "import sys\nprint('applying 0003')\nprint('no such table: shop_order')\nsys.exit(3)\n"


def _fleet(world: World, home: Home, tmp_path: Path, events: list[Event]) -> AwsDeployments:
    loaded = world.config(tmp_path / "app")
    provider = world.provider(home, loaded)
    provider.release_poll = 0.2
    return AwsDeployments(
        provider, Settings.from_config(loaded.config), world.app, lock_ttl=30,
        on_event=events.append,
    )  # fmt: skip


def _released(world: World, runners: Runners, tmp_path: Path, image: str, script: str) -> str:
    return released_ami(world, runners, tmp_path, image, script)


def _runner_states(world: World) -> list[str]:
    found = world.admin.ec2.describe_instances(
        Filters=[{"Name": "tag:Name", "Values": [f"kiln-release-{world.app}-*"]}]
    )["Reservations"]
    return [i["State"]["Name"] for r in found for i in r["Instances"]]


def test_release_runs_on_the_new_ami_before_its_group_exists_then_rolls_out(
    world: World, home: Home, tmp_path: Path, good_app: str, runners: Runners
) -> None:
    world.ami("img-rel000000001")
    world.addresses["img-rel000000001"] = good_app
    events: list[Event] = []
    fleet = _fleet(world, home, tmp_path, events)
    assert fleet.deploy("img-rel000000001").ok  # no release tag: no runner
    assert runners.ran == []

    ami = _released(world, runners, tmp_path, "img-rel000000002", MIGRATE)
    world.addresses["img-rel000000002"] = good_app
    result = fleet.deploy("img-rel000000002")

    assert result.ok, result.message
    (ran,) = runners.ran
    assert ran["ami"] == ami and ran["returncode"] == 0
    assert ran["groups_then"] == [f"kiln-{world.app}-v001"]  # before anything changed
    assert ran["shutdown"] == "terminate"
    assert ran["tags"]["kiln:build-id"].startswith("kr-") and "kiln:expires" in ran["tags"]
    assert "applying 0002 with s3cret" in ran["console"]
    release = result.figures["release"]
    assert (release["command"], release["exit_code"]) == ("python3 migrate.py", 0)
    assert any(e.message.startswith("release ran in") for e in events)
    assert _runner_states(world) == ["terminated"]
    left = world.admin.client("ssm").get_parameters_by_path(Path="/kiln/oneoff/", Recursive=True)
    assert left["Parameters"] == []  # the result was read and deleted
    assert set(world.groups()) >= {f"kiln-{world.app}-v002"}
    assert fleet.current_image() == f"img-rel000000002@{ami}"  # what 'kiln run' runs by default


def test_failed_release_changes_nothing_shows_its_output_and_is_in_history(
    world: World, home: Home, tmp_path: Path, good_app: str, runners: Runners
) -> None:
    world.ami("img-rel00000000a")
    world.addresses["img-rel00000000a"] = good_app
    events: list[Event] = []
    fleet = _fleet(world, home, tmp_path, events)
    assert fleet.deploy("img-rel00000000a").ok
    groups_before, targets_before = set(world.groups()), world.targets()

    _released(world, runners, tmp_path, "img-rel00000000b", BROKEN)
    world.addresses["img-rel00000000b"] = good_app
    result = fleet.deploy("img-rel00000000b")

    assert result.outcome == "failed" and result.gate == "release"
    assert result.message and "release command exited with status 3" in result.message
    assert "the fleet serves img-rel00000000a@ami-" in result.message  # a release
    assert result.message.endswith(" as before")
    assert result.log and "no such table: shop_order" in result.log  # what the CLI prints
    assert set(world.groups()) == groups_before and world.targets() == targets_before
    assert _runner_states(world) == ["terminated"]
    (entry, *_older) = fleet.history()
    assert (image_of(entry["to"]), entry["outcome"]) == ("img-rel00000000b", "failed")
    assert entry["gate"] == "release" and "status 3" in entry["message"]
    assert fleet.status()["lock"] is None


def test_a_runner_that_never_reports_fails_the_deployment_with_its_console(
    world: World, home: Home, tmp_path: Path, good_app: str, runners: Runners
) -> None:
    world.ami("img-rel00000000c")
    world.addresses["img-rel00000000c"] = good_app
    fleet = _fleet(world, home, tmp_path, [])
    assert fleet.deploy("img-rel00000000c").ok
    _released(world, runners, tmp_path, "img-rel00000000d", MIGRATE)
    runners.silent = True  # it powers off (so terminates) without a word
    result = fleet.deploy("img-rel00000000d")

    assert result.outcome == "failed" and result.gate == "release"
    assert "ended (terminated) without reporting a result" in (result.log or "")
    assert "console output" in (result.log or "")
    assert set(world.groups()) == {f"kiln-{world.app}-v001"}
