"""The base image is resolved once and pinned by id; where SSH goes by default."""

from __future__ import annotations

import time

import asyncssh
import pytest
from awskit import SOURCE_AMI

from kiln.aws.ami import caller_cidr, default_target, resolve_base_image
from kiln.aws.builder import Builder
from kiln.aws.session import Aws
from kiln.config import AwsSettings
from kiln.errors import AwsError

pytestmark = pytest.mark.aws


def _image(aws: Aws, name: str) -> str:
    source = SOURCE_AMI
    instance = aws.ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)
    image = aws.ec2.create_image(InstanceId=instance["Instances"][0]["InstanceId"], Name=name)
    return image["ImageId"]


def test_name_pattern_resolves_to_the_newest_match(aws: Aws) -> None:
    older = _image(aws, "debian-12-amd64-20260101-1")
    time.sleep(1.1)  # creation dates have one-second resolution
    newer = _image(aws, "debian-12-amd64-20260201-2")
    _image(aws, "ubuntu-24-amd64-20260301-3")
    settings = AwsSettings(base_image="debian-12-amd64-*", base_image_owner="self")
    assert resolve_base_image(aws, settings) == newer
    assert resolve_base_image(aws, AwsSettings(base_image=older)) == older

    with pytest.raises(AwsError, match="no base image 'centos-\\*'") as missing:
        resolve_base_image(aws, AwsSettings(base_image="centos-*", base_image_owner="self"))
    assert missing.value.hint and "base_image" in missing.value.hint


def test_default_ssh_target_and_caller_address(aws: Aws) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    builder = Builder("i-1", public_ip="203.0.113.7", private_ip="10.0.0.7", key=key)
    public = default_target(AwsSettings(ssh_user="admin"))(builder)
    assert (public.host, public.port, public.username, public.sudo, public.root) == (
        "203.0.113.7",
        22,
        "admin",
        True,
        "/",
    )
    private = default_target(AwsSettings(ssh_private_ip=True))(builder)
    assert private.host == "10.0.0.7"
    with pytest.raises(AwsError, match="has no public address") as no_address:
        default_target(AwsSettings())(Builder("i-2", None, "10.0.0.8", key))
    assert no_address.value.hint and "ssh_private_ip" in no_address.value.hint
    assert caller_cidr(aws) == "127.0.0.1/32"  # against a local endpoint: loopback
