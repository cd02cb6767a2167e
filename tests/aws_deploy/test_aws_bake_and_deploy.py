"""The whole AWS story with one deploy user holding the complete policy: bake, then deploy.

The bake is part 1's, for real (its SSH step against a loopback SSH server
standing in for the builder); the deploy, rollback and history are part 2's.
Both run with the keys of a user whose policy is everything ``kiln aws
policy`` prints, on the IAM-enforcing moto server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aws.awsservers import SshServer
from aws_deploy.awsworld import World
from kiln.aws.ami import bake_ami
from kiln.aws.builder import Builder
from kiln.aws.deployments import open_deployments
from kiln.aws.iam import create_deploy_user
from kiln.aws.policy import enforceable_documents
from kiln.aws.session import connect
from kiln.aws.ssh import SshTarget
from kiln.aws.targets import probe
from kiln.config import AwsSettings
from kiln.home import Home

pytestmark = pytest.mark.aws


def test_baked_amis_deploy_roll_back_and_show_in_history(
    world: World,
    home: Home,
    tmp_path: Path,
    good_app: str,
    ssh_server: SshServer,
    deploy_moto: str,
) -> None:
    user = create_deploy_user(world.admin, "everything", documents=enforceable_documents())
    assert user.access_key_id and user.secret_access_key
    world.deploy = connect(
        AwsSettings(region="eu-west-1", endpoint_url=deploy_moto),
        access_key_id=user.access_key_id,
        secret_access_key=user.secret_access_key,
    )
    source = world.admin.ec2.run_instances(ImageId=world.base_ami, MinCount=1, MaxCount=1)
    base = world.admin.ec2.create_image(
        InstanceId=source["Instances"][0]["InstanceId"], Name=f"debian-12-{world.app}"
    )["ImageId"]
    scratch = tmp_path / "builder-root"
    scratch.mkdir()

    def loopback(builder: Builder) -> SshTarget:
        ssh_server.authorize(builder.key)
        return SshTarget("127.0.0.1", ssh_server.port, "admin", builder.key, False, str(scratch))

    app = tmp_path / "app"
    extra = (
        f'base_image = "{base}"\nsubnet_id = "{world.subnets[0]}"\n'
        'ssh_cidr = "127.0.0.1/32"\nssh_timeout = "20s"\nimage_timeout = "20s"\n'
    )
    baked = []
    for version in ("1", "2"):
        loaded = world.config(app, extra_aws=extra)
        (app / "app.py").write_text(f"print('v{version}')\n")
        result = bake_ami(
            loaded, home, aws=world.deploy, ssh_target=loopback, boot_test=True,
            checker=lambda _instance: probe(good_app, None, 2.0),
        )  # fmt: skip
        assert not result.reused and result.verified
        world.addresses[result.image] = good_app
        baked.append(result)

    fleet = open_deployments(home, loaded, aws=world.deploy, resolve=world.resolve)
    assert fleet.deploy(baked[0].image).ok
    assert fleet.deploy(baked[1].image).ok
    amis = {i["ImageId"] for r in world.admin.ec2.describe_instances(
        InstanceIds=sorted(world.targets())
    )["Reservations"] for i in r["Instances"]}  # fmt: skip
    assert amis == {baked[1].ami}
    back = fleet.rollback()
    releases = [f"{r.image}@{r.ami}" for r in baked]  # an image on one AMI
    assert back.ok and back.to_image == releases[0], back.message
    assert [(h["kind"], h["to"]) for h in fleet.history()] == [
        ("rollback", releases[0]),
        ("deploy", releases[1]),
        ("deploy", releases[0]),
    ]
