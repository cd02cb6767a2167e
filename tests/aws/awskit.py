"""The AWS tests' kit: constants and helpers that test modules import.

Test modules import these from here, never from ``conftest`` (a module name
every test directory has; which one ``import conftest`` finds depends on what
pytest collected last).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.aws.builder import Builder
from kiln.aws.session import Aws
from kiln.aws.ssh import SshTarget
from kiln.config import LoadedConfig, load_config

REGION = "eu-west-1"
# One of the public AMIs moto ships in every region (describing them all takes a second).
SOURCE_AMI = "ami-03cf127a"

TargetFactory = Callable[[Builder], SshTarget]


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
