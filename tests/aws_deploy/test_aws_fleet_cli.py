"""``kiln aws history|drift`` read the fleet from AWS, with the deploy user's keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aws_deploy.awsworld import World, image_of
from kiln.aws.deployments import open_deployments
from kiln.aws.provider import AwsProvider
from kiln.home import Home
from kiln.providers.protocol import Provider
from kiln.providers.registry import open_provider
from kilntest import Kiln

pytestmark = pytest.mark.aws


def test_history_and_drift_from_the_command_line(
    world: World,
    home: Home,
    tmp_path: Path,
    good_app: str,
    deploy_moto: str,
    deploy_keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world.ami("img-cli000000001")
    world.addresses["img-cli000000001"] = good_app
    loaded = world.config(tmp_path / "app")
    fleet = open_deployments(home, loaded, aws=world.deploy, resolve=world.resolve)
    assert fleet.deploy("img-cli000000001", reason="first release").ok

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", deploy_keys[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", deploy_keys[1])
    monkeypatch.setenv("AWS_ENDPOINT_URL", deploy_moto)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    kiln = Kiln(loaded.root)

    history = json.loads(kiln("aws", "history", "--json").stdout)
    assert [(image_of(h["to"]), h["outcome"], h["kind"]) for h in history] == [
        ("img-cli000000001", "succeeded", "deploy")
    ]
    table = kiln("aws", "history").stdout
    assert "succeeded" in table and history[0]["id"][:6] in table

    assert json.loads(kiln("aws", "drift", "--json").stdout)["clean"] is True
    stranger = world.admin.ec2.run_instances(ImageId=world.base_ami, MinCount=1, MaxCount=1)
    stranger_id = stranger["Instances"][0]["InstanceId"]
    world.admin.client("elbv2").register_targets(
        TargetGroupArn=world.target_group, Targets=[{"Id": stranger_id}]
    )
    drifted = kiln("aws", "drift", ok=False)
    assert drifted.exit_code == 6 and stranger_id in drifted.stdout
    assert deploy_keys[0] not in drifted.stdout + drifted.stderr


def test_the_provider_registry_opens_the_aws_provider(
    world: World, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    loaded = world.config(tmp_path / "app")
    provider = open_provider("aws", home, loaded)
    assert isinstance(provider, AwsProvider) and isinstance(provider, Provider)
    assert provider.name == "aws" and provider.stats(world.app) == {}
