"""Fixtures: an IAM-enforced moto server, the deploy user's keys, a world per test."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from aws.awsservers import SshServer, moto_server
from aws_deploy.awsworld import World, app_process, build_world
from aws_deploy.runners import Runners
from kiln.aws.iam import create_deploy_user
from kiln.aws.policy import enforceable_documents
from kiln.aws.session import Aws, connect
from kiln.config import AwsSettings
from kiln.home import Home

REGION = "eu-west-1"


@pytest.fixture(scope="session")
def deploy_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server enforcing IAM after 3 free requests (which create the admin)."""
    log = tmp_path_factory.mktemp("moto-deploy") / "moto.log"
    with moto_server(log, free_requests=3) as url:
        yield url


def _connect(url: str, key: str, secret: str) -> Aws:
    return connect(
        AwsSettings(region=REGION, endpoint_url=url), access_key_id=key, secret_access_key=secret
    )


@pytest.fixture(scope="session")
def admin(deploy_moto: str) -> Aws:
    bootstrap = _connect(deploy_moto, "AKIABOOTSTRAP0000000", "bootstrap")
    bootstrap.iam.create_user(UserName="admin")
    everything: dict[str, Any] = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    bootstrap.iam.put_user_policy(
        UserName="admin", PolicyName="admin", PolicyDocument=json.dumps(everything)
    )
    key = bootstrap.iam.create_access_key(UserName="admin")["AccessKey"]
    return _connect(deploy_moto, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="session")
def deploy_keys(admin: Aws) -> tuple[str, str]:
    """The deploy user holds only the deploy and scaling statements (moto's rendering)."""
    user = create_deploy_user(
        admin,
        "deploys",
        parts=["deploy", "scaling"],
        documents=enforceable_documents(["deploy", "scaling"]),
    )
    assert user.access_key_id and user.secret_access_key
    return user.access_key_id, user.secret_access_key


@pytest.fixture(scope="session")
def base_ami(admin: Aws) -> str:
    return str(admin.ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"])


@pytest.fixture(scope="session")
def good_app() -> Iterator[str]:
    with app_process(200) as address:
        yield address


@pytest.fixture(scope="session")
def bad_app() -> Iterator[str]:
    with app_process(500) as address:
        yield address


@pytest.fixture
def world(deploy_moto: str, admin: Aws, deploy_keys: tuple[str, str], base_ami: str) -> World:
    """A fresh app, ALB and target group; kiln talks with the deploy user's keys."""
    deploy = _connect(deploy_moto, *deploy_keys)
    return build_world(admin, deploy, base_ami)


@pytest.fixture
def runners(world: World, deploy_moto: str) -> Iterator[Runners]:
    creds = world.admin.session.get_credentials()
    assert creds is not None
    world.admin.client("ssm").put_parameter(
        Name=f"/{world.app}/DB_PASSWORD", Value="s3cret", Type="SecureString"
    )
    keys = (creds.access_key, creds.secret_key)
    with Runners(world.admin, world.app, deploy_moto, keys) as playing:
        yield playing


@pytest.fixture
def home() -> Home:
    return Home.resolve(os.environ["KILN_HOME"]).ensure()


@pytest.fixture
def ssh_server() -> Iterator[SshServer]:
    """A loopback SSH server standing in for AMI builders."""
    server = SshServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
