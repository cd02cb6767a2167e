"""Promotion on AWS (IAM-enforcing moto server): the AMI is reused or copied, never rebaked.

Each environment reaches AWS through its own named profile ([provider.aws]
profile): the tests give staging and production profiles with different keys
and regions and check which key and region each call went out with. Every call
the promotion makes is recorded and must be in the policy's promote statements.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

import kiln.aws.ami
import kiln.aws.boottest
import kiln.aws.provider
import kiln.aws.targets
from aws.awsservers import SshServer
from aws_deploy.awsworld import World, build_world
from kiln.aws import platform as aws_platform
from kiln.aws.ami import env_digest
from kiln.aws.builder import Builder
from kiln.aws.deployments import open_deployments
from kiln.aws.iam import create_deploy_user
from kiln.aws.images import (
    CODE_TAG,
    ENV_TAG,
    PROMOTED_FROM_TAG,
    RECIPE_TAG,
    SOURCE_AMI_TAG,
    Ami,
)
from kiln.aws.install import recipe
from kiln.aws.platform import AwsPlatform
from kiln.aws.policy import (
    PARTS,
    PROMOTE_PURPOSES,
    actions,
    enforceable_documents,
    options,
    policy_document,
)
from kiln.aws.promote import check_shareable, promote_ami
from kiln.aws.relayer import derived_image
from kiln.aws.session import Aws, connect
from kiln.aws.ssh import SshTarget
from kiln.aws.targets import probe
from kiln.config import AwsSettings, LoadedConfig, load_config
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


READ_ONLY = ("Describe", "Get", "List")


def _record_everything(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """:func:`_record`, and the deployment engine's calls too (its own sessions)."""
    calls = _record(monkeypatch)
    monkeypatch.setattr(kiln.aws.provider, "connect", aws_platform.connect)
    return calls


def _writes(calls: list[tuple[str, str, str]]) -> set[str]:
    return {c for c, _r, _k in calls if not c.split(":")[1].startswith(READ_ONLY)}


def _amis_of(aws: Aws, image: str) -> list[Any]:
    return list(
        aws.ec2.describe_images(
            Owners=["self"], Filters=[{"Name": "tag:kiln:image", "Values": [image]}]
        )["Images"]
    )


def _serve_in_staging(
    world: World, home: Home, loaded: LoadedConfig, app: str, mp: pytest.MonkeyPatch
) -> None:
    """Staging's fleet serves IMAGE healthily: what 'kiln promote staging ...' reads (the
    command cannot reach moto's instances, so it trusts ELB's target health, as it does
    wherever its runner cannot reach an instance)."""
    mp.setattr(kiln.aws.targets, "private_address", lambda _target: None)
    world.addresses[IMAGE] = app
    config = LoadedConfig(config=loaded.config.for_environment("staging"), path=loaded.path)
    fleet = open_deployments(home, config, aws=world.deploy, resolve=world.resolve)
    assert fleet.deploy(IMAGE).ok


