"""Fixtures: a moto server (real HTTP, real boto3), an SSH builder stand-in, an app."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from awsservers import SshServer, moto_server, reset_moto

from kiln.aws.builder import Builder
from kiln.aws.session import Aws, connect
from kiln.aws.ssh import SshTarget
from kiln.config import AwsSettings, LoadedConfig, load_config
from kiln.home import Home

REGION = "eu-west-1"
# One of the public AMIs moto ships in every region (describing them all takes a second).
SOURCE_AMI = "ami-03cf127a"


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


TargetFactory = Callable[[Builder], SshTarget]


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


def write_app(
    directory: Path, *, extra: str = "", version: str = "1", ssh_timeout: str = "20s"
) -> LoadedConfig:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(f"print('acme v{version}')\n")
    (directory / "static").mkdir(exist_ok=True)
    (directory / "static" / "index.html").write_text("<h1>acme</h1>\n")
    (directory / "kiln.toml").write_text(
        f"""
[app]
name = "acme"
run = "python3 app.py --port $PORT"

[env]
GREETING = 'say "hi"'

[secrets]
DB_PASSWORD = "env:DB_PASSWORD"
API_TOKEN = "ssm:/shared/api-token"

[provider.aws]
ssh_cidr = "127.0.0.1/32"
ssh_timeout = "{ssh_timeout}"
image_timeout = "20s"
{extra}
""",
        encoding="utf-8",
    )
    return load_config(directory / "kiln.toml")


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


def leftovers(aws: Aws) -> dict[str, list[Any]]:
    """Every temporary bake resource still alive: must be empty after any bake."""
    instances = [
        i["InstanceId"]
        for r in aws.ec2.describe_instances(
            Filters=[
                {"Name": "tag-key", "Values": ["kiln:build-id"]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )["Reservations"]
        for i in r["Instances"]
    ]
    groups = [
        g["GroupId"]
        for g in aws.ec2.describe_security_groups(
            Filters=[{"Name": "tag-key", "Values": ["kiln:build-id"]}]
        )["SecurityGroups"]
    ]
    pairs = [
        k["KeyName"]
        for k in aws.ec2.describe_key_pairs(
            Filters=[{"Name": "tag-key", "Values": ["kiln:build-id"]}]
        )["KeyPairs"]
    ]
    return {
        k: v for k, v in {"instances": instances, "groups": groups, "key_pairs": pairs}.items() if v
    }


def fail_call(aws: Aws, operation: str, code: str, message: str, *, times: int = 0) -> None:
    """Make AWS answer ``operation`` with an error, at the client's edge (no request sent).

    ``times`` > 0 fails only that many calls, then lets them through.
    """
    failed: list[int] = []

    def answer(**_kwargs: Any) -> tuple[Any, dict[str, Any]] | None:
        if times and len(failed) >= times:
            return None
        failed.append(1)
        http = type("Http", (), {"status_code": 400, "headers": {}, "text": ""})()
        parsed = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return http, parsed

    aws.ec2.meta.events.register(f"before-call.ec2.{operation}", answer)
