"""AMIs for organisations: encrypted with a chosen key, sized, shared, deprecated, copied.

moto (plus tests/aws/motopatched.py, which makes CreateImage snapshot the
builder's root volume and CopyImage take tags, encryption and time) shows the
API shapes; what it does not check (KMS key state, key kind, AWS managed keys
that cannot be shared) kiln checks itself before launching anything, and
those checks are tested here too.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from awskit import REGION, SOURCE_AMI, TargetFactory, leftovers, write_app
from awsservers import COPY_SECONDS

from kiln.aws.ami import bake_ami
from kiln.aws.images import list_amis
from kiln.aws.publish import PUBLISHED_TAG
from kiln.aws.regions import SOURCE_AMI_TAG, SOURCE_REGION_TAG, where
from kiln.aws.session import Aws, connect, tag_map
from kiln.config import AwsSettings, LoadedConfig, load_config, parse_config
from kiln.errors import AwsError, ConfigError
from kiln.home import Home

pytestmark = pytest.mark.aws

ACCOUNT = "111122223333"
ORG = "arn:aws:organizations::123456789012:organization/o-abcdefghij"
OU = "arn:aws:organizations::123456789012:ou/o-abcdefghij/ou-ab12-cdefgh34"
COPIES = ("us-east-1", "us-west-2")


def _key(aws: Aws, alias: str = "alias/kiln-ami") -> str:
    """A customer managed key under ``alias`` in ``aws``'s region; its ARN."""
    kms = aws.client("kms")
    meta = kms.create_key(Description="kiln AMIs")["KeyMetadata"]
    kms.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    return str(meta["Arn"])


def _image(aws: Aws, ami: str) -> Any:
    return aws.ec2.describe_images(ImageIds=[ami])["Images"][0]


def _record(aws: Aws) -> dict[str, list[Any]]:
    """The parameters of every call ``aws``'s session sends, by operation (fresh clients)."""
    seen: dict[str, list[Any]] = {}

    def note(params: Any, model: Any, **_kwargs: Any) -> None:
        seen.setdefault(model.name, []).append(dict(params))

    aws.session.events.register("before-parameter-build", note)
    return seen


def test_an_encrypted_sized_shared_deprecated_ami(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    key = _key(aws)
    extra = f"""kms_key_id = "alias/kiln-ami"
root_volume_size = 30
root_volume_type = "gp3"
delete_on_termination = false
deprecate_after = "90d"
share_with_accounts = ["{ACCOUNT}"]
share_with_organizations = ["{ORG}"]
share_with_ous = ["{OU}"]
share_snapshots = true
"""
    loaded = app_factory(extra=extra)
    aws = connect(AwsSettings())  # fresh clients: every call is recorded
    calls = _record(aws)
    result = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)
    assert result.encrypted and result.summary()["encrypted"] is True

    image = _image(aws, result.ami)
    (root,) = image["BlockDeviceMappings"]
    assert root["Ebs"]["Encrypted"] is True
    assert root["Ebs"]["KmsKeyId"] == key  # the alias, resolved and checked before the launch
    assert root["Ebs"]["VolumeSize"] == 30 and root["Ebs"]["VolumeType"] == "gp3"
    assert root["Ebs"]["DeleteOnTermination"] is False
    snapshot = aws.ec2.describe_snapshots(SnapshotIds=[root["Ebs"]["SnapshotId"]])["Snapshots"][0]
    assert snapshot["Encrypted"] and snapshot["KmsKeyId"] == key
    # the builder's own volume was encrypted at launch: no unencrypted AMI ever existed
    (launch,) = calls["RunInstances"]
    assert launch["BlockDeviceMappings"] == [
        {
            "DeviceName": image["RootDeviceName"],
            "Ebs": {
                "DeleteOnTermination": True,
                "Encrypted": True,
                "KmsKeyId": key,
                "VolumeSize": 30,
                "VolumeType": "gp3",
            },
        }
    ]
    assert "CopyImage" not in calls

    # shared with the account, the organisation and the OU; snapshots with the account
    permissions = aws.ec2.describe_image_attribute(ImageId=result.ami, Attribute="launchPermission")
    assert permissions["LaunchPermissions"] == [
        {"UserId": ACCOUNT},
        {"OrganizationArn": ORG},
        {"OrganizationalUnitArn": OU},
    ]
    volumes = aws.ec2.describe_snapshot_attribute(
        SnapshotId=root["Ebs"]["SnapshotId"], Attribute="createVolumePermission"
    )
    assert volumes["CreateVolumePermissions"] == [{"UserId": ACCOUNT}]
    # deprecated 90 days after its creation
    created = datetime.datetime.fromisoformat(image["CreationDate"].replace("Z", "+00:00"))
    deprecated = datetime.datetime.fromisoformat(str(image["DeprecationTime"]).replace("Z", ""))
    expected = (created + datetime.timedelta(days=90)).replace(tzinfo=None, microsecond=0)
    assert abs((deprecated.replace(tzinfo=None) - expected).total_seconds()) <= 1
    assert tag_map(image["Tags"])[PUBLISHED_TAG]
    assert leftovers(aws) == {}

    # a reused AMI is not shared again: the marker says it already is
    calls.clear()
    again = bake_ami(loaded, home, aws=aws)
    assert again.reused and again.ami == result.ami
    assert not {"ModifyImageAttribute", "EnableImageDeprecation", "CreateTags"} & set(calls)
    # one more account: the marker no longer matches, so the reused AMI gets it
    more = app_factory(extra=extra.replace(f'["{ACCOUNT}"]', f'["{ACCOUNT}", "444455556666"]'))
    assert bake_ami(more, home, aws=aws).ami == result.ami
    permissions = aws.ec2.describe_image_attribute(ImageId=result.ami, Attribute="launchPermission")
    assert {"UserId": "444455556666"} in permissions["LaunchPermissions"]


