"""Every way a bake can fail ends with a clear error and zero leftover resources."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from awskit import TargetFactory, fail_call, leftovers
from awsservers import SshServer, free_port

from kiln.aws.ami import bake_ami
from kiln.aws.builder import Builder
from kiln.aws.images import list_amis
from kiln.aws.session import Aws, tag_map
from kiln.aws.ssh import SshTarget
from kiln.config import LoadedConfig
from kiln.errors import AwsError
from kiln.home import Home

pytestmark = pytest.mark.aws


def test_ssh_never_comes_up(aws: Aws, home: Home, app_factory: Callable[..., LoadedConfig]) -> None:
    closed = free_port()

    def nobody_home(builder: Builder) -> SshTarget:
        return SshTarget("127.0.0.1", closed, "admin", builder.key, sudo=False, root="/nonexistent")

    loaded = app_factory(ssh_timeout="1s")
    with pytest.raises(AwsError, match=r"did not accept SSH at admin@127\.0\.0\.1:\d+ within 1s"):
        bake_ami(loaded, home, aws=aws, ssh_target=nobody_home)
    assert leftovers(aws) == {}
    assert list_amis(aws, "acme") == []


def test_upload_breaks(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
    ssh_server: SshServer,
) -> None:
    ssh_server.break_upload_after = 100
    with pytest.raises(AwsError, match="broke"):
        bake_ami(app_factory(), home, aws=aws, ssh_target=loopback_target)
    assert leftovers(aws) == {}
    assert list_amis(aws, "acme") == []
    assert not list((home.tmp).glob("ami-*"))  # local staging removed too


def test_ami_creation_fails(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    fail_call(aws, "CreateImage", "InternalError", "An internal error has occurred")
    with pytest.raises(AwsError, match=r"creating the AMI: CreateImage failed \(InternalError\)"):
        bake_ami(app_factory(), home, aws=aws, ssh_target=loopback_target)
    assert leftovers(aws) == {}
    assert list_amis(aws, "acme") == []


def test_interrupted_bake_cleans_up_and_the_next_bake_resumes_the_wait(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    def impatient(message: str) -> None:
        if message.startswith("creating ami-"):
            raise KeyboardInterrupt

    loaded = app_factory()
    with pytest.raises(KeyboardInterrupt):
        bake_ami(loaded, home, aws=aws, progress=impatient, ssh_target=loopback_target)
    assert leftovers(aws) == {}
    [pending] = list_amis(aws, "acme")
    # its snapshots were tagged by CreateImage itself, not after the wait this bake
    # never finished: prune may delete them (DeleteSnapshot needs kiln:app)
    assert pending.snapshots
    for snapshot in aws.ec2.describe_snapshots(SnapshotIds=list(pending.snapshots))["Snapshots"]:
        assert tag_map(snapshot.get("Tags"))["kiln:app"] == "acme"
        assert tag_map(snapshot.get("Tags"))["kiln:digest"] == pending.digest

    # AWS still reports the AMI pending for two polls: the next bake waits, never rebuilds
    polls: list[str] = []

    def still_pending(parsed: dict[str, Any], **_kwargs: Any) -> None:
        for image in parsed.get("Images", []):
            if image["ImageId"] == pending.id and len(polls) < 2:
                polls.append(image["State"])
                image["State"] = "pending"

    aws.ec2.meta.events.register("after-call.ec2.DescribeImages", still_pending)

    def no_builder(_builder: Builder) -> SshTarget:
        raise AssertionError("resuming must not launch a builder")

    resumed = bake_ami(loaded, home, aws=aws, ssh_target=no_builder)
    assert resumed.ami == pending.id and resumed.resumed and resumed.reused
    assert len(polls) == 2
    assert leftovers(aws) == {}


def test_failed_ami_is_replaced(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    loaded = app_factory()
    first = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)

    def failed(parsed: dict[str, Any], **_kwargs: Any) -> None:
        for image in parsed.get("Images", []):
            if image["ImageId"] == first.ami:
                image["State"] = "failed"

    aws.ec2.meta.events.register("after-call.ec2.DescribeImages", failed)
    second = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)
    assert second.ami != first.ami and not second.reused
    assert [a.id for a in list_amis(aws, "acme")] == [second.ami]
    assert leftovers(aws) == {}


def test_two_runners_baking_the_same_image_share_one_ami(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    loaded = app_factory()
    first = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)

    # the second runner looked before the first finished (sees no AMI), then AWS
    # refuses its CreateImage because the first runner's AMI now holds the name
    hidden: list[str] = []

    def not_yet(parsed: dict[str, Any], **_kwargs: Any) -> None:
        kilns = [i for i in parsed.get("Images", []) if "kiln:digest" in tag_map(i.get("Tags"))]
        if kilns and not hidden:  # the lookup of kiln's AMI, not of the base image
            hidden.append("once")
            parsed["Images"] = []

    aws.ec2.meta.events.register("after-call.ec2.DescribeImages", not_yet)
    fail_call(aws, "CreateImage", "InvalidAMIName.Duplicate", "AMI name is already in use")
    second = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)
    assert second.ami == first.ami and not second.reused and second.build_id
    assert [a.id for a in list_amis(aws, "acme")] == [first.ami]
    assert leftovers(aws) == {}


def test_eventual_consistency_of_fresh_resources_is_waited_out(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    """Right after a create, EC2 may still answer NotFound for it: kiln retries."""
    fail_call(aws, "AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound", "no", times=2)
    fail_call(aws, "DescribeInstances", "InvalidInstanceID.NotFound", "no", times=2)
    result = bake_ami(app_factory(), home, aws=aws, ssh_target=loopback_target)
    assert not result.reused and result.ami
    assert leftovers(aws) == {}
