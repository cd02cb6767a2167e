"""An AMI that has not passed a boot test does not deploy unless the caller says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from aws_deploy.awsworld import World
from kiln.aws.deployments import open_deployments
from kiln.aws.groups import list_groups
from kiln.errors import UnverifiedImage
from kiln.home import Home
from kilntest import Kiln

pytestmark = pytest.mark.aws


def test_unverified_ami_is_refused_unless_allowed(
    world: World,
    home: Home,
    tmp_path: Path,
    good_app: str,
    deploy_moto: str,
    deploy_keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = "img-unverified01"
    ami = world.ami(image, verified=False)
    world.addresses[image] = good_app
    loaded = world.config(tmp_path / "app")

    fleet = open_deployments(home, loaded, aws=world.deploy, resolve=world.resolve)
    with pytest.raises(UnverifiedImage, match=f"{ami} \\(image {image}\\) has not passed"):
        fleet.deploy(image)
    assert list_groups(world.admin, world.app, None) == []  # refused before launching

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", deploy_keys[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", deploy_keys[1])
    monkeypatch.setenv("AWS_ENDPOINT_URL", deploy_moto)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    refused = Kiln(loaded.root)("deploy", "--provider", "aws", "--image", image, ok=False)
    assert refused.exit_code == UnverifiedImage.exit_code
    assert "has not passed a boot test" in refused.stderr
    assert "--boot-test" in refused.stderr and "--allow-unverified" in refused.stderr

    allowed = open_deployments(
        home, loaded, aws=world.deploy, resolve=world.resolve, allow_unverified=True
    )
    assert allowed.deploy(image).ok