def test_disk_settings_are_part_of_the_amis_identity(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    loopback_target: TargetFactory,
) -> None:
    plain = bake_ami(app_factory(), home, aws=aws, ssh_target=loopback_target)
    assert not plain.encrypted
    # the same app encrypted is another AMI: an unencrypted one is never reused for it
    encrypted = bake_ami(
        app_factory(extra="encrypted = true\n"), home, aws=aws, ssh_target=loopback_target
    )
    assert not encrypted.reused and encrypted.ami != plain.ami and encrypted.encrypted
    (root,) = _image(aws, encrypted.ami)["BlockDeviceMappings"]
    assert root["Ebs"]["Encrypted"] and root["Ebs"]["DeleteOnTermination"] is True
    # without the new settings the recipe is what it was: AMIs baked before them are reused
    assert bake_ami(app_factory(), home, aws=aws).ami == plain.ami


@pytest.mark.parametrize(
    ("make_key", "shared", "message"),
    [
        (lambda kms: "alias/nothing-here", False, "does not exist in eu-west-1"),
        (lambda kms: _disabled(kms), False, "is not enabled"),
        (
            lambda kms: kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")[
                "KeyMetadata"
            ]["Arn"],
            False,
            "is not a symmetric encryption key",
        ),
    ],
)
def test_unusable_kms_keys_are_refused_before_anything_is_launched(
    aws: Aws,
    home: Home,
    app_factory: Callable[..., LoadedConfig],
    make_key: Callable[[Any], str],
    shared: bool,
    message: str,
) -> None:
    key = make_key(aws.client("kms"))
    before = aws.ec2.describe_instances()["Reservations"]
    with pytest.raises(AwsError, match=message):
        bake_ami(app_factory(extra=f'kms_key_id = "{key}"\n'), home, aws=aws)
    assert aws.ec2.describe_instances()["Reservations"] == before  # no builder
    assert leftovers(aws) == {}


def _disabled(kms: Any) -> str:
    key = kms.create_key()["KeyMetadata"]
    kms.disable_key(KeyId=key["KeyId"])
    return str(key["Arn"])


