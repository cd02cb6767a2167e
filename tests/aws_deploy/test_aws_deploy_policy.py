"""The deploy statements are complete and minimal, proven on an IAM-enforced moto server.

Every AWS call kiln makes while deploying (rolling, blue-green, a failed
release, a release command on its runner, warm rollback, recycle, a canary, status,
history, drift, logs, a lock takeover) is recorded from botocore's own events on the deploy user's
session. The deploy user holds only the deploy and scaling statements (enforceable),
so every recorded call was allowed; the recorded set must equal the deploy
actions, minus any AWS only checks on the caller's behalf (none since release
runners made ``ec2:RunInstances`` a call of kiln's own). The one such check
kept: ``iam:PassRole`` on a carried lifecycle hook's role, which the user
holds only as kiln renders it (hook_roles) and the server checks
(tests/aws/motopatched.py).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from aws.policywalk import lint
from aws_deploy.albtraffic import AlbTraffic
from aws_deploy.awsworld import World, image_of
from aws_deploy.runners import Runners, released_ami
from kiln.aws import groups
from kiln.aws.awsstate import AwsLock
from kiln.aws.deployments import AwsDeployments
from kiln.aws.groups import launch_failure
from kiln.aws.policy import (
    ALL_PURPOSES,
    DEPLOY_PURPOSES,
    IMPLICIT_DEPLOY_ACTIONS,
    ONEOFF_RESULTS,
    SCALING_PURPOSES,
    actions,
    policy_document,
)
from kiln.aws.session import Aws, aws_errors
from kiln.deploy.clock import SystemClock
from kiln.deploy.settings import Settings
from kiln.errors import AwsError
from kiln.home import Home

pytestmark = pytest.mark.aws


def record(aws: Aws) -> set[str]:
    calls: set[str] = set()

    def seen(model: Any, **_kwargs: Any) -> None:
        service = model.service_model.signing_name
        service = {"monitoring": "cloudwatch"}.get(service, service)  # IAM's name for it
        calls.add(f"{service}:{model.name}")

    aws.session.events.register("before-call", seen)
    return calls


def test_every_deploy_call_is_in_the_policy_and_nothing_else_is(
    world: World,
    home: Home,
    tmp_path: Path,
    good_app: str,
    bad_app: str,
    monkeypatch: pytest.MonkeyPatch,
    runners: Runners,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr(groups, "KEEP_TEMPLATE_VERSIONS", 4)  # old versions get deleted
    calls = record(world.deploy)  # before the first client exists: every call is seen
    images = ["img-p00000000001", "img-p00000000002", "img-p00000000003", "img-pbad00000001"]
    for image in images:
        if image == images[1]:  # with a release: its runner is launched, read, terminated
            released_ami(world, runners, tmp_path, image, "print('migrated')\n")
        else:
            world.ami(image)
        world.addresses[image] = bad_app if "bad" in image else good_app
    hooks = 'hook_roles = ["hooks/kiln-notify"]\n'  # a hook's role, passed (iam:PassRole)
    loaded = world.config(  # sticky: the target groups' stickiness is set once
        tmp_path / "app",
        extra_fleet='sticky = "cookie"',
        extra_aws=world.canary_settings("[20]") + hooks,
    )
    provider = world.provider(home, loaded)
    provider.release_poll = 0.2
    settings = Settings.from_config(loaded.config)
    fleet = AwsDeployments(provider, settings, world.app, lock_ttl=30)

    assert fleet.deploy(images[0]).ok  # first release: template and group created
    world.decorate(f"kiln-{world.app}-v001")  # carried to every later group
    world.admin.client("autoscaling").put_lifecycle_hook(  # passing its role is checked
        AutoScalingGroupName=f"kiln-{world.app}-v001",
        LifecycleHookName="announce",
        LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
        RoleARN="arn:aws:iam::123456789012:role/hooks/kiln-notify",
        NotificationTargetARN="arn:aws:sqs:eu-west-1:123456789012:launches",
    )
    passing = world.hook_roles_passable(loaded)  # the rendered PassRole statement
    passing.__enter__()
    request.addfinalizer(lambda: passing.__exit__(None, None, None))
    assert fleet.deploy(images[1]).ok  # its release command; rolling: drain, terminate
    assert [r["returncode"] for r in runners.ran] == [0]
    assert fleet.deploy(images[3]).outcome == "rolled back"  # failed release deleted
    fleet.settings = Settings(**{**settings.to_json(), "keep_warm": 600.0})
    assert fleet.deploy(images[2], strategy="blue-green").ok  # attach/detach, warm tag
    assert fleet.rollback().ok  # warm group re-attached, warm tag removed
    one = world.live_members(f"kiln-{world.app}-v002").pop()
    provider.set_in_service(world.app, [], [one])  # single targets out and back in
    provider.set_in_service(world.app, [one], [])
    assert fleet.recycle(max_age=0).ok
    fleet.settings = Settings(
        **{**settings.to_json(), "canary_duration": 3.0, "min_requests": 5, "keep_warm": 0.0}
    )
    # 3 s: on a loaded machine AlbTraffic's moto calls can stall through a 1 s window
    with AlbTraffic(world):  # the listener weighted, CloudWatch read, all traffic back
        assert fleet.deploy(images[0], strategy="canary").ok
    assert fleet.status()["instances"] and fleet.history() and fleet.drift().clean
    assert isinstance(provider.log_tail(one), str)
    # read by a launch wait only when Auto Scaling is slow (moto never is): made here
    # with the deploy user's keys, as the wait makes it (test_aws_rollouts shows the wait)
    since = datetime.datetime.now(datetime.UTC)
    assert launch_failure(world.deploy, f"kiln-{world.app}-v002", since) is None
    stale = AwsLock(world.deploy, world.app, SystemClock(), holder="ci@gone", ttl=-1)
    stale.acquire()  # a lock whose holder died: expired at once
    assert image_of(fleet.plan(images[0]).image) == images[0]
    taken = AwsLock(world.deploy, world.app, SystemClock(), holder="ci@next")
    taken.acquire()
    # a heartbeat, whatever the machine's speed: naming a deployment always writes
    # (the engine's own beats write at most every ttl/6, so a fast run may make none)
    taken.beat("dep-heartbeat")
    taken.release()

    expected = actions((*DEPLOY_PURPOSES, *SCALING_PURPOSES)) - IMPLICIT_DEPLOY_ACTIONS
    assert sorted(calls - expected) == [], "called but not in the policy"
    assert sorted(expected - calls) == [], "in the policy but never called"


def test_deploy_key_is_denied_outside_its_policy(world: World) -> None:
    denied = r"AWS denied DescribeVpcs \(AccessDenied\)"
    with pytest.raises(AwsError, match=denied), aws_errors("listing VPCs"):
        world.deploy.ec2.describe_vpcs()
    with pytest.raises(AwsError, match="AWS denied"), aws_errors("creating a user"):
        world.deploy.iam.create_user(UserName="escalate")


def test_full_policy_lints_clean_and_scopes_every_destructive_deploy_call() -> None:
    document = policy_document(region="eu-west-1", account="123456789012", purposes=ALL_PURPOSES)
    for community in (False, True):
        assert lint(document, community=community) == []
    deploy_sids = {
        s["Sid"]
        for s in policy_document(region=None, account=None, purposes=DEPLOY_PURPOSES)["Statement"]
    }
    for statement in document["Statement"]:
        if statement["Sid"] not in deploy_sids:
            continue
        risky = [
            a
            for a in statement["Action"]
            if any(w in a for w in (":Delete", ":Terminate", ":Detach", ":Deregister", ":Update"))
        ]
        resources = statement["Resource"]
        kilns_own = isinstance(resources, str) and ONEOFF_RESULTS in resources  # runners' results
        if risky and not statement["Sid"].endswith("Targets") and not kilns_own:
            assert "ResourceTag/kiln:" in json.dumps(statement["Condition"]), statement["Sid"]