def test_a_dry_run_promotion_into_another_region_copies_nothing(
    world: World,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    deploy_keys: tuple[str, str],
    good_app: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """'kiln promote --dry-run' says it would copy, makes only read-only calls; the real
    promotion then copies (issue #20: the dry run used to copy)."""
    production_key = _second_key(world, deploy_keys)
    _profiles(
        tmp_path,
        monkeypatch,
        {
            "kiln-staging": ("eu-west-1", *deploy_keys),
            "kiln-production": ("ca-central-1", *production_key),  # no copy there yet
        },
    )
    loaded = _config(world, tmp_path / "app", deploy_moto)
    ami = _staging_ami(world, loaded)
    _serve_in_staging(world, home, loaded, good_app, monkeypatch)
    calls = _record_everything(monkeypatch)
    kiln = Kiln(loaded.root)
    promote = ("promote", "staging", "production", "--provider", "aws", "--dry-run")

    shown = json.loads(kiln(*promote, "--json").stdout)
    assert shown["promoted"] == shown["image"] == IMAGE
    assert [(a["action"], a["ami"], a["region"]) for a in shown["actions"]] == [
        ("copy", ami, "ca-central-1")
    ]
    assert shown["plan"] is None  # the AMI is not in ca-central-1 yet: nothing to plan against
    text = kiln(*promote)
    assert f"would copy {ami} from eu-west-1 to ca-central-1" in text.stderr
    assert "the deployment plan is made once these have run" in text.stdout
    assert {c for c, _r, _k in calls} >= {"ec2:DescribeImages", "sts:GetCallerIdentity"}
    assert _writes(calls) == set()
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    central = connect(production.settings())
    assert central.ec2.describe_images(Owners=["self"])["Images"] == []

    # the promotion itself copies what the dry run said, and a dry run then reuses the copy
    assert production.promote_image(IMAGE, staging, lambda _line: None) == IMAGE
    (copy,) = central.ec2.describe_images(Owners=["self"])["Images"]
    again = production.plan_promotion(IMAGE, staging)
    assert again.ready and [(a["action"], a["ami"]) for a in again.actions] == [
        ("reuse", copy["ImageId"])
    ]


def test_a_recipe_that_differs_is_refused_on_aws(
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
    """Another secret source or port changes the unit: that is a bake, not a promotion.

    (A different [env] alone is derived: see the relayer test below.)"""
    secrets = "env = { MODE = 'live' }\nsecrets = { STRIPE = 'env:STRIPE_LIVE' }\n"
    loaded = _config(world, tmp_path / "app", deploy_moto, secrets)
    _staging_ami(world, loaded)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    with pytest.raises(PromotionRefused, match="another recipe"):
        production.promote_image(IMAGE, staging, lambda _line: None)
    with pytest.raises(PromotionRefused, match="the target's differs"):  # no relayer: refused
        promote_ami(
            connect(staging.settings()),
            connect(production.settings()),
            IMAGE,
            env={"MODE": "live"},
            recipe=recipe(staging.loaded.config, staging.settings()),
            timeout=5,
        )


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


# -- another account: staging in account A, production in account B ----------------


@dataclass
class Accounts:
    """Staging's world in the default account A, production's in a member account B."""

    staging: World
    production: World
    staging_keys: tuple[str, str]  # A's deploy user: deploy, scaling and publish policies
    production_keys: tuple[str, str]  # B's deploy user: deploy and scaling
    b: str  # B's account id


def _member_account(admin: Aws) -> Aws:
    """A new account of A's organisation, reached as AWS does: its access role, assumed."""
    orgs = admin.client("organizations")
    try:
        orgs.describe_organization()
    except orgs.exceptions.AWSOrganizationsNotInUseException:
        orgs.create_organization(FeatureSet="ALL")
    status = orgs.create_account(Email="production@example.com", AccountName="production")
    account = status["CreateAccountStatus"]["AccountId"]
    role = f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole"
    creds = admin.sts.assume_role(RoleArn=role, RoleSessionName="kiln-test")["Credentials"]
    session = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    return Aws(session=session, region=admin.region, endpoint_url=admin.endpoint_url)


def _user(admin: Aws, team: str, parts: list[str]) -> tuple[str, str]:
    user = create_deploy_user(admin, team, parts=parts, documents=enforceable_documents(parts))
    assert user.access_key_id and user.secret_access_key
    return user.access_key_id, user.secret_access_key


@pytest.fixture
def accounts(world: World, deploy_moto: str) -> Accounts:
    admin_b = _member_account(world.admin)
    b = str(admin_b.sts.get_caller_identity()["Account"])
    assert b != world.admin.sts.get_caller_identity()["Account"]
    staging_keys = _user(world.admin, f"{world.app}-staging", ["deploy", "scaling", "publish"])
    production_keys = _user(admin_b, "production", ["deploy", "scaling"])
    deploy_b = connect(
        AwsSettings(region=admin_b.region, endpoint_url=deploy_moto),
        access_key_id=production_keys[0],
        secret_access_key=production_keys[1],
    )
    base = str(admin_b.ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"])
    production = build_world(admin_b, deploy_b, base)
    return Accounts(world, production, staging_keys, production_keys, b)


def _two_accounts(
    accounts: Accounts,
    root: Path,
    endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    promote_to: str,
) -> LoadedConfig:
    """Production's world is the base file; staging's account, target group and subnets."""
    _profiles(
        tmp_path,
        monkeypatch,
        {
            "kiln-staging": ("eu-west-1", *accounts.staging_keys),
            "kiln-production": ("eu-west-1", *accounts.production_keys),
        },
    )
    a = accounts.staging
    accounts.production.config(root, extra_aws=f'endpoint_url = "{endpoint}"')
    subnets = ", ".join(f"'{s}'" for s in a.subnets[:2])
    with (root / "kiln.toml").open("a") as f:
        f.write(
            "\n[environments.staging]\nprovider.aws = { profile = 'kiln-staging', "
            f"target_group_arn = '{a.target_group}', subnet_ids = [{subnets}]{promote_to} }}\n"
            "\n[environments.production]\nrequire = 'staging'\n"
            "provider.aws = { profile = 'kiln-production' }\n"
        )
    return load_config(root / "kiln.toml")


def _scoped_actions(loaded: LoadedConfig, environment: str, parts: list[str]) -> set[str]:
    """The actions of the policies 'kiln aws policy --env ENV' renders for these parts."""
    settings = loaded.config.for_environment(environment).provider.aws
    assert settings is not None
    found: set[str] = set()
    for part in parts:
        document = policy_document(
            region="eu-west-1", account=None, purposes=PARTS[part], **options(settings)
        )
        found |= {a for s in document["Statement"] for a in s["Action"]}
    return found


def test_another_account_shares_then_copies_and_deploys_the_copy(
    accounts: Accounts,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    good_app: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = accounts.b
    loaded = _two_accounts(
        accounts, tmp_path / "app", deploy_moto, tmp_path, monkeypatch,
        promote_to=f", promote_to_accounts = ['{b}']",
    )  # fmt: skip
    origin = _staging_ami(accounts.staging, loaded)
    calls = _record(monkeypatch)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    said: list[str] = []

    # a dry run says what it would do, and shares, copies and launches nothing
    dry = production.plan_promotion(IMAGE, staging)
    assert dry.image == IMAGE and not dry.ready
    assert [(a["action"], a["ami"], a.get("account")) for a in dry.actions] == [
        ("share", origin, b),
        ("copy", origin, None),
    ]
    assert _writes(calls) == set()
    shared = accounts.staging.admin.ec2.describe_image_attribute(
        ImageId=origin, Attribute="launchPermission"
    )
    assert shared["LaunchPermissions"] == []
    assert accounts.production.deploy.ec2.describe_images(Owners=["self"])["Images"] == []
    calls.clear()

    assert production.promote_image(IMAGE, staging, said.append) == IMAGE
    assert f"{origin} and its 1 snapshot(s) shared with account {b}" in said
    # A granted B launch permission and createVolumePermission, with A's keys
    admin_a = accounts.staging.admin
    launch = admin_a.ec2.describe_image_attribute(ImageId=origin, Attribute="launchPermission")
    assert launch["LaunchPermissions"] == [{"UserId": b}]
    (snapshot,) = [
        m["Ebs"]["SnapshotId"]
        for m in admin_a.ec2.describe_images(ImageIds=[origin])["Images"][0]["BlockDeviceMappings"]
    ]
    volumes = admin_a.ec2.describe_snapshot_attribute(
        SnapshotId=snapshot, Attribute="createVolumePermission"
    )
    assert volumes["CreateVolumePermissions"] == [{"UserId": b}]
    # B owns a copy, tagged with the same digests, made with B's keys
    deploy_b = accounts.production.deploy
    (copy,) = deploy_b.ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag:kiln:image", "Values": [IMAGE]}]
    )["Images"]
    assert copy["OwnerId"] == b and copy["ImageId"] != origin
    copied = {t["Key"]: t["Value"] for t in copy["Tags"]}
    assert copied[CODE_TAG] == CODE and copied["kiln:digest"] == IMAGE * 2
    a_key, b_key = accounts.staging_keys[0], accounts.production_keys[0]
    assert {key for _c, _r, key in calls} == {a_key, b_key}
    by_a = {call for call, _r, key in calls if key == a_key}
    by_b = {call for call, _r, key in calls if key == b_key}
    assert {"ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute"} <= by_a
    assert "ec2:CopyImage" in by_b and "ec2:CopyImage" not in by_a
    # every call was allowed by its account's enforced policies, and is in the scoped ones
    free = {"sts:GetCallerIdentity"}
    assert by_a - free <= _scoped_actions(loaded, "staging", ["deploy", "publish"])
    assert by_b - free <= _scoped_actions(loaded, "production", ["deploy"])

    # production deploys its own copy, in B
    accounts.production.addresses[IMAGE] = good_app
    production_config = LoadedConfig(
        config=loaded.config.for_environment("production"), path=loaded.path
    )
    fleet = open_deployments(
        home, production_config, aws=deploy_b, resolve=accounts.production.resolve
    )
    result = fleet.deploy(IMAGE)
    assert result.ok, result.message
    serving = accounts.production.admin.ec2.describe_instances(
        InstanceIds=sorted(accounts.production.targets())
    )["Reservations"]
    assert {i["ImageId"] for r in serving for i in r["Instances"]} == {copy["ImageId"]}

    # a second promotion finds B's copy by its tags: nothing shared or copied again
    calls.clear()
    assert production.promote_image(IMAGE, staging, said.append) == IMAGE
    assert not {c for c, _r, _k in calls} & {"ec2:CopyImage", "ec2:ModifyImageAttribute"}

    # A's retention deletes its AMI: production's copy is B's, and stays
    admin_a.ec2.deregister_image(ImageId=origin)
    left = deploy_b.ec2.describe_images(ImageIds=[copy["ImageId"]])["Images"]
    assert [i["State"] for i in left] == ["available"]


def test_another_account_not_listed_is_refused_before_anything_is_shared(
    accounts: Accounts,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loaded = _two_accounts(
        accounts, tmp_path / "app", deploy_moto, tmp_path, monkeypatch, promote_to=""
    )
    origin = _staging_ami(accounts.staging, loaded)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    with pytest.raises(PromotionRefused, match="promote_to_accounts does not list") as refused:
        production.promote_image(IMAGE, staging, lambda _line: None)
    assert refused.value.hint and f'promote_to_accounts = ["{accounts.b}"]' in refused.value.hint
    launch = accounts.staging.admin.ec2.describe_image_attribute(
        ImageId=origin, Attribute="launchPermission"
    )
    assert launch["LaunchPermissions"] == []


def test_an_encrypted_ami_goes_to_another_account_only_under_a_key_it_may_use(
    accounts: Accounts, deploy_moto: str
) -> None:
    """Checked with A's keys before anything is shared: KMS key policies, as AWS keeps them."""
    b, a = accounts.b, str(accounts.staging.admin.sts.get_caller_identity()["Account"])
    kms = accounts.staging.admin.client("kms")

    def key(*principals: str) -> str:
        statements = [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{a}:root"},
                       "Action": "kms:*", "Resource": "*"}]  # fmt: skip
        if principals:
            statements.append(
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": list(principals)},
                    "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:ReEncrypt*",
                               "kms:CreateGrant"],
                    "Resource": "*",
                }
            )  # fmt: skip
        policy = json.dumps({"Version": "2012-10-17", "Statement": statements})
        return str(kms.create_key(Policy=policy)["KeyMetadata"]["Arn"])

    source = connect(
        AwsSettings(region="eu-west-1", endpoint_url=deploy_moto),
        access_key_id=accounts.staging_keys[0],
        secret_access_key=accounts.staging_keys[1],
    )

    def ami(kms_key: str | None) -> Ami:
        return Ami("ami-0123456789abcdef0", "n", "available", "", {}, ("snap-1",), True,
                   kms_key_id=kms_key)  # fmt: skip

    check_shareable(source, ami(key(f"arn:aws:iam::{b}:root")), b)
    check_shareable(source, ami(key(b)), b)
    with pytest.raises(PromotionRefused, match="default EBS key, an AWS managed key"):
        check_shareable(source, ami(None), b)
    with pytest.raises(PromotionRefused, match=f"does not let account {b} use it") as refused:
        check_shareable(source, ami(key()), b)
    assert "kms:CreateGrant, kms:Decrypt, kms:DescribeKey missing" in str(refused.value)
    with pytest.raises(PromotionRefused, match="does not let account"):
        check_shareable(source, ami(key("arn:aws:iam::999999999999:root")), b)


# -- a target whose [env] differs: a derived AMI, only its env file new --------------


def _loopback_builder(
    tmp_path: Path, app: str, ssh_server: SshServer, good_app: str, mp: pytest.MonkeyPatch
) -> Path:
    """Builders reached over loopback SSH into a scratch root: the promoted AMI's files,
    as its bake left them. Boot tests probe ``good_app``. Returns the scratch root."""
    disk = tmp_path / "builder-root"
    (disk / "etc" / "kiln" / app).mkdir(parents=True)
    (disk / "etc" / "kiln" / app / "env").write_text('GREETING="hello"\n')
    (disk / "etc" / "ssh").mkdir()
    (disk / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("the builder's boot made it\n")
    code = disk / "opt" / "kiln" / app / "c0de" / "app.py"
    code.parent.mkdir(parents=True)
    code.write_text("print('the promoted code')\n")

    def loopback(_settings: AwsSettings) -> Callable[[Builder], SshTarget]:
        def target(builder: Builder) -> SshTarget:
            assert builder.key is not None
            ssh_server.authorize(builder.key)
            return SshTarget("127.0.0.1", ssh_server.port, "admin", builder.key, False, str(disk))

        return target

    mp.setattr(kiln.aws.ami, "default_target", loopback)
    mp.setattr(
        kiln.aws.boottest, "direct_checker", lambda *_a, **_k: lambda _i: probe(good_app, None, 2)
    )
    return disk


def test_a_different_env_gets_a_derived_ami_that_only_rewrites_the_env_layer(
    world: World,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    good_app: str,
    ssh_server: SshServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through AwsPlatform.promote_image, as 'kiln promote' runs it: builder over SSH
    (loopback, a scratch root standing in for the promoted AMI's disk), boot test, deploy."""
    keys = _user(world.admin, f"{world.app}-relayer", ["bake", "deploy", "scaling"])
    _profiles(
        tmp_path,
        monkeypatch,
        {"kiln-staging": ("eu-west-1", *keys), "kiln-production": ("eu-west-1", *keys)},
    )
    builder = (
        f'subnet_id = "{world.subnets[0]}"\nssh_cidr = "127.0.0.1/32"\n'
        'ssh_timeout = "20s"\nimage_timeout = "20s"\nboot_test = true\n'
    )
    world.config(tmp_path / "app", extra_aws=f'endpoint_url = "{deploy_moto}"\n{builder}')
    with (tmp_path / "app" / "kiln.toml").open("a") as f:
        f.write(
            "\n[env]\nGREETING = 'hello'\n"
            "\n[environments.staging]\nprovider.aws = { profile = 'kiln-staging' }\n"
            "\n[environments.production]\nrequire = 'staging'\n"
            "provider.aws = { profile = 'kiln-production' }\nenv = { MODE = 'live' }\n"
        )
    loaded = load_config(tmp_path / "app" / "kiln.toml")
    origin = _staging_ami(world, loaded)
    disk = _loopback_builder(tmp_path, world.app, ssh_server, good_app, monkeypatch)
    code = disk / "opt" / "kiln" / world.app / "c0de" / "app.py"
    calls = _record(monkeypatch)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    said: list[str] = []
    live = {"GREETING": "hello", "MODE": "live"}

    # a dry run names the derived identity, and launches no builder, makes no AMI
    dry = production.plan_promotion(IMAGE, staging)
    assert dry.image == derived_image(CODE, live)[0] and not dry.ready
    assert [(a["action"], a["ami"]) for a in dry.actions] == [("reuse", origin), ("derive", origin)]
    assert dry.actions[1]["image"] == dry.image
    assert _writes(calls) == set() and ssh_server.commands == []
    assert _amis_of(world.admin, dry.image) == []
    calls.clear()

    derived = production.promote_image(IMAGE, staging, said.append)
    assert derived == derived_image(CODE, live)[0] != IMAGE
    # only the env file was written, as the unit reads it; nothing else was uploaded
    env = (disk / "etc" / "kiln" / world.app / "env").read_text()
    assert 'MODE="live"' in env and f'KILN_IMAGE="{derived}"' in env and 'PORT="3000"' in env
    assert [c for c in ssh_server.commands if c.endswith(" - env-only")]
    assert code.read_text() == "print('the promoted code')\n"  # the code is untouched
    assert not (disk / "etc" / "ssh" / "ssh_host_ed25519_key").exists()  # first boot cleared
    (made,) = world.admin.ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag:kiln:image", "Values": [derived]}]
    )["Images"]
    made_tags = {t["Key"]: t["Value"] for t in made["Tags"]}
    assert made_tags[CODE_TAG] == CODE  # same code
    assert made_tags[ENV_TAG] == env_digest(live) and made_tags["kiln:digest"] != IMAGE * 2
    assert made_tags[PROMOTED_FROM_TAG] == IMAGE and made_tags[SOURCE_AMI_TAG] == origin
    assert made_tags["kiln:verified"]  # its own boot test passed
    assert production.code_of(derived) == CODE
    listed = json.loads(
        Kiln(loaded.root)("images", "--provider", "aws", "--env", "production", "--json").stdout
    )
    shown = {a["image"]: a for a in listed}
    assert shown[derived]["promoted_from"] == IMAGE and shown[derived]["code_digest"] == CODE
    # every call is in the policies the deploy user holds (bake for the builder)
    made_calls = {call for call, _r, _k in calls} - {"sts:GetCallerIdentity"}
    assert {"ec2:RunInstances", "ec2:CreateImage"} <= made_calls
    assert "ec2:CopyImage" not in made_calls  # same account and region: nothing to copy
    assert made_calls <= _scoped_actions(loaded, "production", ["bake", "deploy"])

    # production deploys the derived AMI
    world.addresses[derived] = good_app
    config = LoadedConfig(config=loaded.config.for_environment("production"), path=loaded.path)
    deploy = connect(production.settings())
    fleet = open_deployments(home, config, aws=deploy, resolve=world.resolve)
    result = fleet.deploy(derived)
    assert result.ok, result.message
    serving = world.admin.ec2.describe_instances(InstanceIds=sorted(world.targets()))
    assert {i["ImageId"] for r in serving["Reservations"] for i in r["Instances"]} == {
        made["ImageId"]
    }

    # a second promotion finds the derived AMI by its identity: no builder
    calls.clear()
    assert production.promote_image(IMAGE, staging, said.append) == derived
    assert not {c for c, _r, _k in calls} & {"ec2:RunInstances", "ec2:CreateImage"}


def test_another_account_with_another_env_derives_from_its_own_copy(
    accounts: Accounts,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    good_app: str,
    ssh_server: SshServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Production in B with its own [env]: A shares, B copies, B derives from its copy."""
    b, world_b = accounts.b, accounts.production
    keys_b = _user(world_b.admin, "production-relayer", ["bake", "deploy", "scaling"])
    _profiles(
        tmp_path,
        monkeypatch,
        {
            "kiln-staging": ("eu-west-1", *accounts.staging_keys),
            "kiln-production": ("eu-west-1", *keys_b),
        },
    )
    builder = (
        f'subnet_id = "{world_b.subnets[0]}"\nssh_cidr = "127.0.0.1/32"\n'
        'ssh_timeout = "20s"\nimage_timeout = "20s"\nboot_test = true\n'
    )
    root = tmp_path / "app"
    world_b.config(root, extra_aws=f'endpoint_url = "{deploy_moto}"\n{builder}')
    subnets = ", ".join(f"'{s}'" for s in accounts.staging.subnets[:2])
    with (root / "kiln.toml").open("a") as f:
        f.write(
            "\n[env]\nGREETING = 'hello'\n"
            "\n[environments.staging]\nprovider.aws = { profile = 'kiln-staging', "
            f"target_group_arn = '{accounts.staging.target_group}', subnet_ids = [{subnets}], "
            f"promote_to_accounts = ['{b}'] }}\n"
            "\n[environments.production]\nprovider.aws = { profile = 'kiln-production' }\n"
            "env = { MODE = 'live' }\n"
        )
    loaded = load_config(root / "kiln.toml")
    origin = _staging_ami(accounts.staging, loaded)
    _loopback_builder(tmp_path, world_b.app, ssh_server, good_app, monkeypatch)
    calls = _record(monkeypatch)
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    said: list[str] = []

    dry = production.plan_promotion(IMAGE, staging)
    assert [a["action"] for a in dry.actions] == ["share", "copy", "derive"]
    assert dry.image == derived_image(CODE, {"GREETING": "hello", "MODE": "live"})[0]
    assert _writes(calls) == set() and ssh_server.commands == []
    assert world_b.admin.ec2.describe_images(Owners=["self"])["Images"] == []
    calls.clear()

    derived = production.promote_image(IMAGE, staging, said.append)
    assert derived == dry.image
    mine = world_b.admin.ec2.describe_images(Owners=["self"])["Images"]
    by_image = {t["Value"]: i for i in mine for t in i.get("Tags", []) if t["Key"] == "kiln:image"}
    copy, made = by_image[IMAGE], by_image[derived]  # both B's own
    made_tags = {t["Key"]: t["Value"] for t in made["Tags"]}
    assert made_tags[SOURCE_AMI_TAG] == copy["ImageId"] != origin
    assert made_tags[CODE_TAG] == CODE and made_tags["kiln:verified"]
    a_key = accounts.staging_keys[0]
    by_a = {c for c, _r, k in calls if k == a_key} - {"sts:GetCallerIdentity"}
    by_b = {c for c, _r, k in calls if k == keys_b[0]} - {"sts:GetCallerIdentity"}
    assert by_a <= _scoped_actions(loaded, "staging", ["deploy", "publish"])
    assert {"ec2:CopyImage", "ec2:RunInstances", "ec2:CreateImage"} <= by_b
    assert by_b <= _scoped_actions(loaded, "production", ["bake", "deploy"])

    calls.clear()  # again: the derived AMI is found in B, nothing shared, copied or built
    assert production.promote_image(IMAGE, staging, said.append) == derived
    assert not {c for c, _r, _k in calls} & {
        "ec2:ModifyImageAttribute", "ec2:CopyImage", "ec2:RunInstances", "ec2:CreateImage"
    }  # fmt: skip


def test_deriving_from_an_ami_without_the_apps_env_file_fails_in_one_line_and_cleans_up(
    world: World,
    home: Home,
    tmp_path: Path,
    deploy_moto: str,
    good_app: str,
    ssh_server: SshServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = _user(world.admin, f"{world.app}-relayer", ["bake", "deploy", "scaling"])
    _profiles(
        tmp_path,
        monkeypatch,
        {"kiln-staging": ("eu-west-1", *keys), "kiln-production": ("eu-west-1", *keys)},
    )
    builder = f'subnet_id = "{world.subnets[0]}"\nssh_cidr = "127.0.0.1/32"\nssh_timeout = "20s"\n'
    world.config(tmp_path / "app", extra_aws=f'endpoint_url = "{deploy_moto}"\n{builder}')
    with (tmp_path / "app" / "kiln.toml").open("a") as f:
        f.write(
            "\n[environments.staging]\nprovider.aws = { profile = 'kiln-staging' }\n"
            "\n[environments.production]\nprovider.aws = { profile = 'kiln-production' }\n"
            "env = { MODE = 'live' }\n"
        )
    loaded = load_config(tmp_path / "app" / "kiln.toml")
    _staging_ami(world, loaded)
    disk = _loopback_builder(tmp_path, world.app, ssh_server, good_app, monkeypatch)
    (disk / "etc" / "kiln" / world.app / "env").unlink()  # not this app's kiln AMI
    staging, production = _platform(home, loaded, "staging"), _platform(home, loaded, "production")
    with pytest.raises(AwsError, match=f"not a kiln AMI of {world.app}"):
        production.promote_image(IMAGE, staging, lambda _line: None)
    running = world.admin.ec2.describe_instances(
        Filters=[
            {"Name": "tag-key", "Values": ["kiln:build-id"]},
            {"Name": "tag:kiln:app", "Values": [world.app]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]},
        ]
    )["Reservations"]
    assert running == []  # the builder is gone
    found = world.admin.ec2.describe_images(
        Owners=["self"],
        Filters=[
            {"Name": "tag:kiln:promoted-from", "Values": [IMAGE]},
            {"Name": "tag:kiln:app", "Values": [world.app]},
        ],
    )["Images"]
    assert found == []  # no derived AMI of this app