def test_an_aws_managed_key_cannot_encrypt_a_shared_ami(aws: Aws) -> None:
    """AWS refuses to share AMIs encrypted with AWS managed keys; kiln says so first."""
    from kiln.aws.disks import _unusable

    meta = {"Enabled": True, "KeyState": "Enabled", "KeyUsage": "ENCRYPT_DECRYPT"}
    meta |= {"KeySpec": "SYMMETRIC_DEFAULT", "KeyManager": "AWS"}
    assert _unusable(meta, shared=False) is None
    assert "AWS managed key" in str(_unusable(meta, shared=True))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ('copy_to_regions = ["us-east-1", "us-east-1"]', "lists a region twice"),
        ('region = "us-east-1"\ncopy_to_regions = ["us-east-1"]', "AMI's own region"),
        ('copy_to_regions = ["nowhere"]', "copy_to_regions"),
        ('copy_kms_key_ids = { us-east-1 = "alias/x" }', "not in copy_to_regions"),
        (
            'kms_key_id = "arn:aws:kms:eu-west-1:123456789012:key/'
            '1234abcd-12ab-34cd-56ef-1234567890ab"\ncopy_to_regions = ["us-east-1"]',
            "is a key of one region: set copy_kms_key_ids for us-east-1",
        ),
        (f'encrypted = true\nshare_with_accounts = ["{ACCOUNT}"]', "default EBS key"),
        ('share_with_accounts = ["12345"]', "share_with_accounts"),
        ('share_with_organizations = ["o-abcdefghij"]', "share_with_organizations"),
        ('root_volume_type = "io2"', "root_volume_type"),
        ('kms_key_id = "my key"', "kms_key_id"),
    ],
)
def test_configuration_mistakes_are_one_line_errors(settings: str, message: str) -> None:
    text = f'[app]\nname = "acme"\nrun = "true"\n[provider.aws]\n{settings}\n'
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def _base_everywhere(aws: Aws, regions: tuple[str, ...]) -> None:
    """The same base image name in each region, as Debian publishes it (another id each)."""
    for region in regions:
        there = aws.in_region(region)
        source = there.ec2.run_instances(ImageId=SOURCE_AMI, MinCount=1, MaxCount=1)
        there.ec2.create_image(
            InstanceId=source["Instances"][0]["InstanceId"], Name="debian-12-amd64-20260101-1234"
        )


def test_copies_start_without_waiting_and_a_later_bake_finishes_them(
    aws: Aws, home: Home, tmp_path: Path, loopback_target: TargetFactory
) -> None:
    _base_everywhere(aws, (REGION, *COPIES))
    keys = {region: _key(aws.in_region(region)) for region in (REGION, *COPIES)}
    common = f"""base_image = "debian-12-amd64-*"
base_image_owner = "self"
kms_key_id = "alias/kiln-ami"
share_with_accounts = ["{ACCOUNT}"]
deprecate_after = "30d"
"""
    one = write_app(tmp_path / "app", extra=common + 'copy_to_regions = ["us-east-1"]\n')
    started = time.monotonic()
    first = bake_ami(one, home, aws=aws, ssh_target=loopback_target)
    took = time.monotonic() - started
    (copy,) = first.copies
    assert copy.region == "us-east-1" and copy.state == "started" and copy.ami
    # the bake did not wait: the copy is still pending when it returns
    there = aws.in_region("us-east-1")
    copied = _image(there, copy.ami)
    assert copied["State"] == "pending", f"the bake waited {took:.1f}s for its copy"
    source_tags, copy_tags = tag_map(_image(aws, first.ami)["Tags"]), tag_map(copied["Tags"])
    for key in ("kiln:digest", "kiln:image", "kiln:app", "kiln:recipe", "kiln:base-name"):
        assert copy_tags[key] == source_tags[key]
    assert copy_tags[SOURCE_AMI_TAG] == first.ami and copy_tags[SOURCE_REGION_TAG] == REGION
    (root,) = copied["BlockDeviceMappings"]
    assert root["Ebs"]["Encrypted"] and root["Ebs"]["KmsKeyId"] == keys["us-east-1"]
    snapshot = there.ec2.describe_snapshots(SnapshotIds=[root["Ebs"]["SnapshotId"]])
    assert tag_map(snapshot["Snapshots"][0]["Tags"])["kiln:digest"] == source_tags["kiln:digest"]

    # `kiln images` shows where each image exists
    settings = AwsSettings(copy_to_regions=list(COPIES))
    (row,) = where(aws, list_amis(aws, "acme"), settings, "acme").values()
    assert [(c.region, c.state) for c in row] == [
        ("us-east-1", "pending"),
        ("us-west-2", "missing"),
    ]

    # a bake while the copy is pending neither waits nor copies again
    notes: list[str] = []
    again = bake_ami(one, home, aws=aws, progress=notes.append)
    assert again.reused and [c.state for c in again.copies] == ["pending"]
    assert again.copies[0].ami == copy.ami

    # later: the copy is available; a bake (one more region configured) shares and
    # deprecates it, and starts the new region's copy
    time.sleep(COPY_SECONDS + 0.2)
    two = write_app(tmp_path / "app", extra=common + f"copy_to_regions = {list(COPIES)!r}\n")
    third = bake_ami(two, home, aws=aws)
    assert [(c.region, c.state) for c in third.copies] == [
        ("us-east-1", "available"),
        ("us-west-2", "started"),
    ]
    finished = _image(there, copy.ami)
    assert finished.get("DeprecationTime")
    assert tag_map(finished["Tags"])[PUBLISHED_TAG]
    permissions = there.ec2.describe_image_attribute(ImageId=copy.ami, Attribute="launchPermission")
    assert permissions["LaunchPermissions"] == [{"UserId": ACCOUNT}]
    west = aws.in_region("us-west-2")
    (west_root,) = _image(west, third.copies[1].ami or "")["BlockDeviceMappings"]
    assert west_root["Ebs"]["KmsKeyId"] == keys["us-west-2"]

    # reuse by digest in the copy region: a bake there finds the copy, bakes nothing
    local = write_app(
        tmp_path / "app", extra=common.replace("kms_key_id", 'region = "us-east-1"\nkms_key_id')
    )

    def no_builder(_builder: object) -> object:
        raise AssertionError("the copy must be reused")

    reused = bake_ami(local, home, aws=there, ssh_target=no_builder)  # type: ignore[arg-type]
    assert reused.reused and reused.ami == copy.ami and reused.region == "us-east-1"
    assert leftovers(aws) == {}


