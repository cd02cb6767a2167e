"""No sequence of calls the policies allow lets a key destroy what kiln did not create.

moto ignores conditions, so this is proven on the documents themselves
(:mod:`policywalk`), over both managed policies together (what a deploy user
holds) and each alone, in every partition; the walk itself is shown to catch
the holes kiln 0.1's policy had.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from policywalk import Statement, lint, obtainable_tags, reachable_destruction

from kiln.aws.policy import PARTS, PUBLISH_RULES, policy_document

# every publish statement (copies, sharing, deprecation, a KMS key) is in the walk
PUBLISH_ALL: dict[str, Any] = {
    "copy_regions": ("us-east-1",),
    "share": True,
    "deprecate": True,
    "kms": True,
    "promote_kms": True,
}
TG = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop/0123456789abcdef"
LISTENER = (
    "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/shop/0123456789abcdef/"
    "fedcba9876543210"
)


def merged(
    partition: str = "aws",
    target_group: str | None = TG,
    listener: str | None = LISTENER,
    **kw: Any,
) -> dict[str, Any]:
    """Both managed policies' statements: what a deploy user holds."""
    statements = []
    for purposes in PARTS.values():
        document = policy_document(
            region="eu-west-1",
            account="123456789012",
            partition=partition,
            purposes=purposes,
            target_group=target_group,
            listener=listener,
            **{**PUBLISH_ALL, **kw},
        )
        statements += document["Statement"]
    return {"Version": "2012-10-17", "Statement": statements}


@pytest.mark.parametrize("partition", ["aws", "aws-cn", "aws-us-gov"])
def test_no_foreign_resource_can_be_tagged_into_reach(partition: str) -> None:
    document = merged(partition, pass_role="shop-web")
    assert reachable_destruction(document) == []
    boot_test_group = TG.replace("shop/", "shop-boot-test/")  # the boot test's, named
    assert reachable_destruction(merged(partition, boot_test_target_group=boot_test_group)) == []
    for part in PARTS:  # each policy alone, too (a bake-only user)
        alone = {"Statement": [s for s in document["Statement"] if _part(s["Sid"]) == part]}
        assert reachable_destruction(alone) == []
    # nothing at all can be tagged onto an existing resource kiln did not create
    statements = [Statement.parse(s) for s in document["Statement"]]
    assert {k: v for k, v in obtainable_tags(statements).items() if v} == {}


def _part(sid: str) -> str:
    if sid in PUBLISH_SIDS:
        return "publish"
    if sid.startswith("KilnScaling"):
        return "scaling"
    return "deploy" if sid.startswith(("KilnDeploy", "KilnPromote")) else "bake"


PUBLISH_SIDS = {rule.sid for rule in PUBLISH_RULES}
MARKS = {"KilnBootTestMarkVerified": "kiln:verified", "KilnMarkPublished": "kiln:published"}


def test_every_tag_write_is_on_create_or_of_the_lock_keys_on_the_lock() -> None:
    for raw in merged()["Statement"]:
        if "ec2:CreateTags" not in raw["Action"]:
            continue
        condition = raw["Condition"]
        keys = (condition.get("ForAllValues:StringLike") or {}).get("aws:TagKeys") or (
            condition.get("ForAllValues:StringEquals") or {}
        ).get("aws:TagKeys")
        assert keys, raw["Sid"]  # aws:TagKeys guards every tag write
        if "ec2:CreateAction" in condition.get("StringEquals", {}):
            assert set(keys) == {"kiln:*", "Name"}
        elif raw["Sid"] in MARKS:  # one key, on AMIs kiln created
            assert keys == [MARKS[raw["Sid"]]]
            assert condition["StringLike"] == {"ec2:ResourceTag/kiln:app": "*"}
        else:
            assert raw["Sid"] == "KilnDeployLockHeartbeatAndRelease"
            assert condition["StringLike"] == {"ec2:ResourceTag/kiln:lock": "*"}
            assert all(k.startswith("kiln:") for k in keys)


def test_without_a_target_group_only_target_membership_is_unpinned() -> None:
    """kiln.toml names the target group; rendered without one, membership of any
    target group in the region may change (no delete, terminate or deregister of
    a resource), and that is the one thing the walk reports."""
    findings = reachable_destruction(merged(target_group=None, listener=None))
    assert {(f.sid, f.action) for f in findings} == {
        ("KilnDeployTargets", "elasticloadbalancing:DeregisterTargets")
    }


def test_the_walk_finds_kiln_0_1_holes() -> None:
    """Each hole the 0.1 policy had, put back one at a time, is found."""
    base = merged()
    holes: dict[str, dict[str, Any]] = {
        # RunInstances and CreateTags on instances and groups, with no condition
        "tag any instance, then terminate": {
            "Sid": "OldLaunchFromTemplates",
            "Effect": "Allow",
            "Action": ["ec2:CreateTags", "ec2:RunInstances"],
            "Resource": "arn:aws:ec2:eu-west-1:123456789012:instance/*",
        },
        # kiln:* tags onto any image or snapshot
        "tag any AMI kiln:app, then deregister": {
            "Sid": "OldTagImagesAndSnapshots",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": "arn:aws:ec2:eu-west-1::image/*",
            "Condition": {"ForAllValues:StringLike": {"aws:TagKeys": "kiln:*"}},
        },
        # any launch template's versions and default
        "change any launch template": {
            "Sid": "OldLaunchTemplates",
            "Effect": "Allow",
            "Action": ["ec2:ModifyLaunchTemplate"],
            "Resource": "arn:aws:ec2:eu-west-1:123456789012:launch-template/*",
        },
    }
    for why, statement in holes.items():
        document = copy.deepcopy(base)
        document["Statement"].append(statement)
        assert reachable_destruction(document), why


@pytest.mark.parametrize("target_group", [TG, None])
def test_both_policies_lint_clean(target_group: str | None) -> None:
    for part, purposes in PARTS.items():
        document = policy_document(
            region="eu-west-1",
            account="123456789012",
            purposes=purposes,
            target_group=target_group,
        )
        for community in (False, True):
            assert lint(document, community=community) == [], part
