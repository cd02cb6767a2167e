"""State kept in AWS: the lock, capacity autoscaling chose, drift, recycle, draining.

Each test talks to AWS with the deploy user's keys under IAM enforcement; a
second AwsDeployments stands in for a second CI runner with nothing local.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aws_deploy.awsworld import World, image_of
from kiln.aws import groups
from kiln.aws.awsstate import AwsLock, lock_name
from kiln.aws.deployments import AwsDeployments
from kiln.aws.session import connect
from kiln.config import AwsSettings
from kiln.deploy.clock import SystemClock
from kiln.deploy.settings import Settings
from kiln.errors import LockHeld
from kiln.home import Home
from kiln.providers.fake import SimulatedKill

pytestmark = pytest.mark.aws
V1, V2 = "img-s00000000001", "img-s00000000002"


def runner(world: World, home: Home, tmp_path: Path, **config: str) -> AwsDeployments:
    loaded = world.config(tmp_path / "app", **config)
    provider = world.provider(home, loaded)
    return AwsDeployments(provider, Settings.from_config(loaded.config), world.app, lock_ttl=30)


@pytest.fixture
def two_images(world: World, good_app: str) -> World:
    for image in (V1, V2):
        world.ami(image)
        world.addresses[image] = good_app
    return world


def test_lock_is_one_security_group_with_holder_expiry_and_takeover(
    two_images: World, home: Home, tmp_path: Path
) -> None:
    world = two_images
    clock = SystemClock()
    held = AwsLock(world.deploy, world.app, clock, holder="alice@ci-1", ttl=60)
    held.acquire()
    found = world.admin.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [lock_name(world.app)]}]
    )["SecurityGroups"]
    assert len(found) == 1
    tags = {t["Key"]: t["Value"] for t in found[0]["Tags"]}
    assert (
        tags["kiln:holder"].startswith("alice@ci-1") and float(tags["kiln:expires"]) > time.time()
    )

    other = runner(world, home, tmp_path)
    # status shows the holder as `kiln status` does on every platform (was "locked by None")
    shown = other.status()["lock"]
    assert shown["holder"].startswith("alice@ci-1") and shown["expires"] > time.time()
    with pytest.raises(LockHeld, match="being deployed by alice@ci-1") as busy:
        other.deploy(V1)
    assert busy.value.hint and lock_name(world.app) in busy.value.hint
    started = time.monotonic()
    with pytest.raises(LockHeld):
        other.deploy(V1, wait=1.0)
    assert time.monotonic() - started >= 1.0
    assert world.groups() == {}  # nothing was touched while locked

    # alice's runner dies (kill -9): her lock expires and the next deploy takes it over
    world.admin.ec2.create_tags(
        Resources=[found[0]["GroupId"]], Tags=[{"Key": "kiln:expires", "Value": "0"}]
    )
    warnings: list[str] = []
    other.on_event = lambda e: warnings.append(e.message) if e.kind == "warning" else None
    other.lock.warn = warnings.append
    assert other.deploy(V1).ok
    assert any("taking over the deploy lock" in w and "alice@ci-1" in w for w in warnings)
    assert other.status()["lock"] is None  # released at the end

    # alice's runner was only stalled: her next heartbeat finds the lock gone and stops
    with pytest.raises(LockHeld, match="lost the deploy lock"):
        held.beat("dep-alice")


def test_no_local_state_a_second_runner_sees_history_and_rolls_back(
    two_images: World, home: Home, tmp_path: Path
) -> None:
    world = two_images
    first = runner(world, home, tmp_path / "one")
    assert first.deploy(V1).ok and first.deploy(V2).ok
    assert not home.state_db.exists()  # nothing kept on this machine

    second = runner(world, home, tmp_path / "two")  # another CI runner
    assert [image_of(h["to"]) for h in second.history()] == [V2, V1]
    back = second.rollback()
    moved = (image_of(back.from_image), image_of(back.to_image))
    assert back.ok and moved == (V2, V1), back.message
    assert {i["image"] for i in first.status()["instances"] if i["in_service"]} == {V1}
    assert [h["kind"] for h in first.history()] == ["rollback", "deploy", "deploy"]


def test_capacity_autoscaling_chose_is_kept(two_images: World, home: Home, tmp_path: Path) -> None:
    world = two_images
    fleet = runner(world, home, tmp_path)
    assert fleet.deploy(V1).ok
    v1, v2 = f"kiln-{world.app}-v001", f"kiln-{world.app}-v002"
    world.admin.client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=v1, MinSize=2, MaxSize=6, DesiredCapacity=3
    )  # a scaling policy grew the fleet

    assert fleet.deploy(V2).ok
    grown = world.groups()[v2]
    assert (grown["MinSize"], grown["DesiredCapacity"], grown["MaxSize"]) == (2, 3, 6)
    assert len(world.targets()) == 3 and world.targets() == world.live_members(v2)


def test_drift_recycle_and_deregistration_delay(
    world: World, home: Home, tmp_path: Path, good_app: str
) -> None:
    world.ami(V1)
    world.addresses[V1] = good_app
    world.admin.client("elbv2").modify_target_group_attributes(
        TargetGroupArn=world.target_group,
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "2"}],
    )
    fleet = runner(world, home, tmp_path)
    assert fleet.deploy(V1).ok
    assert fleet.drift().clean

    # someone registers a hand-launched instance behind the fleet's load balancer
    stranger = world.admin.ec2.run_instances(ImageId=world.base_ami, MinCount=1, MaxCount=1)
    stranger_id = stranger["Instances"][0]["InstanceId"]
    world.admin.client("elbv2").register_targets(
        TargetGroupArn=world.target_group, Targets=[{"Id": stranger_id}]
    )
    drift = fleet.drift()
    assert drift.unmanaged == (stranger_id,) and not drift.clean
    world.admin.client("elbv2").deregister_targets(
        TargetGroupArn=world.target_group, Targets=[{"Id": stranger_id}]
    )

    # recycle replaces every instance older than max age, from the same image
    before = world.live_members(f"kiln-{world.app}-v001")
    started = time.monotonic()
    result = fleet.recycle(max_age=0, reason="monthly")
    took = time.monotonic() - started
    after = world.live_members(f"kiln-{world.app}-v001")
    assert result.ok and result.kind == "recycle" and not after & before
    assert len(after) == 2 and world.targets() == after
    assert took >= 2 * 2  # two batches, each drained for the target group's 2s delay
    assert fleet.drift().clean
    recycled = fleet.history()[0]
    assert (recycled["kind"], recycled["outcome"]) == ("recycle", "succeeded")
    assert image_of(recycled["to"]) == V1

    text = fleet.provider.log_tail(sorted(after)[0])
    assert isinstance(text, str)


def test_a_deploy_killed_half_way_is_finished_by_the_next_runner(
    two_images: World, home: Home, tmp_path: Path
) -> None:
    world = two_images
    first = runner(world, home, tmp_path / "one")
    assert first.deploy(V1).ok
    real_launch = first.provider.launch

    def launch_then_die(*args: Any, **kwargs: Any) -> list[str]:
        real_launch(*args, **kwargs)
        raise SimulatedKill("the CI runner died right after the first batch launched")

    first.provider.launch = launch_then_die  # type: ignore[method-assign]
    with pytest.raises(SimulatedKill):
        first.deploy(V2)
    v1, v2 = f"kiln-{world.app}-v001", f"kiln-{world.app}-v002"
    assert len(world.live_members(v1)) == 2 and len(world.live_members(v2)) == 1

    second = runner(world, home, tmp_path / "two")  # nothing local: re-plans from AWS
    result = second.deploy(V2)
    assert result.ok and image_of(result.from_image) == V1, result.message
    assert world.targets() == world.live_members(v2) and len(world.live_members(v2)) == 2
    assert world.groups()[v1]["DesiredCapacity"] == 0
    moves = [(image_of(h["from"]), image_of(h["to"])) for h in second.history()]
    assert moves == [(V1, V2), (None, V1)]


def test_the_lock_stays_alive_through_a_drain_longer_than_its_ttl(
    two_images: World,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    deploy_keys: tuple[str, str],
) -> None:
    world = two_images
    world.admin.client("elbv2").modify_target_group_attributes(
        TargetGroupArn=world.target_group,
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "4"}],
    )
    fleet = runner(world, home, tmp_path, extra_fleet="max_surge = 2\n")
    fleet.lock.ttl = 3.0  # shorter than the 4s drain: only the heartbeat keeps it
    assert fleet.deploy(V1).ok
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(fleet.deploy(V2)))
    worker.start()
    rival = AwsLock(
        connect(
            AwsSettings(region="eu-west-1", endpoint_url=deploy_moto),
            access_key_id=deploy_keys[0],
            secret_access_key=deploy_keys[1],
        ),
        world.app,
        SystemClock(),
        holder="rival@ci-2",
    )
    refused = 0
    while worker.is_alive():
        try:
            rival.acquire()
        except LockHeld:
            refused += 1
        else:
            rival.release()
            if worker.is_alive():
                pytest.fail("the rival took the lock while the deploy was running")
        time.sleep(0.5)
    worker.join()
    assert outcome and outcome[0].ok, outcome
    assert refused >= 8  # the deploy (with its 4s drain) outlived the ttl several times


def test_old_template_versions_are_deleted_but_history_and_live_groups_keep_theirs(
    world: World, home: Home, tmp_path: Path, good_app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each operation adds template versions (EC2 allows 10,000, and history pages
    through all of them): only the newest N, the default and those in use stay."""
    monkeypatch.setattr(groups, "KEEP_TEMPLATE_VERSIONS", 3)
    images = [f"img-t0000000000{n}" for n in range(1, 5)]
    for image in images:
        world.ami(image)
        world.addresses[image] = good_app
    fleet = runner(world, home, tmp_path)
    for image in images:
        assert fleet.deploy(image).ok
    name = f"kiln-{world.app}"
    left = world.admin.ec2.describe_launch_template_versions(LaunchTemplateName=name)
    numbers = sorted(int(v["VersionNumber"]) for v in left["LaunchTemplateVersions"])
    used = {
        int(grp["LaunchTemplate"]["Version"])
        for grp in world.groups().values()
        if grp["LaunchTemplate"]["Version"].isdigit()
    }
    assert numbers[-1] == 8 and set(numbers) == {6, 7, 8} | used, numbers  # 2 per deploy
    assert 1 not in numbers and used <= set(numbers)
    assert image_of(fleet.history()[0]["to"]) == images[-1]  # the newest history is kept
    assert fleet.rollback().ok  # and the group kept for rollback still launches
