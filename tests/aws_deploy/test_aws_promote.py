"""Promotion on AWS (IAM-enforcing moto server): the AMI is reused or copied, never rebaked.

Each environment reaches AWS through its own named profile ([provider.aws]
profile): the tests give staging and production profiles with different keys
and regions and check which key and region each call went out with. Every call
the promotion makes is recorded and must be in the policy's promote statements.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aws_deploy.awsworld import World
from kiln.aws import platform as aws_platform
from kiln.aws.ami import env_digest
from kiln.aws.images import CODE_TAG, ENV_TAG, RECIPE_TAG
from kiln.aws.install import recipe
from kiln.aws.platform import AwsPlatform
from kiln.aws.policy import PROMOTE_PURPOSES, actions
from kiln.aws.session import Aws, connect
from kiln.config import LoadedConfig, load_config
from kiln.errors import AwsError, PromotionRefused
from kiln.home import Home
from kilntest import Kiln

pytestmark = pytest.mark.aws

IMAGE = "img-promote00001"
CODE = "sha256:" + "c0de" * 16


def _profiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: dict[str, tuple[str, str, str]]
) -> None:
    """~/.aws/config with one profile per environment: (region, key id, secret)."""
    text = "".join(
        f"[profile {name}]\nregion = {region}\naws_access_key_id = {key}\n"
        f"aws_secret_access_key = {secret}\n\n"
        for name, (region, key, secret) in keys.items()
    )
    (tmp_path / "aws-config").write_text(text)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTTHISONE000000")  # a profile wins over it
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-this-one")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")


def _config(world: World, root: Path, endpoint: str, production_env: str = "") -> LoadedConfig:
    world.config(root, extra_aws=f'endpoint_url = "{endpoint}"')
    with (root / "kiln.toml").open("a") as f:
        f.write(
            "\n[environments.staging]\nprovider.aws = { profile = 'kiln-staging' }\n"
            "\n[environments.production]\nrequire = 'staging'\n"
            f"provider.aws = {{ profile = 'kiln-production' }}\n{production_env}"
        )
    return load_config(root / "kiln.toml")


def _platform(home: Home, loaded: LoadedConfig, environment: str) -> AwsPlatform:
    selected = LoadedConfig(config=loaded.config.for_environment(environment), path=loaded.path)
    return AwsPlatform(home, lambda: selected)


def _staging_ami(world: World, loaded: LoadedConfig) -> str:
    """The AMI staging's bake made: kiln's tags, as kiln.aws.ami tags them."""
    ami = world.ami(IMAGE)
    staging = loaded.config.for_environment("staging")
    settings = staging.provider.aws
    assert settings is not None
    world.admin.ec2.create_tags(
        Resources=[ami],
        Tags=[
            {"Key": CODE_TAG, "Value": CODE},
            {"Key": ENV_TAG, "Value": env_digest(dict(staging.env))},
            {"Key": RECIPE_TAG, "Value": recipe(staging, settings)},
        ],
    )
    return ami


def _record(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """(call, region, access key) of every AWS call the AWS platform makes."""
    calls: list[tuple[str, str, str]] = []

    def recording(settings: Any = None, **kwargs: Any) -> Aws:
        aws = connect(settings, **kwargs)
        key = aws.session.get_credentials().access_key

        def seen(model: Any, **_kw: Any) -> None:
            calls.append((f"{model.service_model.signing_name}:{model.name}", aws.region, key))

        aws.session.events.register("before-call", seen)
        return aws

    monkeypatch.setattr(aws_platform, "connect", recording)
    return calls


def _second_key(world: World, deploy_keys: tuple[str, str]) -> tuple[str, str]:
    """Another access key of the deploy user: production's profile has its own."""
    iam = world.admin.iam
    (user,) = [
        u["UserName"]
        for u in iam.list_users()["Users"]
        if any(
            k["AccessKeyId"] == deploy_keys[0]
            for k in iam.list_access_keys(UserName=u["UserName"])["AccessKeyMetadata"]
        )
    ]
    keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    for old in keys:  # IAM allows two keys a user: keep the session's own
        if old["AccessKeyId"] != deploy_keys[0]:
            iam.delete_access_key(UserName=user, AccessKeyId=old["AccessKeyId"])
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def test_same_account_and_region_reuses_the_ami(
    world: World,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    deploy_keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production_key = _second_key(world, deploy_keys)
    _profiles(
        tmp_path,
        monkeypatch,
        {
            "kiln-staging": ("eu-west-1", *deploy_keys),
            "kiln-production": ("eu-west-1", *production_key),
        },
    )
    loaded = _config(world, tmp_path / "app", deploy_moto)
    ami = _staging_ami(world, loaded)
    before = world.admin.ec2.describe_images(Owners=["self"])["Images"]
    calls = _record(monkeypatch)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")

    assert production.promote_image(IMAGE, staging, lambda _line: None) == IMAGE
    assert production.code_of(IMAGE) == CODE  # from the AMI's tags: not in this store
    assert len(world.admin.ec2.describe_images(Owners=["self"])["Images"]) == len(before)
    assert not any(call == "ec2:CopyImage" for call, _region, _key in calls)
    assert {(region, key) for _call, region, key in calls} == {
        ("eu-west-1", deploy_keys[0]),
        ("eu-west-1", production_key[0]),
    }
    assert ami in {i["ImageId"] for i in before}


def test_another_region_gets_a_copy_through_its_own_profile(
    world: World,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    deploy_keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    production_key = _second_key(world, deploy_keys)
    _profiles(
        tmp_path,
        monkeypatch,
        {
            "kiln-staging": ("eu-west-1", *deploy_keys),
            "kiln-production": ("us-west-2", *production_key),
        },
    )
    loaded = _config(world, tmp_path / "app", deploy_moto)
    ami = _staging_ami(world, loaded)
    calls = _record(monkeypatch)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    said: list[str] = []

    assert production.promote_image(IMAGE, staging, said.append) == IMAGE
    assert f"copying {ami} from eu-west-1 to us-west-2" in said
    west = connect(production.settings())
    assert west.region == "us-west-2"
    copies = west.ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag:kiln:image", "Values": [IMAGE]}]
    )["Images"]
    assert len(copies) == 1 and copies[0]["ImageId"] != ami
    copied = {t["Key"]: t["Value"] for t in copies[0]["Tags"]}
    assert copied[CODE_TAG] == CODE and copied["kiln:verified"] == "stand-in"
    # the copy was made by production's key, in production's region; staging's reads by its own
    made = {(call, region, key) for call, region, key in calls}
    assert ("ec2:CopyImage", "us-west-2", production_key[0]) in made
    # the tags ride on CopyImage's TagSpecifications (as on AWS; tests/aws/motopatched.py)
    assert not {c for c in made if c[0] == "ec2:CreateTags"}
    assert {key for _call, region, key in calls if region == "eu-west-1"} == {deploy_keys[0]}
    # every call was allowed by the deploy user's enforced policy, and is a promote action
    promote = actions(PROMOTE_PURPOSES) | {"sts:GetCallerIdentity"}  # needs no permission
    assert {call for call, _region, _key in calls} <= promote
    assert {call for call, _r, _k in calls} >= {"ec2:CopyImage", "ec2:DescribeImages"}

    # a second promotion finds the copy: nothing is copied again
    calls.clear()
    assert production.promote_image(IMAGE, staging, said.append) == IMAGE
    assert not any(call == "ec2:CopyImage" for call, _region, _key in calls)

    # the command line reaches production's region through its profile too
    listed = json.loads(
        Kiln(loaded.root)("images", "--provider", "aws", "--env", "production", "--json").stdout
    )
    assert [a["ami"] for a in listed] == [copies[0]["ImageId"]]
    assert listed[0]["code_digest"] == CODE


def test_an_env_layer_that_differs_is_refused_on_aws(
    world: World,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    deploy_keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _profiles(
        tmp_path,
        monkeypatch,
        {
            "kiln-staging": ("eu-west-1", *deploy_keys),
            "kiln-production": ("eu-west-1", *deploy_keys),
        },
    )
    loaded = _config(world, tmp_path / "app", deploy_moto, "env = { MODE = 'live' }\n")
    _staging_ami(world, loaded)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    with pytest.raises(PromotionRefused, match="the target's differs"):
        production.promote_image(IMAGE, staging, lambda _line: None)


def test_a_missing_profile_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _profiles(tmp_path, monkeypatch, {})
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "kiln.toml").write_text(
        "[app]\nname = 'shop'\nrun = 'python3 app.py'\n[provider.aws]\nprofile = 'nope'\n"
    )
    result = Kiln(tmp_path / "app")("images", "--provider", "aws", ok=False)
    assert "no AWS profile 'nope' ([provider.aws] profile)" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_copy_that_comes_out_untagged_is_one_line_not_a_late_create_tags(
    world: World,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    deploy_keys: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An endpoint that ignores CopyImage's tags: kiln stops, and never tags afterwards.

    Tagging an existing AMI would need ``ec2:CreateTags`` without
    ``ec2:CreateAction``, which the deploy policy does not grant: on AWS that
    fallback would have been denied after the copy was made.
    """
    _profiles(
        tmp_path,
        monkeypatch,
        {
            "kiln-staging": ("eu-west-1", *deploy_keys),
            "kiln-production": ("eu-central-1", *deploy_keys),  # no copy there yet
        },
    )
    loaded = _config(world, tmp_path / "app", deploy_moto)
    _staging_ami(world, loaded)
    calls: list[str] = []

    def untagging(settings: Any = None, **kwargs: Any) -> Aws:
        aws = connect(settings, **kwargs)

        def drop_tags(params: dict[str, Any], **_kw: Any) -> None:
            params.pop("TagSpecifications", None)

        def seen(model: Any, **_kw: Any) -> None:
            calls.append(f"{model.service_model.signing_name}:{model.name}")

        aws.session.events.register("before-parameter-build.ec2.CopyImage", drop_tags)
        aws.session.events.register("before-call", seen)
        return aws

    monkeypatch.setattr(aws_platform, "connect", untagging)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    with pytest.raises(AwsError, match="came out of CopyImage without kiln's tags") as raised:
        production.promote_image(IMAGE, staging, lambda _line: None)
    assert "ec2:CopyImage" in calls and "ec2:CreateTags" not in calls
    (copy,) = [
        i["ImageId"]
        for i in connect(production.settings()).ec2.describe_images(Owners=["self"])["Images"]
        if "copied from" in i.get("Description", "")
    ]
    assert f"deregister {copy} in eu-central-1" in (raised.value.hint or "")
