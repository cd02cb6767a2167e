"""The deploy policy: linted by parliament, complete and minimal, enforced by IAM.

moto's IAM enforcement checks keys, signatures and actions but denies EC2
resource ARNs and ignores conditions, so the enforced run attaches
:func:`enforceable_document` (the same actions per Sid, ``Resource: "*"``),
while the scoped :func:`policy_document` is what users get and what the
linter checks. Both come from one list of rules.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from awskit import REGION, SOURCE_AMI, TargetFactory, leftovers, write_app
from policywalk import lint

from kiln.aws import iam
from kiln.aws.ami import bake_ami
from kiln.aws.boottest import BootTestFailed
from kiln.aws.iam import create_deploy_user
from kiln.aws.images import list_amis, prune_amis
from kiln.aws.packages import read_packages
from kiln.aws.policy import (
    IMPLICIT_BAKE_ACTIONS,
    MANAGED_POLICY_MAX,
    ONEOFF_RESULTS,
    PARTS,
    PURPOSES,
    actions,
    enforceable_document,
    enforceable_documents,
    options,
    policy_document,
    size,
)
from kiln.aws.reap import reap
from kiln.aws.session import Aws, aws_errors, connect
from kiln.config import AwsSettings
from kiln.errors import AwsError
from kiln.home import Home

pytestmark = pytest.mark.aws


# every publish statement: copies to two regions, sharing, deprecation, a KMS key
PUBLISH_ALL: dict[str, Any] = {
    "copy_regions": ("us-east-1", "ap-southeast-2"),
    "share": True,
    "deprecate": True,
    "kms": True,
    "promote_kms": True,
}


@pytest.mark.parametrize(
    ("region", "account"), [("eu-west-1", "123456789012"), ("us-east-1", None), (None, None)]
)
@pytest.mark.parametrize("publish", [{}, PUBLISH_ALL])
def test_parliament_finds_nothing(
    region: str | None, account: str | None, publish: dict[str, Any]
) -> None:
    copies = tuple(r for r in publish.get("copy_regions", ()) if r != region)
    rendered = {**publish, "copy_regions": copies}
    document = policy_document(region=region, account=account, **rendered)
    assert lint(document, community=False) == []
    # Sharing an AMI's snapshots and EBS's grant on the KMS key are permissions
    # management by nature; both exist only when kiln.toml asks to share or encrypt,
    # and are scoped (kiln's own snapshots; grants for AWS resources via EC2 only).
    community = lint(document, community=True)
    managing = {"kms:creategrant", "ec2:modifysnapshotattribute"} if publish else set()
    assert {issue for issue, _detail, _where in community} == (
        {"PERMISSIONS_MANAGEMENT_ACTIONS"} if publish else set()
    )
    assert {a for _i, _d, where in community for a in where["actions"]} == managing


def test_pass_role_only_for_the_configured_instance_role() -> None:
    plain = policy_document(region="eu-west-1", account="123456789012")
    assert "iam:PassRole" not in json.dumps(plain), "no role configured: nothing to pass"
    document = policy_document(region="eu-west-1", account="123456789012", pass_role="shop-web")
    (statement,) = [s for s in document["Statement"] if s["Action"] == "iam:PassRole"]
    assert statement["Resource"] == "arn:aws:iam::123456789012:role/shop-web"
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    assert lint(document, community=False) == []
    # The community auditors flag any PassRole beside RunInstances: that is what an
    # instance profile needs, so the role is pinned and passable to EC2 only instead.
    community = lint(document, community=True)
    assert {issue for issue, _detail, _where in community} == {
        "PERMISSIONS_MANAGEMENT_ACTIONS",
        "PRIVILEGE_ESCALATION",
    }
    assert all("iam:passrole" in where["actions"] for _issue, _detail, where in community)


def test_stickiness_only_when_kiln_toml_sets_sticky_and_only_on_its_target_groups() -> None:
    tg = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"
    cg = tg.replace("/web/", "/web-canary/")
    plain = policy_document(region="eu-west-1", account="123456789012", target_group=tg)
    assert "ModifyTargetGroupAttributes" not in json.dumps(plain)
    document = policy_document(
        region="eu-west-1",
        account="123456789012",
        purposes=PARTS["scaling"],  # not the deploy policy: that one keeps its headroom
        target_group=tg,
        canary_target_group=cg,
        sticky=True,
    )
    (statement,) = [s for s in document["Statement"] if s["Sid"] == "KilnStickiness"]
    assert statement["Action"] == ["elasticloadbalancing:ModifyTargetGroupAttributes"]
    assert statement["Resource"] == [tg, cg]
    assert lint(document, community=True) == []
    deploy = policy_document(
        region="eu-west-1", account="123456789012", purposes=PARTS["deploy"], sticky=True
    )
    assert "ModifyTargetGroupAttributes" not in json.dumps(deploy)


def test_pass_role_for_hooks_only_the_listed_roles_only_to_auto_scaling() -> None:
    """Carried lifecycle hooks pass their notification roles: hook_roles, scaling only."""
    plain = policy_document(region="eu-west-1", account="123456789012", purposes=["scaling"])
    assert "iam:PassRole" not in json.dumps(plain), "no hook_roles: nothing to pass"
    document = policy_document(
        region="eu-west-1",
        account="123456789012",
        hook_roles=("hooks/notify", "drain", "drain"),
    )
    (statement,) = [s for s in document["Statement"] if s["Sid"] == "KilnScalingPassHookRoles"]
    assert statement["Action"] == "iam:PassRole"
    assert statement["Resource"] == [
        "arn:aws:iam::123456789012:role/drain",
        "arn:aws:iam::123456789012:role/hooks/notify",
    ]
    assert statement["Condition"] == {
        "StringEquals": {"iam:PassedToService": "autoscaling.amazonaws.com"}
    }
    assert lint(document, community=False) == []
    # only in the scaling policy: the deploy and bake policies pass no hook role
    for part in ("bake", "deploy", "publish"):
        rendered = policy_document(
            region="eu-west-1", account="123456789012", purposes=PARTS[part], hook_roles=("x",)
        )
        assert "autoscaling.amazonaws.com" not in json.dumps(rendered), part
    settings = AwsSettings(hook_roles=["hooks/notify"])
    assert options(settings)["hook_roles"] == ("hooks/notify",)


def test_policy_is_scoped_by_purpose_and_tags() -> None:
    document = policy_document(region="eu-west-1", account="123456789012")
    sids = [s["Sid"] for s in document["Statement"]]
    assert len(sids) == len(set(sids))
    by_sid = {s["Sid"]: s for s in document["Statement"]}
    # everything that deletes or terminates is limited to what kiln tagged, or (the
    # release runners' results) to SSM parameters under kiln's own path
    for statement in document["Statement"]:
        destructive = [a for a in statement["Action"] if ":Delete" in a or ":Terminate" in a]
        results = f"arn:aws:ssm:eu-west-1:123456789012:parameter{ONEOFF_RESULTS}*"
        if statement["Resource"] == results:
            assert statement["Action"] == ["ssm:DeleteParameter", "ssm:GetParameter"]
            continue
        if statement["Sid"] == "KilnPackages":  # SSM parameters under kiln's own path
            lists = "arn:aws:ssm:eu-west-1:123456789012:parameter/kiln/*/packages"
            assert statement["Resource"] == lists + "*"
            continue
        if statement["Sid"] == "KilnScalingOwnAlarms":  # alarms named kiln-*, kiln's own
            alarms = "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:kiln-*"
            assert statement["Resource"] == alarms
            continue
        if destructive or "ec2:DeregisterImage" in statement["Action"]:
            tag_keys = json.dumps(statement["Condition"])
            assert "ResourceTag/kiln:" in tag_keys, statement["Sid"]
    assert by_sid["KilnDescribe"]["Condition"] == {
        "StringEquals": {"aws:RequestedRegion": "eu-west-1"}
    }
    for statement in document["Statement"]:
        resources = statement["Resource"]
        # a promotion copies an AMI from the source environment's region into this one
        cross_region = statement["Sid"] == "KilnPromoteCopyImage"
        for arn in [resources] if isinstance(resources, str) else resources:
            assert arn == "*" or ":eu-west-1:" in arn or (cross_region and ":ec2:*::" in arn)
    # the moto rendering holds exactly the same actions, unscoped
    enforceable = enforceable_document(PURPOSES)
    assert {a for s in enforceable["Statement"] for a in s["Action"]} == actions(PURPOSES)
    assert all(s["Resource"] == "*" and "Condition" not in s for s in enforceable["Statement"])


# ---------------------------------------------------------------- IAM enforced


def _base_image(admin: Aws) -> str:
    source = SOURCE_AMI
    instance = admin.ec2.run_instances(ImageId=source, MinCount=1, MaxCount=1)
    instance_id = instance["Instances"][0]["InstanceId"]
    image = admin.ec2.create_image(InstanceId=instance_id, Name=f"debian-12-{time.time_ns()}")
    admin.ec2.terminate_instances(InstanceIds=[instance_id])
    return image["ImageId"]


def _deploy_aws(admin: Aws, team: str, document: dict[str, Any] | None = None) -> Aws:
    documents = {"bake": document} if document else enforceable_documents(["bake"])
    user = create_deploy_user(admin, team, parts=["bake"], documents=documents)
    assert user.access_key_id and user.secret_access_key
    return connect(
        AwsSettings(), access_key_id=user.access_key_id, secret_access_key=user.secret_access_key
    )


def _record(aws: Aws) -> set[str]:
    """Every IAM action this session's clients perform, from botocore's own events."""
    calls: set[str] = set()

    def seen(model: Any, **_kwargs: Any) -> None:
        calls.add(f"{model.service_model.signing_name}:{model.name}")

    aws.session.events.register("before-call", seen)
    return calls


def test_deploy_user_bakes_lists_prunes_and_reaps_with_exactly_the_policy(
    enforced: Aws, tmp_path: Path, home: Home, loopback_target: TargetFactory
) -> None:
    base = _base_image(enforced)
    subnet = enforced.ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    deploy = _deploy_aws(enforced, "ci")
    calls = _record(deploy)  # before the first client exists, so every call is seen
    extra = f'base_image = "{base}"\nsubnet_id = "{subnet}"\n'
    notes: list[str] = []

    first = bake_ami(
        write_app(tmp_path / "app", extra=extra),
        home,
        aws=deploy,
        ssh_target=loopback_target,
        progress=notes.append,
    )
    again = bake_ami(write_app(tmp_path / "app", extra=extra), home, aws=deploy)
    assert again.reused and again.ami == first.ami
    time.sleep(1.1)  # AMI creation dates have one-second resolution
    # the boot test through a target group: ELB (moto: always healthy) judges the instance
    vpc = enforced.ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["VpcId"]
    group = enforced.client("elbv2").create_target_group(
        Name="boot-test", Protocol="HTTP", Port=3000, VpcId=vpc, HealthCheckPath="/health"
    )["TargetGroups"][0]["TargetGroupArn"]
    tested = f'{extra}boot_test_target_group_arn = "{group}"\n'
    second = bake_ami(
        write_app(tmp_path / "app", extra=tested, version="2"),
        home,
        aws=deploy,
        ssh_target=loopback_target,
        progress=notes.append,
        boot_test=True,
    )
    assert second.verified
    # a failed boot test reads the instance's console
    failing = extra + '[health]\ninterval = "0.05s"\ngrace = "0s"\n'
    with pytest.raises(BootTestFailed):
        bake_ami(
            write_app(tmp_path / "app", extra=failing), home, aws=deploy, boot_test=True,
            checker=lambda _instance: False,
        )  # fmt: skip
    assert [a.id for a in list_amis(deploy, "acme")] == [second.ami, first.ami]
    assert read_packages(deploy, "acme", first.ami)  # the bake kept its package list
    pruned = prune_amis(deploy, "acme", keep=1)
    assert [a.id for a in pruned.deleted] == [first.ami]
    assert read_packages(deploy, "acme", first.ami) is None  # gone with its AMI
    assert reap(deploy).removed == ()
    assert leftovers(enforced) == {}

    # every call kiln made is in the policy, and the policy holds nothing unused
    assert calls == actions(PURPOSES) - IMPLICIT_BAKE_ACTIONS
    # the deploy user's keys never show up in what kiln says
    key_id = deploy.session.get_credentials().access_key
    said = json.dumps([first.summary(), second.summary(), notes])
    assert key_id not in said
    # ... nor in kiln's state, and the builders' private SSH keys never touched disk
    secret = deploy.session.get_credentials().secret_key
    for path in home.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key_id.encode() not in data and secret.encode() not in data, path
            assert b"PRIVATE KEY" not in data, path


def test_calls_outside_the_policy_are_denied_and_reported_clearly(
    enforced: Aws, tmp_path: Path, home: Home, loopback_target: TargetFactory
) -> None:
    base = _base_image(enforced)
    deploy = _deploy_aws(enforced, "ci-denied")
    outside = r"AWS denied DescribeVpcs \(AccessDenied\)"
    with pytest.raises(AwsError, match=outside) as denied, aws_errors("listing VPCs"):
        deploy.ec2.describe_vpcs()
    assert denied.value.hint and "kiln aws policy" in denied.value.hint
    # a deploy key cannot mint more deploy users
    with pytest.raises(AwsError, match="AWS denied"):
        create_deploy_user(deploy, "escalate")

    # a policy missing one action: the bake fails on exactly that call, cleanly
    document = enforceable_document(PURPOSES)
    for statement in document["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a != "ec2:CreateImage"]
    document["Statement"] = [s for s in document["Statement"] if s["Action"]]
    crippled = _deploy_aws(enforced, "ci-no-create-image", document)
    with pytest.raises(AwsError, match=r"AWS denied CreateImage \(AccessDenied\)") as failed:
        bake_ami(
            write_app(tmp_path / "app", extra=f'base_image = "{base}"\n', version="3"),
            home,
            aws=crippled,
            ssh_target=loopback_target,
        )
    assert crippled.session.get_credentials().access_key not in str(failed.value)
    assert leftovers(enforced) == {}


def _stored(aws: Aws, name: str) -> Any:
    arn = f"arn:aws:iam::123456789012:policy/kiln/{name}"
    default = aws.iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    document = aws.iam.get_policy_version(PolicyArn=arn, VersionId=default)["PolicyVersion"]
    raw = document["Document"]
    return json.loads(raw) if isinstance(raw, str) else raw


def test_create_deploy_user_converges_and_rotates(aws: Aws) -> None:
    first = create_deploy_user(aws, "web")
    assert first.created and first.secret_access_key and first.user == "deploy-user-web"
    names = ["kiln-web-bake", "kiln-web-deploy", "kiln-web-scaling"]
    assert list(first.policies) == names
    attached = aws.iam.list_attached_user_policies(UserName="deploy-user-web")["AttachedPolicies"]
    assert sorted(p["PolicyName"] for p in attached) == names
    assert aws.iam.list_user_policies(UserName="deploy-user-web")["PolicyNames"] == []
    for part in ("bake", "deploy", "scaling"):  # publish: nothing asked for, not attached
        expected = policy_document(region=aws.region, account="123456789012", purposes=PARTS[part])
        assert _stored(aws, f"kiln-web-{part}") == expected

    again = create_deploy_user(aws, "web")
    assert not again.changed and again.secret_access_key is None
    assert again.access_key_id == first.access_key_id

    aws.iam.create_login_profile(UserName="deploy-user-web", Password="Passw0rd!Passw0rd!")
    fixed = create_deploy_user(aws, "web")
    assert fixed.console_access_removed and fixed.secret_access_key is None

    rotated = create_deploy_user(aws, "web", rotate_key=True)
    assert rotated.secret_access_key and rotated.access_key_id != first.access_key_id
    assert rotated.deleted_keys == (first.access_key_id,)
    keys = aws.iam.list_access_keys(UserName="deploy-user-web")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [rotated.access_key_id]

    with pytest.raises(AwsError, match="cannot be part of an IAM user name"):
        create_deploy_user(aws, "no spaces")


def test_rotation_proves_the_new_key_before_deleting_the_old(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = create_deploy_user(aws, "rot")
    order: list[str] = []
    aws.iam.meta.events.register("before-call", lambda model, **_kw: order.append(model.name))
    real_connect = iam.connect
    checked: list[str | None] = []

    def spy(settings: AwsSettings, **keys: str) -> Aws:
        checked.append(keys.get("access_key_id"))
        fresh = real_connect(settings, **keys)
        fresh.session.events.register(
            "before-call.sts.GetCallerIdentity", lambda **_kw: order.append("NewKeyWorks")
        )
        return fresh

    monkeypatch.setattr(iam, "connect", spy)
    rotated = create_deploy_user(aws, "rot", rotate_key=True)
    assert checked == [rotated.access_key_id]
    assert (
        order.index("CreateAccessKey") < order.index("NewKeyWorks") < order.index("DeleteAccessKey")
    )
    assert rotated.deleted_keys == (first.access_key_id,)

    def rejected(settings: AwsSettings, **keys: str) -> Aws:
        fresh = real_connect(settings, **keys)
        error = {"Error": {"Code": "InvalidClientTokenId", "Message": "not valid"}}
        http = type("Http", (), {"status_code": 403, "headers": {}, "text": ""})()
        fresh.session.events.register(
            "before-call.sts.GetCallerIdentity", lambda **_kw: (http, error)
        )
        return fresh

    monkeypatch.setattr(iam, "connect", rejected)
    monkeypatch.setattr(iam, "KEY_VERIFY_WAIT", 0.0)
    with pytest.raises(AwsError, match="new access key does not work"):
        create_deploy_user(aws, "rot", rotate_key=True)
    keys = aws.iam.list_access_keys(UserName="deploy-user-rot")["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [rotated.access_key_id]  # the old one works on


def test_policy_updates_are_new_versions_never_more_than_five(aws: Aws) -> None:
    arn = "arn:aws:iam::123456789012:policy/kiln/kiln-ops-bake"
    for n in range(7):  # seven kiln upgrades, each needing a different policy
        document = enforceable_document(PURPOSES)
        document["Statement"][0]["Sid"] = f"Upgrade{n}"
        user = create_deploy_user(aws, "ops", parts=["bake"], documents={"bake": document})
        assert user.policies_changed == ("kiln-ops-bake",)
        versions = aws.iam.list_policy_versions(PolicyArn=arn)["Versions"]
        assert len(versions) == min(n + 1, 5)
        assert _stored(aws, "kiln-ops-bake") == document
    assert not create_deploy_user(aws, "ops", parts=["bake"], documents={"bake": document}).changed


def test_bake_only_user_and_the_old_inline_policy_is_removed(aws: Aws) -> None:
    aws.iam.create_user(UserName="deploy-user-ci", Path="/kiln/")
    aws.iam.put_user_policy(  # what kiln 0.1 did: inline, over IAM's 2,048 on real AWS
        UserName="deploy-user-ci",
        PolicyName="kiln-deploy",
        PolicyDocument=json.dumps(enforceable_document(PURPOSES)),
    )
    both = create_deploy_user(aws, "ci")
    assert "kiln-deploy (inline, removed)" in both.policies_changed
    assert aws.iam.list_user_policies(UserName="deploy-user-ci")["PolicyNames"] == []
    bake_only = create_deploy_user(aws, "ci", parts=["bake"])
    assert bake_only.policies == ("kiln-ci-bake",)
    assert bake_only.policies_changed == ("kiln-ci-deploy", "kiln-ci-scaling")  # detached
    attached = aws.iam.list_attached_user_policies(UserName="deploy-user-ci")["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == ["kiln-ci-bake"]


def _every_region() -> list[tuple[str, str]]:
    session = boto3.session.Session()
    found = [
        (partition, region)
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("ec2", partition_name=partition)
    ]
    assert ("aws-us-gov", "us-gov-west-1") in found and ("aws-cn", "cn-north-1") in found
    return found


@functools.cache
def _longest_publish(partition: str, region: str | None) -> dict[str, Any]:
    """Every publish statement, copying to the five longest-named regions of the partition."""
    names = sorted(
        (r for p, r in _regions() if p == partition and r != region), key=len, reverse=True
    )
    return {**PUBLISH_ALL, "copy_regions": tuple(names[:5])}


@functools.cache
def _regions() -> tuple[tuple[str, str], ...]:
    return tuple(_every_region())


def _longest_options(partition: str, region: str | None) -> dict[str, dict[str, Any]]:
    """Each option of [provider.aws] and [fleet] that grows a policy, at its longest."""
    role = "r" * 64  # the longest role name IAM allows, for iam:PassRole
    # an ALB of 32 characters (the longest name), its listener; a target group likewise
    listener = (
        f"arn:{partition}:elasticloadbalancing:{region}:123456789012:listener/app/"
        + "n" * 32
        + "/0123456789abcdef/0123456789abcdef"
    )
    group = (
        f"arn:{partition}:elasticloadbalancing:{region}:123456789012:targetgroup/"
        + "t" * 32
        + "/0123456789abcdef"
    )
    return {
        "instance role": {"pass_role": role},
        "canary": {"listener": listener},
        "target group": {"target_group": group},
        "boot test": {"boot_test_target_group": group},
        "ssm bake": {"ssm": True, "builder_role": role},
        "sticky": {"sticky": True, "canary_target_group": group},
        # as many hook roles as kiln.toml may list (10), each 128 characters with its path
        "hook roles": {"hook_roles": tuple(f"hooks/{i:02d}" + "h" * 120 for i in range(10))},
    }


def test_every_managed_policy_fits_iam_in_every_partition_region_and_option() -> None:
    """IAM's 6,144-character limit (whitespace not counted): moto does not enforce it.

    Every combination of the options, all on at once included, in every region
    of every partition, each at its longest: every policy stays under 75% of
    the limit, the headroom for the next kiln version's statements.
    """
    largest: dict[str, tuple[int, str]] = {}
    for partition, region in [*_every_region(), ("aws", None)]:
        longest = _longest_options(partition, region)
        names = sorted(longest)
        for account in ("123456789012", None):
            for count in range(len(names) + 1):
                for chosen in itertools.combinations(names, count):
                    given: dict[str, Any] = {}
                    for name in chosen:
                        given |= longest[name]
                    for part, purposes in PARTS.items():
                        publish = _longest_publish(partition, region) if part == "publish" else {}
                        document = policy_document(
                            region=region,
                            account=account,
                            partition=partition,
                            purposes=purposes,
                            **given,
                            **publish,
                        )
                        chars = size(document)
                        if chars > largest.get(part, (0, ""))[0]:
                            largest[part] = (chars, f"{partition} {region} {chosen}")
    assert all(chars <= MANAGED_POLICY_MAX * 0.75 for chars, _ in largest.values()), largest


def test_missing_credentials_and_region_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, moto_url: str, home: Home, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(AwsError, match="no AWS region") as no_region:
        connect(AwsSettings())
    assert no_region.value.hint and "AWS_REGION" in no_region.value.hint

    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    aws = connect(AwsSettings(region=REGION, endpoint_url=moto_url))
    with pytest.raises(AwsError, match="no AWS credentials") as no_keys:
        list_amis(aws, "acme")
    assert no_keys.value.hint and "AWS_ACCESS_KEY_ID" in no_keys.value.hint
