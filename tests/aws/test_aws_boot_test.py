"""The boot test: one instance from the new AMI, the fleet's launch data, a health check.

moto's instances run nothing, so a checker stands in for the HTTP probe here
(the probe itself is tested against a real local server below, and the docs
tests run it for real against a responder on each instance's address).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest
from awskit import TargetFactory, leftovers

from kiln.aws.ami import bake_ami
from kiln.aws.boottest import (
    VERIFIED_TAG,
    BootTestFailed,
    boot_test_user_data,
    direct_checker,
)
from kiln.aws.session import Aws, tag_map
from kiln.config import HealthSettings, LoadedConfig
from kiln.home import Home

pytestmark = pytest.mark.aws

FAST_HEALTH = '\n[health]\ninterval = "0.05s"\ngrace = "0s"\nunhealthy_threshold = 2\n'


def _launched(aws: Aws, ami: str) -> list[dict[str, Any]]:
    found = aws.ec2.describe_instances(Filters=[{"Name": "image-id", "Values": [ami]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def test_boot_test_launches_like_the_fleet_and_tags_the_ami_verified(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    vpc = aws.ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnet = aws.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    group = aws.ec2.create_security_group(GroupName="web", Description="fleet", VpcId=vpc)
    loaded = app_factory(
        extra=f'instance_type = "t3.small"\nsubnet_ids = ["{subnet}"]\n'
        f'security_group_ids = ["{group["GroupId"]}"]\n' + FAST_HEALTH
    )
    seen: list[dict[str, Any]] = []

    def checker(instance: dict[str, Any]) -> bool | None:
        seen.append(instance)
        return None if len(seen) == 1 else True  # unreachable once, then healthy

    result = bake_ami(
        loaded, home, aws=aws, ssh_target=loopback_target, boot_test=True, checker=checker
    )
    assert result.verified and result.boot_test_seconds is not None
    assert result.summary()["verified"] is True
    ami = aws.ec2.describe_images(ImageIds=[result.ami])["Images"][0]
    assert tag_map(ami["Tags"])[VERIFIED_TAG]

    # one instance, launched from the AMI with the fleet's launch data, then terminated
    (instance,) = _launched(aws, result.ami)
    assert len(seen) == 3 and {i["InstanceId"] for i in seen} == {instance["InstanceId"]}
    assert instance["InstanceType"] == "t3.small"
    assert instance["SubnetId"] == subnet
    assert [g["GroupId"] for g in instance["SecurityGroups"]] == [group["GroupId"]]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert "KeyName" not in instance  # nobody logs in: what works, works at boot
    # its only difference: the app's output goes to the console too (this boot only)
    data = aws.ec2.describe_instance_attribute(
        InstanceId=instance["InstanceId"], Attribute="userData"
    )["UserData"]["Value"]
    assert base64.b64decode(data).decode() == boot_test_user_data("acme")
    tags = tag_map(instance["Tags"])
    assert tags["kiln:build-id"] == result.build_id and tags["kiln:app"] == "acme"
    assert instance["State"]["Name"] == "terminated"
    assert leftovers(aws) == {}

    # a reused AMI that passed once is not tested again
    again = bake_ami(loaded, home, aws=aws, boot_test=True, checker=checker)
    assert again.reused and again.verified and again.boot_test_seconds is None
    assert len(seen) == 3 and len(_launched(aws, result.ami)) == 1


def test_failed_boot_test_fails_the_bake_with_the_console_output(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    loaded = app_factory(extra=FAST_HEALTH)
    with pytest.raises(BootTestFailed, match=r"failed 2 health checks in a row") as failed:
        bake_ami(
            loaded, home, aws=aws, ssh_target=loopback_target, boot_test=True,
            checker=lambda _instance: False,
        )  # fmt: skip
    assert failed.value.console.strip()  # moto's console output, decoded
    assert failed.value.hint and "console output" in failed.value.hint
    (ami,) = aws.ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "tag:kiln:app", "Values": ["acme"]}
    ])["Images"]  # fmt: skip
    assert VERIFIED_TAG not in tag_map(ami.get("Tags"))
    assert leftovers(aws) == {}

    # the AMI stays (it is fine to inspect); the next bake with a boot test tests it again
    passed = bake_ami(loaded, home, aws=aws, boot_test=True, checker=lambda _i: True)
    assert passed.reused and passed.verified and passed.ami == ami["ImageId"]


def test_unreachable_test_instance_says_where_to_run_the_bake(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    loaded = app_factory(extra='boot_test = true\nboot_test_timeout = "0.5s"\n' + FAST_HEALTH)
    with pytest.raises(BootTestFailed, match="could not be reached from here") as failed:
        bake_ami(loaded, home, aws=aws, ssh_target=loopback_target, checker=lambda _i: None)
    assert failed.value.hint and "inside the VPC" in failed.value.hint
    assert leftovers(aws) == {}


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def local_app() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_direct_checker_probes_the_instance_address_like_the_load_balancer(
    local_app: int,
) -> None:
    instance = {"InstanceId": "i-1", "PrivateIpAddress": "127.0.0.1"}
    assert direct_checker(local_app, HealthSettings(path="/health"))(instance) is True
    assert direct_checker(local_app, HealthSettings(path="/broken"))(instance) is False
    assert direct_checker(local_app, HealthSettings(path="/health"))({"InstanceId": "i-2"}) is None
    public = {"InstanceId": "i-3", "PublicIpAddress": "127.0.0.1"}
    assert direct_checker(local_app, HealthSettings(path="/health"), public=True)(public) is True
