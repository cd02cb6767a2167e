"""The least-privilege IAM policy for exactly the calls kiln's AWS provider makes.

Statements are grouped by purpose (``bake``, ``images``, ``reap``; part 2 adds
``deploy`` and ``promote``) and each has a Sid saying why it exists. Reads cannot be scoped
below the region; everything that changes or deletes is scoped to resources
kiln tagged, so a leaked deploy key cannot touch the rest of the account.

Two renderings of one action set:

- :func:`policy_document`: the scoped policy users attach (and the linter checks);
- :func:`enforceable_document`: the same actions, ``Resource: "*"`` and no
  conditions, which is what moto's IAM enforcement can evaluate (it denies
  EC2 resource ARNs and ignores conditions).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

VERSION = "2012-10-17"
TAG_PREFIX = "kiln:"
BUILD_TAG = "kiln:build-id"
APP_TAG = "kiln:app"
VERIFIED_TAG = "kiln:verified"  # the boot test passed (kiln.aws.boottest)


@dataclass(frozen=True)
class Rule:
    """One policy statement: why (sid, purposes), what (actions), where (resources)."""

    sid: str
    purposes: frozenset[str]
    actions: tuple[str, ...]
    resources: tuple[str, ...]  # templates: {partition} {region} {account}
    condition: dict[str, dict[str, Any]] = field(default_factory=dict)
    only_with: str = ""  # a policy_document argument without which the statement is left out
    unless: str = ""  # one with which it is left out (an SSM bake imports no key pair)


def _p(*names: str) -> frozenset[str]:
    return frozenset(names)


_OWN = "arn:{partition}:ec2:{region}:{account}:"
# where kiln.aws.packages keeps AMIs' package lists: /kiln/<app>/amis/<ami-id>/packages
_PACKAGE_LISTS = "arn:{partition}:ssm:{region}:{account}:parameter/kiln/*/packages"
_ANY_OWNER = "arn:{partition}:ec2:{region}::"
_TAGGED_AT_CREATE = {"StringLike": {f"aws:RequestTag/{BUILD_TAG}": "*"}}
_BUILT_BY_KILN = {"StringLike": {f"ec2:ResourceTag/{BUILD_TAG}": "*"}}
FLEET_TAG = "kiln:fleet"
LOCK_TAG = "kiln:lock"
LOCK_TAG_KEYS = ("kiln:lock", "kiln:holder", "kiln:expires", "kiln:started", "kiln:deployment")
# Every tag kiln writes: its own keys and Name. Tags are written only by the call
# that creates the resource (ec2:CreateAction), never onto something that exists,
# so a leaked key cannot tag a stranger's resource into one it may delete.
_KILN_KEYS_ONLY = {"ForAllValues:StringLike": {"aws:TagKeys": ["kiln:*", "Name"]}}


def _on_create(*actions: str) -> dict[str, dict[str, Any]]:
    return {"StringEquals": {"ec2:CreateAction": list(actions)}, **_KILN_KEYS_ONLY}


RULES: tuple[Rule, ...] = (
    Rule(
        sid="KilnDescribe",
        purposes=_p("bake", "images", "reap"),
        actions=(
            "autoscaling:DescribeAutoScalingGroups",  # prune keeps AMIs of warm groups
            "ec2:DescribeImages",
            "ec2:DescribeInstances",
            "ec2:DescribeKeyPairs",
            "ec2:DescribeSecurityGroups",
            "ec2:DescribeSubnets",
        ),
        resources=("*",),
        condition={"StringEquals": {"aws:RequestedRegion": "{region}"}},
    ),
    Rule(
        sid="KilnBakeLaunchBuilder",
        purposes=_p("bake"),
        actions=("ec2:RunInstances",),
        resources=(
            _ANY_OWNER + "image/*",
            _OWN + "subnet/*",
            _OWN + "security-group/*",
            _OWN + "key-pair/*",
            _OWN + "instance/*",
            _OWN + "volume/*",
            _OWN + "network-interface/*",
        ),
    ),
    Rule(
        sid="KilnBakeImportTaggedKeyPair",
        purposes=_p("bake"),
        actions=("ec2:ImportKeyPair",),
        resources=(_OWN + "key-pair/*",),
        condition=_TAGGED_AT_CREATE,
        unless="ssm",
    ),
    Rule(
        sid="KilnBakeCreateSecurityGroup",
        purposes=_p("bake"),
        actions=("ec2:CreateSecurityGroup",),
        resources=(_OWN + "security-group/*", _OWN + "vpc/*"),
    ),
    Rule(
        sid="KilnTagOnCreate",
        purposes=_p("bake"),
        actions=("ec2:CreateTags",),
        resources=(
            _OWN + "key-pair/*",
            _OWN + "security-group/*",
            _OWN + "instance/*",
            _OWN + "volume/*",
            _ANY_OWNER + "image/*",
            _ANY_OWNER + "snapshot/*",
        ),
        condition=_on_create("ImportKeyPair", "CreateSecurityGroup", "RunInstances", "CreateImage"),
    ),
    Rule(
        sid="KilnManageOwnTemporaryResources",
        purposes=_p("bake", "reap"),
        actions=(
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:DeleteSecurityGroup",
            "ec2:DeleteKeyPair",
            "ec2:StopInstances",
            "ec2:TerminateInstances",
        ),
        resources=(_OWN + "security-group/*", _OWN + "key-pair/*", _OWN + "instance/*"),
        condition=_BUILT_BY_KILN,
    ),
    Rule(  # only from kiln's own builder: never an image of somebody else's disk; and
        # its console, so a failed boot test shows why (one statement: the bake's headroom)
        sid="KilnBakeOwnBuilder",
        purposes=_p("bake"),
        actions=("ec2:CreateImage", "ec2:GetConsoleOutput"),
        resources=(_OWN + "instance/*",),
        condition=_BUILT_BY_KILN,
    ),
    Rule(  # [provider.aws] boot_test_target_group_arn: a read (rendered into KilnDescribe)
        sid="KilnDescribe",
        purposes=_p("bake"),
        actions=("elasticloadbalancing:DescribeTargetHealth",),
        resources=("*",),
        condition={"StringEquals": {"aws:RequestedRegion": "{region}"}},
    ),
    Rule(  # only the boot test's own target group, and only when kiln.toml names one
        sid="KilnBootTestTargets",
        purposes=_p("bake"),
        actions=("elasticloadbalancing:DeregisterTargets", "elasticloadbalancing:RegisterTargets"),
        resources=("{boot_test_target_group}",),
        only_with="boot_test_target_group",
    ),
    Rule(  # a passed boot test: only this key, only on AMIs kiln tagged at creation
        sid="KilnBootTestMarkVerified",
        purposes=_p("bake"),
        actions=("ec2:CreateTags",),
        resources=(_ANY_OWNER + "image/*",),
        condition={
            "StringLike": {f"ec2:ResourceTag/{APP_TAG}": "*"},
            "ForAllValues:StringEquals": {"aws:TagKeys": [VERIFIED_TAG]},
        },
    ),
    Rule(
        sid="KilnBakeCreateImage",
        purposes=_p("bake"),
        actions=("ec2:CreateImage",),
        resources=(_ANY_OWNER + "image/*", _ANY_OWNER + "snapshot/*"),
    ),
    # bake_via = "ssm": the builder is reached through Run Command, not SSH
    Rule(  # the one AWS-owned document kiln runs: a shell script
        sid="KilnBakeRunShellScript",
        purposes=_p("ssm"),
        actions=("ssm:SendCommand",),
        resources=("arn:{partition}:ssm:{region}::document/AWS-RunShellScript",),
        only_with="ssm",
    ),
    Rule(  # ...on kiln's own builders only (tagged kiln:build-id at launch)
        sid="KilnBakeRunCommandOnOwnBuilder",
        purposes=_p("ssm"),
        actions=("ssm:SendCommand",),
        resources=(_OWN + "instance/*",),
        condition={"StringLike": {f"ssm:resourceTag/{BUILD_TAG}": "*"}},
        only_with="ssm",
    ),
    Rule(  # a command's result (no resource-level permissions exist for it): a read,
        # rendered into KilnDescribe (same Sid) to keep the bake policy's headroom
        sid="KilnDescribe",
        purposes=_p("ssm"),
        actions=("ssm:GetCommandInvocation",),
        resources=("*",),
        condition={"StringEquals": {"aws:RequestedRegion": "{region}"}},
        only_with="ssm",
    ),
    Rule(  # an AMI's package list beside it (kiln.aws.packages): only those parameters
        sid="KilnPackages",
        purposes=_p("bake", "images", "reap"),
        actions=("ssm:DeleteParameters", "ssm:GetParametersByPath", "ssm:PutParameter"),
        resources=(_PACKAGE_LISTS + "*",),  # the path and its parts
    ),
    Rule(
        sid="KilnPruneOwnImages",
        purposes=_p("images", "reap"),
        actions=("ec2:DeregisterImage", "ec2:DeleteSnapshot"),
        resources=(_ANY_OWNER + "image/*", _ANY_OWNER + "snapshot/*"),
        condition={"StringLike": {f"ec2:ResourceTag/{APP_TAG}": "*"}},
    ),
)


# -- server-group deployments (part 2: kiln.aws.provider, deployments, awsstate) -------
# PURPOSES stays the bake side; ALL_PURPOSES (every default below) adds these.

_ASG = "arn:{partition}:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/"
_ELB = "arn:{partition}:elasticloadbalancing:{region}:{account}:"
_SSM = "arn:{partition}:ssm:{region}:{account}:"
ONEOFF_RESULTS = "/kiln/oneoff/"  # SSM parameters: /kiln/oneoff/<app>/<runner's build id>
_FLEET_OWNED = {"StringLike": {f"ec2:ResourceTag/{FLEET_TAG}": "*"}}

DEPLOY_RULES: tuple[Rule, ...] = (
    Rule(  # promote: DescribeImages finds the source AMI and an earlier copy
        sid="KilnDeployDescribe",
        purposes=_p("deploy", "promote"),
        actions=(
            "autoscaling:DescribeAutoScalingGroups",
            "autoscaling:DescribeScalingActivities",  # why a launch failed
            "ec2:DescribeImages",
            "ec2:DescribeInstances",
            "ec2:DescribeLaunchTemplateVersions",
            "ec2:DescribeSecurityGroups",
            "elasticloadbalancing:DescribeLoadBalancers",
            "elasticloadbalancing:DescribeTargetGroupAttributes",
            "elasticloadbalancing:DescribeTargetGroups",
            "elasticloadbalancing:DescribeTargetHealth",
        ),
        resources=("*",),
        condition={"StringEquals": {"aws:RequestedRegion": "{region}"}},
    ),
    Rule(  # consoles: why an instance failed; a release runner (kiln.aws.oneoff) always ends
        sid="KilnDeployOwnInstancesAndTemplates",
        purposes=_p("deploy"),
        actions=("ec2:GetConsoleOutput", "ec2:TerminateInstances"),
        resources=(_OWN + "instance/*",),
        condition=_FLEET_OWNED,
    ),
    Rule(  # the fleet's template and its server groups (named kiln-*), tagged as created
        sid="KilnDeployCreateTagged",
        purposes=_p("deploy"),
        actions=("autoscaling:CreateAutoScalingGroup", "ec2:CreateLaunchTemplate"),
        resources=(_OWN + "launch-template/*", _ASG + "kiln-*"),
        condition={"StringLike": {f"aws:RequestTag/{FLEET_TAG}": "*"}},
    ),
    Rule(  # the fleet's template (rendered into the statement above: same tag condition)
        sid="KilnDeployOwnInstancesAndTemplates",
        purposes=_p("deploy"),
        actions=(
            "ec2:CreateLaunchTemplateVersion",
            "ec2:DeleteLaunchTemplateVersions",  # old history beyond the newest 100
            "ec2:ModifyLaunchTemplate",
        ),
        resources=(_OWN + "launch-template/*",),
        condition=_FLEET_OWNED,
    ),
    Rule(
        sid="KilnDeployManageOwnServerGroups",
        purposes=_p("deploy"),
        actions=(
            "autoscaling:AttachLoadBalancerTargetGroups",
            "autoscaling:CreateOrUpdateTags",
            "autoscaling:DeleteAutoScalingGroup",
            "autoscaling:DeleteTags",
            "autoscaling:DetachLoadBalancerTargetGroups",
            "autoscaling:TerminateInstanceInAutoScalingGroup",
            "autoscaling:UpdateAutoScalingGroup",
        ),
        resources=(_ASG + "kiln-*",),
        condition={
            "StringLike": {f"autoscaling:ResourceTag/{FLEET_TAG}": "*"},
            "ForAllValues:StringLike": {"aws:TagKeys": ["kiln:*"]},
        },
    ),
    Rule(  # one target group when kiln.toml names it (policy_document(target_group=...))
        sid="KilnDeployTargets",
        purposes=_p("deploy"),
        actions=("elasticloadbalancing:DeregisterTargets", "elasticloadbalancing:RegisterTargets"),
        resources=("{target_group}",),
    ),
    Rule(  # the canary's reads: the listener's action, ALB counts per target group (both
        # without resource-level permissions); rendered into the statement above (same Sid),
        # and only with a listener_arn: without one there is no canary on AWS
        sid="KilnDeployDescribe",
        purposes=_p("deploy"),
        actions=("cloudwatch:GetMetricData", "elasticloadbalancing:DescribeListeners"),
        resources=("*",),
        condition={"StringEquals": {"aws:RequestedRegion": "{region}"}},
        only_with="listener",
    ),
    Rule(  # the canary's weights, on the one listener kiln.toml names (listener_arn), if any;
        # rendered into the statement above (same Sid): the deploy policy keeps its headroom
        sid="KilnDeployTargets",
        purposes=_p("deploy"),
        actions=("elasticloadbalancing:ModifyListener",),
        resources=("{listener}",),
        only_with="listener",
    ),
    Rule(
        sid="KilnDeployLockCreate",
        purposes=_p("deploy"),
        actions=("ec2:CreateSecurityGroup",),
        resources=(_OWN + "security-group/*", _OWN + "vpc/*"),
    ),
    Rule(  # promote: a copied AMI gets the source's kiln tags as it is created
        sid="KilnDeployTagOnCreate",
        purposes=_p("deploy", "promote"),
        actions=("ec2:CreateTags",),
        resources=(
            _OWN + "security-group/*",
            _OWN + "launch-template/*",
            _OWN + "instance/*",
            _OWN + "volume/*",
            _ANY_OWNER + "image/*",
        ),
        condition=_on_create(
            "CreateSecurityGroup", "CreateLaunchTemplate", "RunInstances", "CopyImage"
        ),
    ),
    Rule(
        sid="KilnDeployLockHeartbeatAndRelease",
        purposes=_p("deploy"),
        actions=("ec2:CreateTags", "ec2:DeleteSecurityGroup"),
        resources=(_OWN + "security-group/*",),
        condition={
            "StringLike": {f"ec2:ResourceTag/{LOCK_TAG}": "*"},
            "ForAllValues:StringEquals": {"aws:TagKeys": list(LOCK_TAG_KEYS)},
        },
    ),
    Rule(
        sid="KilnDeployLaunchFromTemplates",
        purposes=_p("deploy"),
        actions=("ec2:RunInstances",),
        resources=(
            _ANY_OWNER + "image/*",
            _OWN + "subnet/*",
            _OWN + "security-group/*",
            _OWN + "launch-template/*",
            _OWN + "instance/*",
            _OWN + "volume/*",
            _OWN + "network-interface/*",
        ),
    ),
    Rule(  # what the release runner reported (its instance role writes it)
        sid="KilnDeployReleaseResult",
        purposes=_p("deploy"),
        actions=("ssm:DeleteParameter", "ssm:GetParameter"),
        resources=(_SSM + "parameter" + ONEOFF_RESULTS + "*",),
    ),
)
RULES = RULES + DEPLOY_RULES

# -- what each new server group inherits (kiln.aws.carry) ------------------------------
# A fourth managed policy: with it in the deploy policy, that one passed 75% of IAM's
# limit in GovCloud and the ISO partitions (4,670 of 6,144 characters).

SCALING_RULES: tuple[Rule, ...] = (
    Rule(
        sid="KilnScalingDescribe",
        purposes=_p("scaling"),
        actions=(
            "autoscaling:DescribeLifecycleHooks",
            "autoscaling:DescribePolicies",
            "autoscaling:DescribeScheduledActions",
        ),
        resources=("*",),
        condition={"StringEquals": {"aws:RequestedRegion": "{region}"}},
    ),
    Rule(  # onto kiln's own new groups only: the serving group's policies, hooks, warm pool
        sid="KilnScalingCarryToOwnGroups",
        purposes=_p("scaling"),
        actions=(
            "autoscaling:PutLifecycleHook",
            "autoscaling:PutScalingPolicy",
            "autoscaling:PutScheduledUpdateGroupAction",
            "autoscaling:PutWarmPool",
        ),
        resources=(_ASG + "kiln-*",),
        condition={"StringLike": {f"autoscaling:ResourceTag/{FLEET_TAG}": "*"}},
    ),
    Rule(  # [fleet] sticky set (kiln.aws.sticky): the stickiness attributes of kiln.toml's
        # target groups, the canary's too; here, not in the deploy policy, for its headroom
        sid="KilnStickiness",
        purposes=_p("scaling"),
        actions=("elasticloadbalancing:ModifyTargetGroupAttributes",),
        resources=("{target_group}", "{canary_target_group}"),
        only_with="sticky",
    ),
    Rule(  # the alarms acting on a step or simple policy; kiln's own, to delete with a group
        sid="KilnScalingReadAlarms",
        purposes=_p("scaling"),
        actions=("cloudwatch:DescribeAlarms",),
        resources=("arn:{partition}:cloudwatch:{region}:{account}:alarm:*",),
    ),
    Rule(  # a carried policy's alarms, named after kiln's group (kiln.aws.alarms); deleted
        # with it. No tags on them (that would need cloudwatch:TagResource too).
        sid="KilnScalingOwnAlarms",
        purposes=_p("scaling"),
        actions=("cloudwatch:DeleteAlarms", "cloudwatch:PutMetricAlarm"),
        resources=("arn:{partition}:cloudwatch:{region}:{account}:alarm:kiln-*",),
    ),
)
RULES = RULES + SCALING_RULES

# -- promotion between environments (kiln.aws.promote): an AMI copied to another region ---
# (its tags ride on CopyImage: KilnDeployTagOnCreate; its lookups: KilnDeployDescribe)

PROMOTE_RULES: tuple[Rule, ...] = (
    Rule(  # the copy lands in this region; the source may be in any region of the account
        sid="KilnPromoteCopyImage",
        purposes=_p("promote"),
        actions=("ec2:CopyImage",),
        resources=(
            _ANY_OWNER.replace("{region}", "*") + "image/*",
            _ANY_OWNER.replace("{region}", "*") + "snapshot/*",
        ),
    ),
)
RULES = RULES + PROMOTE_RULES

# -- AMIs for organisations (kiln.aws.regions, publish, disks) ------------------------
# A third managed policy, attached beside the bake one: copies to other regions,
# sharing, deprecation, KMS keys. Each statement is rendered only when kiln.toml
# asks for what it allows (policy_document(copy_regions=, share=, deprecate=, kms=)):
# sharing in particular is never granted unasked, since a key that may share an
# AMI may share it with anyone.

_ANY_REGION = "arn:{partition}:ec2:*::"
_IN_COPY_REGIONS = {"StringEquals": {"aws:RequestedRegion": "{copy_regions}"}}
_IN_AMI_REGIONS = {"StringEquals": {"aws:RequestedRegion": "{ami_regions}"}}
_OWN_AMI = {f"ec2:ResourceTag/{APP_TAG}": "*"}
PUBLISHED_TAG = "kiln:published"  # kiln.aws.publish: what was applied to the AMI

PUBLISH_RULES: tuple[Rule, ...] = (
    Rule(
        sid="KilnCopiesDescribe",  # copies, and what uses them before prune removes one
        purposes=_p("publish"),
        actions=(
            "autoscaling:DescribeAutoScalingGroups",
            "ec2:DescribeImages",
            "ec2:DescribeInstances",
        ),
        resources=("*",),
        condition=_IN_COPY_REGIONS,
        only_with="copy_regions",
    ),
    Rule(
        sid="KilnCopiesCopyImage",
        purposes=_p("publish"),
        actions=("ec2:CopyImage",),
        resources=(_ANY_REGION + "image/*", _ANY_REGION + "snapshot/*"),
        condition=_IN_COPY_REGIONS,
        only_with="copy_regions",
    ),
    Rule(
        sid="KilnCopiesTagOnCreate",
        purposes=_p("publish"),
        actions=("ec2:CreateTags",),
        resources=(_ANY_REGION + "image/*", _ANY_REGION + "snapshot/*"),
        condition={
            "StringEquals": {
                "ec2:CreateAction": ["CopyImage"],
                "aws:RequestedRegion": "{copy_regions}",
            },
            **_KILN_KEYS_ONLY,
        },
        only_with="copy_regions",
    ),
    Rule(
        sid="KilnCopiesPrune",  # with their source, and a failed copy before copying again
        purposes=_p("publish"),
        actions=("ec2:DeleteSnapshot", "ec2:DeregisterImage"),
        resources=(_ANY_REGION + "image/*", _ANY_REGION + "snapshot/*"),
        condition={"StringLike": _OWN_AMI, **_IN_COPY_REGIONS},
        only_with="copy_regions",
    ),
    Rule(
        sid="KilnShareOwnImages",
        purposes=_p("publish"),
        actions=("ec2:ModifyImageAttribute", "ec2:ModifySnapshotAttribute"),
        resources=(_ANY_REGION + "image/*", _ANY_REGION + "snapshot/*"),
        condition={"StringLike": _OWN_AMI, **_IN_AMI_REGIONS},
        only_with="share",
    ),
    Rule(
        sid="KilnDeprecateOwnImages",
        purposes=_p("publish"),
        actions=("ec2:EnableImageDeprecation",),
        resources=(_ANY_REGION + "image/*",),
        condition={"StringLike": _OWN_AMI, **_IN_AMI_REGIONS},
        only_with="deprecate",
    ),
    Rule(  # only this key, only on AMIs kiln tagged at creation
        sid="KilnMarkPublished",
        purposes=_p("publish"),
        actions=("ec2:CreateTags",),
        resources=(_ANY_REGION + "image/*",),
        condition={
            "StringLike": _OWN_AMI,
            "ForAllValues:StringEquals": {"aws:TagKeys": [PUBLISHED_TAG]},
            **_IN_AMI_REGIONS,
        },
        only_with="publishes",
    ),
    Rule(  # kiln checks the key itself; EC2 uses it on the caller's behalf
        sid="KilnEncryptWithKey",
        purposes=_p("publish"),
        actions=(
            "kms:Decrypt",
            "kms:DescribeKey",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:ReEncryptFrom",
            "kms:ReEncryptTo",
        ),
        resources=("arn:{partition}:kms:*:{account}:key/*",),
        condition={"StringEquals": {"kms:ViaService": "{ec2_services}"}},
        only_with="kms",
    ),
    Rule(  # the grant EBS keeps on the key for the volume's life; only for AWS resources
        sid="KilnEncryptGrant",
        purposes=_p("publish"),
        actions=("kms:CreateGrant",),
        resources=("arn:{partition}:kms:*:{account}:key/*",),
        condition={
            "StringEquals": {"kms:ViaService": "{ec2_services}"},
            "Bool": {"kms:GrantIsForAWSResource": "true"},
        },
        only_with="kms",
    ),
    Rule(
        sid="KilnCheckKey",  # exists, enabled, symmetric, shareable: before any launch
        purposes=_p("publish"),
        actions=("kms:DescribeKey",),
        resources=("arn:{partition}:kms:*:{account}:key/*",),
        condition=_IN_AMI_REGIONS,
        only_with="kms",
    ),
    Rule(  # kiln promote into another account: may that account use the AMI's key?
        sid="KilnCheckKey",
        purposes=_p("publish"),
        actions=("kms:GetKeyPolicy",),
        resources=("arn:{partition}:kms:*:{account}:key/*",),
        condition=_IN_AMI_REGIONS,
        only_with="promote_kms",
    ),
)
RULES = RULES + PUBLISH_RULES
# Used by EC2 on the caller's behalf when it encrypts volumes and snapshots with a
# customer managed key (RunInstances, CreateImage, CopyImage); kiln never calls them.
IMPLICIT_PUBLISH_ACTIONS = frozenset(
    {
        "kms:CreateGrant",
        "kms:Decrypt",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
    }
)

# AWS checks ec2:RunInstances on the caller when Auto Scaling launches from a
# launch template; kiln also calls it itself, for a release runner. (ec2:CreateTags
# is checked that way too, for the new instances' tags, and kiln also calls it:
# the lock's heartbeat.) With [provider.aws] instance_profile set, AWS also checks
# iam:PassRole on that one role: grant it for that role's ARN only (a wildcard
# PassRole next to RunInstances is a privilege escalation).
IMPLICIT_DEPLOY_ACTIONS: frozenset[str] = frozenset()
# A bake's tags ride on the calls that create the resources (TagSpecifications),
# and AWS checks CreateTags (with ec2:CreateAction) for them on the caller; the
# one CreateTags call kiln makes itself is a passed boot test's kiln:verified.
IMPLICIT_BAKE_ACTIONS: frozenset[str] = frozenset()

PURPOSES = ("bake", "images", "reap")
SSM_PURPOSES = ("ssm",)  # a bake through Systems Manager (rendered with ssm=True only)
DEPLOY_PURPOSES = ("deploy",)
PROMOTE_PURPOSES = ("promote",)
PUBLISH_PURPOSES = ("publish",)
SCALING_PURPOSES = ("scaling",)
# the default rendering: everything kiln does
ALL_PURPOSES = (
    *PURPOSES,
    *SSM_PURPOSES,
    *DEPLOY_PURPOSES,
    *PROMOTE_PURPOSES,
    *SCALING_PURPOSES,
    *PUBLISH_PURPOSES,
)
# what an SSM bake never calls: the SSH path's key pair and ingress rule
SSH_ONLY_ACTIONS = frozenset(
    {"ec2:ImportKeyPair", "ec2:DeleteKeyPair", "ec2:AuthorizeSecurityGroupIngress"}
)

# The managed policies a deploy user gets: one per part, so a CI user that only
# bakes can hold "bake" alone. IAM counts a managed policy's size without
# whitespace and allows 6,144 characters each (inline policies: 2,048 for all of
# a user's together, which kiln's policy never fits).
PARTS: dict[str, tuple[str, ...]] = {
    "bake": (*PURPOSES, *SSM_PURPOSES),
    "deploy": (*DEPLOY_PURPOSES, *PROMOTE_PURPOSES),
    "scaling": SCALING_PURPOSES,  # what new server groups inherit (kiln.aws.carry)
    "publish": PUBLISH_PURPOSES,  # empty, and not attached, unless kiln.toml asks for it
}
MANAGED_POLICY_MAX = 6144


def size(document: dict[str, Any]) -> int:
    """The size IAM checks a policy against: its JSON without whitespace."""
    return len(json.dumps(document, separators=(",", ":")))


def rules_for(purposes: Iterable[str] = ALL_PURPOSES) -> list[Rule]:
    wanted = set(purposes)
    return [rule for rule in RULES if rule.purposes & wanted]


def actions(purposes: Iterable[str] = ALL_PURPOSES) -> set[str]:
    """Every IAM action kiln needs for these purposes."""
    return {action for rule in rules_for(purposes) for action in rule.actions}


def policy_document(
    *,
    region: str | None,
    account: str | None,
    partition: str = "aws",
    purposes: Iterable[str] = ALL_PURPOSES,
    pass_role: str | None = None,
    target_group: str | None = None,
    boot_test_target_group: str | None = None,
    listener: str | None = None,
    ssm: bool = False,
    builder_role: str | None = None,
    sticky: bool = False,
    canary_target_group: str | None = None,
    hook_roles: Sequence[str] = (),
    copy_regions: Sequence[str] = (),
    share: bool = False,
    deprecate: bool = False,
    kms: bool = False,
    promote_kms: bool = False,
) -> dict[str, Any]:
    """The scoped policy: region, account and kiln's own tags narrow every write.

    ``pass_role`` (the fleet's instance role) adds ``iam:PassRole`` for that one
    role, passable to EC2 only: launch templates naming an instance profile need
    it (rendered in the scaling policy, not the deploy one), and so does the boot
    test, which launches with the fleet's launch data.
    ``target_group`` (kiln.toml's ``target_group_arn``) is the only target group
    whose members the deploy statements may change; without it, any in the region.
    ``boot_test_target_group`` (``boot_test_target_group_arn``) is the one target group
    the boot test may register in; without it, the bake may register in none.
    ``listener`` (``listener_arn``) is the only listener a canary may weight;
    without it, none (no canary on AWS without a listener_arn anyway).
    ``ssm`` (``bake_via = "ssm"``) adds Run Command on kiln's own builders, and
    ``builder_role`` (the role of ``builder_instance_profile``) ``iam:PassRole``
    for that one role, so the bake may launch its builder with it.
    ``sticky`` (``[fleet] sticky`` set, either way) lets kiln set the stickiness
    attributes of ``target_group`` and ``canary_target_group``
    (``canary_target_group_arn``; without it, of any target group like ``target_group``).
    ``hook_roles`` (``hook_roles``): the lifecycle hooks' notification roles the
    scaling policy may pass to Auto Scaling when it carries the hooks; without
    them, none.
    ``copy_regions``, ``share``, ``deprecate`` and ``kms`` (see :func:`options`)
    render the publish statements kiln.toml needs; without them, none.
    ``promote_kms`` (``promote_to_accounts`` with ``kms``) lets kiln promote read
    the key policy, to check the target account may use the key.
    """
    values: dict[str, Any] = {
        "partition": partition,
        "region": region or "*",
        "account": account or "*",
    }
    values["target_group"] = target_group or (_ELB + "targetgroup/*/*").format(**values)
    values["boot_test_target_group"] = boot_test_target_group or ""
    values["listener"] = listener or ""
    values["sticky"] = "yes" if sticky else ""
    values["canary_target_group"] = canary_target_group or values["target_group"]
    values["ssm"] = "yes" if ssm else ""
    ami_regions = [region or "*", *copy_regions]
    values |= {
        "copy_regions": list(copy_regions),
        "ami_regions": ami_regions,
        "ec2_services": [f"ec2.{r}.amazonaws.com" for r in ami_regions],
        "share": share,
        "deprecate": deprecate,
        "publishes": share or deprecate,
        "kms": kms,
        "promote_kms": promote_kms and kms,
    }
    statements: list[dict[str, Any]] = []
    for rule in rules_for(purposes):
        if (rule.only_with and not values[rule.only_with]) or (rule.unless and values[rule.unless]):
            continue
        statement: dict[str, Any] = {
            "Sid": rule.sid,
            "Effect": "Allow",
            "Action": sorted(rule.actions),
            "Resource": list(dict.fromkeys(r.format(**values) for r in rule.resources)),
        }
        if len(statement["Resource"]) == 1:
            statement["Resource"] = statement["Resource"][0]
        condition = _render(rule.condition, values)
        if region is None:
            condition.get("StringEquals", {}).pop("aws:RequestedRegion", None)
            if rule.condition.get("StringEquals", {}).get("kms:ViaService"):
                condition["StringLike"] = {
                    **condition.get("StringLike", {}),
                    "kms:ViaService": "ec2.*.amazonaws.com",
                }
                condition["StringEquals"].pop("kms:ViaService")
            condition = {k: v for k, v in condition.items() if v}
        if condition:
            statement["Condition"] = condition
        same = next((s for s in statements if s["Sid"] == rule.sid), None)
        if same is not None:  # a second rule of one statement: its actions and resources join
            assert same.get("Condition") == statement.get("Condition"), rule.sid
            same["Action"] = sorted({*same["Action"], *statement["Action"]})
            joined = [*_listed(same["Resource"]), *_listed(statement["Resource"])]
            joined = list(dict.fromkeys(joined))
            same["Resource"] = joined[0] if len(joined) == 1 else joined
        else:
            statements.append(statement)
    # Roles passed to EC2: the fleet's instance role (fleet launches, rendered in the
    # scaling policy that every deploy user holds beside the deploy one, for the deploy
    # policy's headroom; and boot-test launches) and the SSM builder's role.
    to_ec2: list[tuple[str, str]] = []
    if pass_role and {"scaling", "bake"} & set(purposes):
        to_ec2.append(("KilnDeployPassInstanceRole", pass_role))
    if builder_role and "ssm" in purposes:
        to_ec2.append(("KilnBakePassBuilderRole", builder_role))
    if len(to_ec2) == 1:
        statements.append(_pass_role(to_ec2[0][1], values, sid=to_ec2[0][0]))
    elif to_ec2:  # both: one statement, for the bake policy's headroom
        roles = sorted({role for _sid, role in to_ec2})
        statements.append(_pass_role(roles, values, sid="KilnPassRolesToEc2"))
    if hook_roles and "scaling" in purposes:  # carried lifecycle hooks' notification roles
        statements.append(
            _pass_role(
                sorted(set(hook_roles)),
                values,
                sid="KilnScalingPassHookRoles",
                service="autoscaling.amazonaws.com",
            )
        )
    return {"Version": VERSION, "Statement": statements}


def _listed(resource: str | list[str]) -> list[str]:
    return [resource] if isinstance(resource, str) else resource


def _pass_role(
    role: str | list[str],
    values: dict[str, Any],
    sid: str = "KilnDeployPassInstanceRole",
    service: str = "ec2.amazonaws.com",
) -> dict[str, Any]:
    """``iam:PassRole`` on exactly these roles, to one service only."""
    arns = ["arn:{partition}:iam::{account}:role/".format(**values) + r for r in _listed(role)]
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": "iam:PassRole",
        "Resource": arns[0] if len(arns) == 1 else arns,
        "Condition": {"StringEquals": {"iam:PassedToService": service}},
    }


# What the SSM agent on an SSM bake's builder calls to take and answer Run Command
# (AWS's AmazonSSMManagedInstanceCore grants these and more: State Manager, Parameter Store).
BUILDER_AGENT_ACTIONS = (
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
)


def builder_role_documents() -> dict[str, dict[str, Any]]:
    """The role of ``builder_instance_profile``: EC2 may assume it; its agent's calls."""
    trust = {
        "Version": VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    permissions = {
        "Version": VERSION,
        "Statement": [
            {
                "Sid": "KilnBuilderSsmAgent",
                "Effect": "Allow",
                "Action": list(BUILDER_AGENT_ACTIONS),
                "Resource": "*",  # none of these has resource-level permissions
            }
        ],
    }
    return {"trust": trust, "permissions": permissions}


def builder_role(settings: Any) -> str | None:
    """The role an SSM bake passes to its builder: builder_role or the profile's name."""
    if settings.bake_via != "ssm":
        return None
    role: str | None = settings.builder_role or settings.builder_instance_profile
    return role


def instance_role(settings: Any) -> str | None:
    """The role a deploy passes to instances: [provider.aws] instance_role or the profile."""
    role: str | None = settings.instance_role or settings.instance_profile
    return role


def instance_policy_document(
    *,
    app: str,
    parameters: Iterable[str],
    region: str | None,
    account: str | None,
    partition: str = "aws",
) -> dict[str, Any]:
    """What the fleet's instance role needs: read its secrets, report a release.

    ``parameters``: the SSM names its ``[secrets]`` resolve to
    (:func:`kiln.aws.install.secret_spec`). SecureStrings under a customer
    managed KMS key also need ``kms:Decrypt`` on that key, which kiln cannot know.
    """
    values = {"partition": partition, "region": region or "*", "account": account or "*"}
    arn = (_SSM + "parameter").format(**values)
    statements: list[dict[str, Any]] = []
    names = sorted(set(parameters))
    if names:
        statements.append(
            {
                "Sid": "KilnInstanceSecrets",
                "Effect": "Allow",
                "Action": "ssm:GetParameters",
                "Resource": [arn + name for name in names],
            }
        )
    statements.append(
        {
            "Sid": "KilnInstanceReleaseResult",
            "Effect": "Allow",
            "Action": "ssm:PutParameter",
            "Resource": f"{arn}{ONEOFF_RESULTS}{app}/*",
        }
    )
    return {"Version": VERSION, "Statement": statements}


# moto's IAM names CloudWatch's actions after its endpoint, AWS's IAM after the service
MOTO_PREFIXES = {"cloudwatch:": "monitoring:"}


def enforceable_document(purposes: Iterable[str] = ALL_PURPOSES) -> dict[str, Any]:
    """The same actions per Sid, unscoped: the rendering moto's IAM can evaluate."""
    merged: dict[str, set[str]] = {}
    for rule in rules_for(purposes):
        for action in rule.actions:
            prefix = next((p for p in MOTO_PREFIXES if action.startswith(p)), None)
            moto = MOTO_PREFIXES[prefix] + action[len(prefix) :] if prefix else action
            merged.setdefault(rule.sid, set()).add(moto)
    return {
        "Version": VERSION,
        "Statement": [
            {"Sid": sid, "Effect": "Allow", "Action": sorted(acts), "Resource": "*"}
            for sid, acts in merged.items()
        ],
    }


def enforceable_documents(parts: Iterable[str] = tuple(PARTS)) -> dict[str, dict[str, Any]]:
    """:func:`enforceable_document` per managed policy: what moto tests attach."""
    return {part: enforceable_document(PARTS[part]) for part in parts}


def options(settings: Any, sticky: str | None = None) -> dict[str, Any]:
    """policy_document's arguments for ``[provider.aws]`` (an AwsSettings) and
    ``[fleet] sticky``."""
    return {
        # stickiness is set on target_group_arn (and the canary's) only: none, nothing to set
        "sticky": sticky is not None and bool(settings.target_group_arn),
        "canary_target_group": settings.canary_target_group_arn,
        "pass_role": instance_role(settings),
        "target_group": settings.target_group_arn,
        "boot_test_target_group": settings.boot_test_target_group_arn,
        "listener": settings.listener_arn,
        "ssm": settings.bake_via == "ssm",
        "builder_role": builder_role(settings),
        "hook_roles": tuple(settings.hook_roles),
        "copy_regions": tuple(settings.copy_to_regions),
        # kiln promote shares the one AMI it promotes with promote_to_accounts
        "share": settings.shares or bool(settings.promote_to_accounts),
        "deprecate": settings.deprecate_after is not None,
        "kms": settings.kms_key_id is not None,
        "promote_kms": bool(settings.promote_to_accounts),
    }


def _render(value: Any, values: dict[str, Any]) -> Any:
    if isinstance(value, str):
        name = value[1:-1] if value.startswith("{") and value.endswith("}") else ""
        if isinstance(values.get(name), list):  # a list of regions: the whole value
            found: list[str] = values[name]
            return found[0] if len(found) == 1 else found
        return value.format(**values) if "{" in value and "}" in value else value
    if isinstance(value, list):
        return [_render(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, values) for k, v in value.items()}
    return value
