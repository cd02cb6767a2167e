"""``kiln refresh --provider aws``: a newer base image becomes a new AMI of the same image,
rolled out through the engine; an unchanged base is a no-op.

The bakes are real (their SSH step against a loopback SSH server standing in
for the builder, so the package list is this host's, read by dpkg-query);
everything runs with a deploy user holding the whole generated policy on the
IAM-enforcing moto server.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from aws.awsservers import SshServer
from aws_deploy.awsworld import World
from kiln.aws.ami import bake_ami
from kiln.aws.builder import Builder
from kiln.aws.deployments import open_deployments
from kiln.aws.groups import split_release
from kiln.aws.iam import create_deploy_user
from kiln.aws.images import describe_ami
from kiln.aws.policy import enforceable_documents
from kiln.aws.refresh import refresh_fleet
from kiln.aws.session import Aws, connect
from kiln.aws.ssh import SshTarget
from kiln.aws.targets import probe
from kiln.config import AwsSettings
from kiln.errors import DeployError
from kiln.home import Home
from kiln.platform import Report
from kilntest import Kiln

pytestmark = pytest.mark.aws


def _base(admin: Aws, source_ami: str, name: str) -> tuple[str, str]:
    """A "distribution" base AMI named ``name``: its id and creation date."""
    source = admin.ec2.run_instances(ImageId=source_ami, MinCount=1, MaxCount=1)
    instance = source["Instances"][0]["InstanceId"]
    ami = admin.ec2.create_image(InstanceId=instance, Name=name)["ImageId"]
    admin.ec2.terminate_instances(InstanceIds=[instance])
    created = admin.ec2.describe_images(ImageIds=[ami])["Images"][0]["CreationDate"]
    return str(ami), str(created)


def test_a_newer_base_is_baked_and_rolled_out_an_unchanged_one_is_not(
    world: World,
    home: Home,
    tmp_path: Path,
    good_app: str,
    ssh_server: SshServer,
    deploy_moto: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = create_deploy_user(world.admin, "refresher", documents=enforceable_documents())
    assert user.access_key_id and user.secret_access_key
    world.deploy = connect(
        AwsSettings(region="eu-west-1", endpoint_url=deploy_moto),
        access_key_id=user.access_key_id,
        secret_access_key=user.secret_access_key,
    )
    pattern = f"debian-12-{world.app}"
    old_base, old_created = _base(world.admin, world.base_ami, f"{pattern}-20260101")
    scratch = tmp_path / "builder-root"
    scratch.mkdir()

    def loopback(builder: Builder) -> SshTarget:
        ssh_server.authorize(builder.key)
        return SshTarget("127.0.0.1", ssh_server.port, "admin", builder.key, False, str(scratch))

    def healthy(_instance: str) -> bool:
        return probe(good_app, None, 2.0)

    app = tmp_path / "app"
    extra = (
        f'base_image = "{pattern}-*"\nbase_image_owner = "self"\n'
        f'subnet_id = "{world.subnets[0]}"\n'
        'ssh_cidr = "127.0.0.1/32"\nssh_timeout = "20s"\nimage_timeout = "20s"\n'
    )
    loaded = world.config(app, extra_aws=extra)
    (app / "app.py").write_text("print('v1')\n")
    first = bake_ami(
        loaded, home, aws=world.deploy, ssh_target=loopback, boot_test=True, checker=healthy
    )
    world.addresses[first.image] = good_app
    baked = describe_ami(world.admin, first.ami)
    assert baked is not None
    # what the AMI was built from: its base, the base's date, the builder's package count
    assert baked.tags["kiln:base-ami"] == old_base
    assert baked.tags["kiln:base-created"] == old_created
    assert int(baked.tags["kiln:packages"]) > 20  # this host's dpkg-query, over SSH

    fleet = open_deployments(home, loaded, aws=world.deploy, resolve=world.resolve)
    assert fleet.deploy(first.image).ok
    running = f"{first.image}@{first.ami}"

    def refresh() -> Report:
        return refresh_fleet(
            loaded, home, aws=world.deploy, ssh_target=loopback, checker=healthy,
            resolve=world.resolve,
        )  # fmt: skip

    same = refresh()
    assert same.result is None and not same.data["baked"], same.data
    assert same.lines[0].startswith(f"nothing to refresh: {world.app} runs {first.ami}")
    assert len(fleet.history()) == 1

    time.sleep(1.1)  # creation dates have one-second resolution
    new_base, _ = _base(world.admin, world.base_ami, f"{pattern}-20260201")
    patched = refresh()
    result = patched.result
    assert result is not None and result.ok, result
    image, ami = split_release(patched.data["to"])
    assert image == first.image and ami != first.ami  # the same app on a new machine image
    assert patched.data["base_ami"] == new_base and patched.data["baked"]
    served = {
        i["ImageId"]
        for r in world.admin.ec2.describe_instances(InstanceIds=sorted(world.targets()))[
            "Reservations"
        ]
        for i in r["Instances"]
    }
    assert served == {ami}
    latest = fleet.history()[0]
    assert (latest["kind"], latest["from"], latest["to"]) == ("deploy", running, patched.data["to"])

    # ages: the serving AMI's and its base's, and the warning once over max_image_age
    status = fleet.status()
    assert status["ami"] == ami and status["image_age"] >= 0 and status["base_age"] >= 0
    assert not status["image_due"] and "warnings" not in status
    fleet.max_image_age = 0.001
    assert fleet.status()["image_due"]
    assert "'kiln refresh' is due" in fleet.status()["warnings"][0]

    # the command line: nothing changed since, so no builder and no deployment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", user.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", user.secret_access_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", deploy_moto)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    kiln = Kiln(loaded.root)
    quiet = json.loads(kiln("refresh", "--provider", "aws", "--json").stdout)
    assert quiet["deployment"] is None and quiet["to"] == patched.data["to"]
    assert len(fleet.history()) == 2
    shown = kiln("status", "--provider", "aws").stdout
    assert "image age" in shown and "its base image" in shown
    listed = json.loads(kiln("images", "--provider", "aws", "--json").stdout)
    newest = next(a for a in listed if a["ami"] == ami)
    assert newest["base_ami"] == new_base and newest["age"] >= 0 and newest["base_age"] >= 0
    assert newest["packages"] > 20
    # the package list itself, kept in SSM by the bake: this host's dpkg, as dpkg-query says
    aws_json = ("--json", "--provider", "aws")
    found = json.loads(kiln("image", "packages", ami, "--grep", "dpkg", *aws_json).stdout)
    versions = {p["name"]: p["version"] for p in found["packages"]}
    here = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "dpkg"], capture_output=True, text=True
    )
    assert versions["dpkg"] == here.stdout and found["total"] == newest["packages"]
    by_release = json.loads(kiln("image", "packages", patched.data["to"], *aws_json).stdout)
    assert by_release["ami"] == ami and by_release["total"] == found["total"]
    local = kiln("image", "packages", ami, ok=False)
    assert "kiln image packages is not available with --provider local" in local.stderr

    # it never ships new code: a checkout that bakes another image is refused
    (app / "app.py").write_text("print('v2')\n")
    refused = kiln("refresh", "--provider", "aws", ok=False)
    assert refused.exit_code == DeployError.exit_code
    assert "only re-bakes what runs" in refused.stderr and "Traceback" not in refused.stderr
