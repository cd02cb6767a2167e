"""A bake's temporary AWS resources, each born inside a ``with`` that removes it.

Key pair, security group and builder instance are tagged with the bake's
build id and an expiry, so if the process is killed outright (no ``finally``
runs) ``kiln aws reap`` finds them; the builder also powers itself off at
its expiry and is set to terminate on shutdown. Cleanup defers Ctrl-C until
it is done, so an impatient second Ctrl-C cannot orphan anything.

Cleanup fits a cancelled CI job's window (GitHub sends SIGKILL about 10 s
after SIGINT; an instance takes 30-90 s to reach ``terminated``): the key pair
goes first (one call), then the builder is told to terminate; only a bake
that was not interrupted waits for that before deleting the security group.
An interrupted one tries once and leaves a group still in use to expire and
be reaped (``kiln ci init`` schedules ``kiln aws reap``).
"""

from __future__ import annotations

import datetime
import ipaddress
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import asyncssh

from kiln.aws.groups import launch_data
from kiln.aws.policy import APP_TAG, BUILD_TAG
from kiln.aws.session import Aws, aws_errors, eventually, tags
from kiln.config import AwsSettings
from kiln.errors import AwsError

EXPIRES_TAG = "kiln:expires"
Note = Callable[[str], None]


@dataclass(frozen=True)
class BuildTags:
    build_id: str
    app: str
    expires: datetime.datetime
    removed: set[str] = field(default_factory=set, compare=False)  # cleaned up already

    def base(self) -> dict[str, str]:
        return {
            BUILD_TAG: self.build_id,
            APP_TAG: self.app,
            EXPIRES_TAG: self.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def spec(self, *kinds: str, name: str) -> list[Any]:
        tagged = tags({**self.base(), "Name": name})
        return [{"ResourceType": kind, "Tags": tagged} for kind in kinds]


@dataclass(frozen=True)
class Builder:
    """The running builder instance and what is needed to reach it."""

    instance_id: str
    public_ip: str | None
    private_ip: str | None
    key: asyncssh.SSHKey | None = field(repr=False)  # None: reached through Systems Manager


def parse_expiry(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT (and a cancel's SIGTERM, see terminate_as_interrupt) during cleanup;
    re-raise it as KeyboardInterrupt once everything is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    held = [signal.SIGINT]
    if callable(signal.getsignal(signal.SIGTERM)):  # SIGTERM raises KeyboardInterrupt now
        held.append(signal.SIGTERM)
    previous = {signum: signal.signal(signum, hold) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise KeyboardInterrupt


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (CI cancelling a job) unwinds like Ctrl-C, so every ``with`` cleans up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cleanup(what: str, note: Note, action: Callable[[], object]) -> None:
    with interrupts_deferred():
        try:
            with aws_errors(f"removing {what}"):
                action()
            note(f"removed {what}")
        except AwsError as exc:
            note(f"could not remove {what}: {exc}; 'kiln aws reap' will")


cleanup = _cleanup  # the same guarantees for the boot test's instance (kiln.aws.boottest)


@contextmanager
def key_pair(aws: Aws, build: BuildTags, note: Note) -> Iterator[tuple[str, asyncssh.SSHKey]]:
    """A fresh ed25519 key: the private half never leaves this process."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    name = f"kiln-{build.build_id}"
    with aws_errors("creating the builder's key pair"):
        aws.ec2.import_key_pair(
            KeyName=name,
            PublicKeyMaterial=key.export_public_key(),
            TagSpecifications=build.spec("key-pair", name=name),
        )
    note(f"key pair {name}")
    try:
        yield name, key
    finally:
        remove_key_pair(aws, build, name, note)


def remove_key_pair(aws: Aws, build: BuildTags, name: str, note: Note) -> None:
    """Once per bake: the builder's cleanup does it first, the key pair's own is a no-op."""
    if name not in build.removed:
        build.removed.add(name)
        _cleanup(f"key pair {name}", note, lambda: aws.ec2.delete_key_pair(KeyName=name))


def interrupted() -> bool:
    """True inside a ``finally`` that a Ctrl-C or a cancelled job (SIGTERM) unwinds."""
    return isinstance(sys.exc_info()[1], KeyboardInterrupt)


@contextmanager
def security_group(
    aws: Aws, build: BuildTags, cidr: str | None, vpc_id: str | None, note: Note
) -> Iterator[str]:
    """The builder's own group: SSH from ``cidr``, or (None) no inbound rule at all."""
    name = f"kiln-{build.build_id}"
    inbound = f"SSH from {cidr}" if cidr else "no inbound rules"
    args: dict[str, Any] = {
        "GroupName": name,
        "Description": f"kiln AMI builder {build.build_id}: {inbound}",
        "TagSpecifications": build.spec("security-group", name=name),
    }
    if vpc_id:
        args["VpcId"] = vpc_id
    with aws_errors("creating the builder's security group"):
        group_id = aws.ec2.create_security_group(**args)["GroupId"]
    try:
        if cidr:
            with aws_errors("opening SSH on the builder's security group"):
                eventually(
                    lambda: aws.ec2.authorize_security_group_ingress(
                        GroupId=group_id,
                        IpPermissions=[ssh_from(cidr)],
                    )
                )
        note(f"security group {group_id}: {inbound}")
        yield group_id
    finally:
        what = f"security group {group_id}"
        if interrupted():  # its builder may still be shutting down: one try, then reap
            what += f" (expires {build.base()[EXPIRES_TAG]}, then 'kiln aws reap' removes it)"
        _cleanup(what, note, lambda: aws.ec2.delete_security_group(GroupId=group_id))


def ssh_from(cidr: str) -> Any:
    """The ingress rule for SSH from ``cidr``: IpRanges for IPv4, Ipv6Ranges for IPv6."""
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise AwsError(
            f"ssh_cidr {cidr!r} is not a CIDR", hint="e.g. 203.0.113.7/32 or 2001:db8::7/128"
        ) from None
    rule: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22}
    if network.version == 6:
        rule["Ipv6Ranges"] = [{"CidrIpv6": str(network), "Description": "kiln bake"}]
    else:
        rule["IpRanges"] = [{"CidrIp": str(network), "Description": "kiln bake"}]
    return rule


def _user_data(ttl: float) -> str:
    minutes = max(1, int(ttl // 60))
    return (
        "#!/bin/sh\n"
        "# kiln builder: power off (and so terminate) at expiry\n"
        f"shutdown -h +{minutes}\n"
    )


@contextmanager
def builder_instance(
    aws: Aws,
    build: BuildTags,
    *,
    base_ami: str,
    instance_type: str,
    key_name: str | None,
    key: asyncssh.SSHKey | None,
    group_id: str,
    subnet_id: str | None,
    ttl: float,
    note: Note,
    instance_profile: str | None = None,
    block_devices: list[Any] | None = None,
) -> Iterator[Builder]:
    """The builder; without a key pair it is reached through Systems Manager, which
    needs ``instance_profile`` (a role with the agent's permissions)."""
    args: dict[str, Any] = {
        "ImageId": base_ami,
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "SecurityGroupIds": [group_id],
        "InstanceInitiatedShutdownBehavior": "terminate",
        "UserData": _user_data(ttl),
        "MetadataOptions": {"HttpTokens": "required"},
        "TagSpecifications": build.spec(
            "instance", "volume", name=f"kiln-builder-{build.app}-{build.build_id}"
        ),
    }
    if subnet_id:
        args["SubnetId"] = subnet_id
    if key_name:
        args["KeyName"] = key_name
    if instance_profile:
        args["IamInstanceProfile"] = {"Name": instance_profile}
    if block_devices:  # root volume encrypted, sized, typed (kiln.aws.disks)
        args["BlockDeviceMappings"] = block_devices
    instance_id = ""
    try:
        # a Ctrl-C or cancel while RunInstances answers would leave an instance nobody
        # knows: held until its id is known, then raised where the cleanup below sees it
        with interrupts_deferred(), aws_errors("launching the builder instance"):
            instance_id = aws.ec2.run_instances(**args)["Instances"][0]["InstanceId"]
            note(f"builder {instance_id} launched from {base_ami}")
        described = wait_instance(aws, instance_id, "running", timeout=600, note=note)
        yield Builder(
            instance_id=instance_id,
            public_ip=described.get("PublicIpAddress"),
            private_ip=described.get("PrivateIpAddress"),
            key=key,
        )
    finally:
        hurry = interrupted()
        if key_name:
            remove_key_pair(aws, build, key_name, note)  # first: one call, nothing waits on it
        if instance_id:
            _cleanup(
                f"builder {instance_id}",
                note,
                lambda: terminate(aws, instance_id, note, wait=not hurry),
            )


@contextmanager
def fleet_like_instance(
    aws: Aws,
    ami: str,
    settings: AwsSettings,
    build: BuildTags,
    *,
    name: str,
    note: Note,
    user_data: str | None = None,
    key_name: str | None = None,
    extra_groups: Sequence[str] = (),
    extra_tags: dict[str, str] | None = None,
) -> Iterator[str]:
    """One instance of ``ami`` launched as the fleet launches, terminated on the way out.

    Set to terminate when it shuts itself down; tagged for ``kiln aws reap``.
    """
    data = launch_data(
        ami=ami,
        instance_type=settings.instance_type,
        tags={**build.base(), **(extra_tags or {}), "Name": name},
        security_groups=[*settings.security_group_ids, *extra_groups],
        instance_profile=settings.instance_profile,
    )
    subnets = settings.subnet_ids or ([settings.subnet_id] if settings.subnet_id else [])
    args: dict[str, Any] = {
        **data,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceInitiatedShutdownBehavior": "terminate",
    }
    if subnets:
        args["SubnetId"] = subnets[0]
    if user_data:
        args["UserData"] = user_data
    if key_name:
        args["KeyName"] = key_name
    with aws_errors(f"launching an instance from {ami}"):
        instance_id = str(aws.ec2.run_instances(**args)["Instances"][0]["InstanceId"])
    note(f"{name}: {instance_id} launched from {ami}")
    try:
        yield instance_id
    finally:
        hurry = interrupted()
        _cleanup(
            f"instance {instance_id}",
            note,
            lambda: terminate(aws, instance_id, note, wait=not hurry),
        )


def terminate(aws: Aws, instance_id: str, note: Note, *, wait: bool = True) -> None:
    aws.ec2.terminate_instances(InstanceIds=[instance_id])
    if wait:  # 30-90 s on AWS: a cancelled job has about 10
        wait_instance(aws, instance_id, "terminated", timeout=600, note=note)


def wait_instance(
    aws: Aws, instance_id: str, state: str, *, timeout: float, note: Note
) -> dict[str, Any]:
    """Poll until the instance reaches ``state``; its description then."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while True:
        with aws_errors(f"waiting for {instance_id}"):
            found = eventually(
                lambda: aws.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            )
        instance: dict[str, Any] = dict(found[0]["Instances"][0])
        current = instance["State"]["Name"]
        if current == state:
            return instance
        if state == "running" and current in {"shutting-down", "terminated", "stopped"}:
            reason = instance.get("StateReason", {}).get("Message", current)
            raise AwsError(f"builder {instance_id} did not start: {reason}")
        if time.monotonic() > deadline:
            raise AwsError(f"{instance_id} still {current} after {timeout:g}s (wanted {state})")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