def test_prune_takes_copies_with_their_source_but_not_one_in_use(
    aws: Aws, home: Home, tmp_path: Path, loopback_target: TargetFactory
) -> None:
    from kiln.aws.images import prune_amis
    from kiln.aws.regions import prune_copies

    _base_everywhere(aws, (REGION, "us-east-1"))
    extra = 'base_image = "debian-12-amd64-*"\nbase_image_owner = "self"\n'
    extra += 'copy_to_regions = ["us-east-1"]\n'
    results = []
    for version in ("1", "2", "3"):
        if results:
            time.sleep(1.1)  # creation dates have one-second resolution
        loaded = write_app(tmp_path / "app", extra=extra, version=version)
        results.append(bake_ami(loaded, home, aws=aws, ssh_target=loopback_target))
    time.sleep(COPY_SECONDS + 0.2)
    oldest, middle, newest = results
    there = aws.in_region("us-east-1")
    there.ec2.run_instances(ImageId=oldest.copies[0].ami or "", MinCount=1, MaxCount=1)
    pruned = prune_amis(aws, "acme", keep=1)
    assert {a.id for a in pruned.deleted} == {oldest.ami, middle.ami}
    gone = prune_copies(aws, "acme", {newest.ami}, ["us-east-1"], dry_run=False)
    assert [(r, c.id) for r, c in gone] == [("us-east-1", middle.copies[0].ami)]
    left = {a.id for a in list_amis(there, "acme")}
    assert left == {newest.copies[0].ami, oldest.copies[0].ami}  # the oldest runs an instance


