"""Fixtures: a moto server (real HTTP, real boto3), an SSH builder stand-in, an app."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from awskit import REGION, SOURCE_AMI, TargetFactory, write_app
from awsservers import SshServer, moto_server, reset_moto

from kiln.aws.builder import Builder
from kiln.aws.session import Aws, connect
from kiln.aws.ssh import SshTarget
from kiln.config import AwsSettings, LoadedConfig
from kiln.home import Home


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Fresh moto state and dummy admin credentials in the environment."""
    reset_moto(moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAADMINTESTING0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "admin-secret")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    return moto_url


@pytest.fixture(scope="session")
def enforced_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second moto server: the first 3 requests are free (to create an admin)."""
    with moto_server(tmp_path_factory.mktemp("moto-iam") / "moto.log", free_requests=3) as url:
        yield url


@pytest.fixture(scope="session")
def admin_keys(enforced_url: str) -> tuple[str, str]:
    bootstrap = connect(
        AwsSettings(region=REGION, endpoint_url=enforced_url),
        access_key_id="AKIABOOTSTRAP0000000",
        secret_access_key="bootstrap",
    )
    bootstrap.iam.create_user(UserName="admin")
    bootstrap.iam.put_user_policy(
        UserName="admin",
        PolicyName="admin",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    key = bootstrap.iam.create_access_key(UserName="admin")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture
def enforced(
    enforced_url: str, admin_keys: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> Aws:
    monkeypatch.setenv("AWS_ENDPOINT_URL", enforced_url)
    monkeypatch.setenv("AWS_REGION", REGION)
    return connect(AwsSettings(), access_key_id=admin_keys[0], secret_access_key=admin_keys[1])


@pytest.fixture
def aws(aws_env: str) -> Aws:
    return connect(AwsSettings())


@pytest.fixture
def base_ami(aws: Aws) -> str:
    """A Debian-like base image registered in moto, as an account would have."""
    reservation = aws.ec2.run_instances(ImageId=SOURCE_AMI, MinCount=1, MaxCount=1)
    source = reservation["Instances"][0]["InstanceId"]
    image = aws.ec2.create_image(InstanceId=source, Name="debian-12-amd64-20260101-1234")
    aws.ec2.terminate_instances(InstanceIds=[source])
    return image["ImageId"]


@pytest.fixture
def ssh_server() -> Iterator[SshServer]:
    server = SshServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    """A builder's filesystem: first-boot state that the installer must clear."""
    root = tmp_path / "builder-root"
    for path, text in {
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/ssh/ssh_host_ed25519_key": "secret host key\n",
        "var/lib/cloud/instances/i-builder/boot-finished": "done\n",
        "home/admin/.ssh/authorized_keys": "ssh-ed25519 AAAA temporary\n",
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


@pytest.fixture
def loopback_target(ssh_server: SshServer, scratch_root: Path) -> TargetFactory:
    """Point the bake's SSH step at the loopback server, installing into scratch_root."""

    def target(builder: Builder) -> SshTarget:
        ssh_server.authorize(builder.key)
        return SshTarget(
            host="127.0.0.1",
            port=ssh_server.port,
            username="admin",
            key=builder.key,
            sudo=False,
            root=str(scratch_root),
        )

    return target


@pytest.fixture
def app_factory(tmp_path: Path, base_ami: str) -> Callable[..., LoadedConfig]:
    def make(extra: str = "", version: str = "1", ssh_timeout: str = "20s") -> LoadedConfig:
        return write_app(
            tmp_path / "app",
            extra=f'base_image = "{base_ami}"\n{extra}',
            version=version,
            ssh_timeout=ssh_timeout,
        )

    return make


@pytest.fixture
def home() -> Home:
    return Home.resolve(os.environ["KILN_HOME"]).ensure()