def test_the_publish_policy_is_exactly_what_copies_sharing_and_keys_use(
    enforced: Aws, tmp_path: Path, home: Home, loopback_target: TargetFactory
) -> None:
    """IAM-enforcing moto, the deploy user's own keys holding the bake and publish policies.

    Every publish action is used, and nothing outside the two policies is.
    The KMS actions EC2 uses on the caller's behalf are not calls kiln makes.
    """
    from kiln.aws.iam import create_deploy_user
    from kiln.aws.images import prune_amis
    from kiln.aws.policy import (
        IMPLICIT_BAKE_ACTIONS,
        IMPLICIT_PUBLISH_ACTIONS,
        PUBLISH_PURPOSES,
        PURPOSES,
        actions,
        enforceable_documents,
        rules_for,
    )
    from kiln.aws.regions import prune_copies

    _base_everywhere(enforced, (REGION, "us-east-1"))
    for region in (REGION, "us-east-1"):
        _key(enforced.in_region(region))
    user = create_deploy_user(
        enforced,
        "org",
        parts=["bake", "publish"],
        documents=enforceable_documents(["bake", "publish"]),
    )
    deploy = connect(
        AwsSettings(),
        access_key_id=str(user.access_key_id),
        secret_access_key=str(user.secret_access_key),
    )
    calls: set[str] = set()
    deploy.session.events.register(
        "before-call",
        lambda model, **_: calls.add(f"{model.service_model.signing_name}:{model.name}"),
    )
    extra = f"""base_image = "debian-12-amd64-*"
base_image_owner = "self"
kms_key_id = "alias/kiln-ami"
root_volume_size = 20
share_with_accounts = ["{ACCOUNT}"]
share_with_organizations = ["{ORG}"]
share_snapshots = true
deprecate_after = "30d"
copy_to_regions = ["us-east-1"]
"""
    results = []
    for version in ("1", "2"):
        loaded = write_app(tmp_path / "app", extra=extra, version=version)
        toml = loaded.path.read_text().replace('name = "acme"', 'name = "orgs"')
        loaded.path.write_text(toml)  # its own app: this server is shared by the session
        loaded = load_config(loaded.path)
        results.append(bake_ami(loaded, home, aws=deploy, ssh_target=loopback_target))
        time.sleep(COPY_SECONDS + 0.2)
        finished = bake_ami(loaded, home, aws=deploy)  # publishes the available copy
        assert [c.state for c in finished.copies] == ["available"]
    settings = AwsSettings(copy_to_regions=["us-east-1"])
    assert len(where(deploy, list_amis(deploy, "orgs"), settings, "orgs")) == 2
    pruned = prune_amis(deploy, "orgs", keep=1)
    assert [a.id for a in pruned.deleted] == [results[0].ami]
    gone = prune_copies(deploy, "orgs", {results[1].ami}, ["us-east-1"], dry_run=False)
    assert [c.id for _r, c in gone] == [results[0].copies[0].ami]
    assert leftovers(enforced) == {}

    # promotion into another account (kms:GetKeyPolicy) is proven by test_aws_promote
    promoting = {a for r in rules_for(PUBLISH_PURPOSES) if r.only_with == "promote_kms"
                 for a in r.actions}  # fmt: skip
    publish = actions(PUBLISH_PURPOSES) - IMPLICIT_PUBLISH_ACTIONS - promoting
    assert publish <= calls, f"unused in the publish policy: {sorted(publish - calls)}"
    allowed = actions((*PURPOSES, *PUBLISH_PURPOSES)) - IMPLICIT_BAKE_ACTIONS
    assert calls <= allowed, f"outside the policies: {sorted(calls - allowed)}"


def test_a_failed_copy_is_deregistered_and_copied_again(
    aws: Aws, home: Home, tmp_path: Path, loopback_target: TargetFactory
) -> None:
    """AWS marks a copy ``failed`` now and then; moto never does, so the answer is edited."""
    _base_everywhere(aws, (REGION, "us-east-1"))
    extra = 'base_image = "debian-12-amd64-*"\nbase_image_owner = "self"\n'
    loaded = write_app(tmp_path / "app", extra=extra + 'copy_to_regions = ["us-east-1"]\n')
    first = bake_ami(loaded, home, aws=aws, ssh_target=loopback_target)
    broken = first.copies[0].ami

    def fail_it(parsed: Any, model: Any, **_kwargs: Any) -> None:
        for image in parsed.get("Images", []):
            if image["ImageId"] == broken:
                image["State"] = "failed"

    # on the session: the bake's clients for us-east-1 are created after this
    aws.session.events.register("after-call.ec2.DescribeImages", fail_it)
    notes: list[str] = []
    again = bake_ami(loaded, home, aws=aws, progress=notes.append)
    (copy,) = again.copies
    assert copy.state == "started" and copy.ami != broken
    assert any(f"deregistering copy {broken} in us-east-1 (state failed)" in n for n in notes)
    gone = connect(AwsSettings(region="us-east-1")).ec2.describe_images(Owners=["self"])
    assert broken not in {i["ImageId"] for i in gone["Images"]}
