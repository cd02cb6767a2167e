"""Promotion on AWS: the AMI that served in one environment serves in the next, unbaked.

An AMI holds the whole image (code and env layer) plus its recipe (port, where
secrets come from), so the next environment can run it as it is only if its
own [env] and recipe are the same: then the AMI is reused where it is (same
account and region) or copied into the target region (``CopyImage``, tags
carried over). A target whose [env] differs runs an AMI derived from it that
differs only in its env file (:mod:`kiln.aws.relayer`); a different recipe is
refused. Into another account, the source account's
keys first share that one AMI (launch permission, snapshot
createVolumePermission) with the target account, which then copies it with its
own keys: production owns its copy, so staging's retention cannot delete it.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln.aws.ami import env_digest
from kiln.aws.images import ENV_TAG, IMAGE_TAG, RECIPE_TAG, Ami, _describe, wait_available
from kiln.aws.session import Aws, aws_errors, tags
from kiln.errors import AwsError, ImageNotFound, PromotionRefused

if TYPE_CHECKING:
    from kiln.aws.relayer import Relayer

Note = Callable[[str], None]


def newest_ami(aws: Aws, image: str) -> Ami | None:
    """The newest available AMI of ``image`` in this session's account and region."""
    found = _describe(
        aws,
        [
            {"Name": f"tag:{IMAGE_TAG}", "Values": [image]},
            {"Name": "state", "Values": ["available"]},
        ],
    )
    return found[0] if found else None


@dataclass(frozen=True)
class Step:
    """One thing a promotion does: ``reuse``, ``share``, ``copy`` or ``derive``."""

    action: str
    text: str  # e.g. "copy ami-1 from eu-west-1 to us-west-2"
    ami: str  # the AMI it acts on (or reuses)
    region: str  # where the result is
    account: str | None = None  # ``share``: the account it is shared with
    image: str | None = None  # ``derive``: the identity the new AMI will have

    def to_json(self) -> dict[str, Any]:
        data = {"action": self.action, "text": self.text, "ami": self.ami, "region": self.region}
        if self.account is not None:
            data["account"] = self.account
        if self.image is not None:
            data["image"] = self.image
        return data


@dataclass(frozen=True)
class PromotionPlan:
    """What promoting ``origin`` into the target does, decided with lookups only.

    ``found``: the AMI the target deploys when it is there already (nothing to
    do but reuse it). Otherwise ``base`` (the target's own copy, when there is
    one), whether the source account shares ``origin`` with ``share_with``
    first, whether it is copied, and whether an AMI is derived from the result.
    """

    image: str  # the image the target deploys: the promoted one, or its derived identity
    origin: Ami
    steps: tuple[Step, ...]
    found: Ami | None = None
    base: Ami | None = None
    share_with: str | None = None
    derive: bool = False

    @property
    def ready(self) -> bool:
        """The target has the AMI it deploys: nothing to share, copy or derive."""
        return self.found is not None


def plan_promotion(
    source: Aws,
    target: Aws,
    image: str,
    *,
    env: dict[str, str],
    recipe: str,
    promote_to: Sequence[str] = (),
    relayer: Relayer | None = None,
) -> PromotionPlan:
    """What :func:`promote_ami` would do, from read-only calls (Describe*, Get*) alone.

    Every refusal (another recipe, an [env] that cannot be derived, an account
    ``promote_to`` does not list, a key the target account may not use) is
    raised here, before anything is shared, copied or launched.
    """
    origin = newest_ami(source, image)
    if origin is None:
        raise ImageNotFound(
            f"image {image} has no available AMI in {source.region}",
            hint="bake it there with 'kiln bake --provider aws' (the source environment's)",
        )
    if origin.tags.get(RECIPE_TAG) != recipe:
        raise PromotionRefused(
            f"{origin.id} was made with another recipe (port or secret sources) than "
            "the target environment's",
            hint="give both environments the same [provider.aws] port, ssm_prefix and [secrets]",
        )
    if origin.tags.get(ENV_TAG) == env_digest(env):
        return _plan_into_target(source, target, origin, image, promote_to)
    if relayer is None:
        raise PromotionRefused(
            f"{origin.id} holds the source environment's [env]; the target's differs, "
            "and on AWS the env layer is inside the AMI",
            hint="keep [env] the same in both environments and put what differs in "
            "[secrets] (SSM, read at boot)",
        )
    wanted = relayer.image_for(origin)
    derived = newest_ami(target, wanted)
    if derived is not None:
        text = f"reuse {derived.id} ({derived.image}: {image} with this environment's [env])"
        step = Step("reuse", text, derived.id, target.region)
        return PromotionPlan(wanted, origin, (step,), found=derived)
    into = _plan_into_target(source, target, origin, image, promote_to)
    base = into.found or into.base
    text = (
        f"derive {wanted} from {base.id if base else 'the copy'} in {target.region}: "
        "a builder run rewrites only the env layer"
    )
    step = Step("derive", text, base.id if base else origin.id, target.region, image=wanted)
    return PromotionPlan(
        wanted, origin, (*into.steps, step), base=base,
        share_with=into.share_with, derive=True,
    )  # fmt: skip


def _plan_into_target(
    source: Aws, target: Aws, origin: Ami, image: str, promote_to: Sequence[str]
) -> PromotionPlan:
    """``origin`` where ``target`` deploys: found there, or to be shared and copied there."""
    here = newest_ami(target, image)
    if here is not None:
        step = Step("reuse", f"reuse {here.id} in {target.region}", here.id, target.region)
        return PromotionPlan(image, origin, (step,), found=here)
    steps: list[Step] = []
    owner, account = _account(source), _account(target)
    share_with = None
    if owner != account:
        check_grantable(source, origin, account, promote_to)
        share_with = account
        text = (
            f"share {origin.id} and its {len(origin.snapshots)} snapshot(s) with account {account}"
        )
        steps.append(Step("share", text, origin.id, source.region, account=account))
    text = f"copy {origin.id} from {source.region} to {target.region}"
    steps.append(Step("copy", text, origin.id, target.region))
    return PromotionPlan(image, origin, tuple(steps), share_with=share_with)


def promote_ami(
    source: Aws,
    target: Aws,
    image: str,
    *,
    env: dict[str, str],
    recipe: str,
    timeout: float,
    note: Note | None = None,
    promote_to: Sequence[str] = (),
    encrypt: tuple[bool, str | None] = (False, None),
    relayer: Relayer | None = None,
) -> tuple[Ami, bool]:
    """The AMI the target deploys (``image``'s, or one derived from it), and whether it is new.

    ``promote_to``: the source environment's ``promote_to_accounts``, the only
    accounts its AMIs may be shared with. ``encrypt``: the target's
    (``encrypted``, ``kms_key_id``), which its copy is encrypted with.
    ``relayer``: how the target derives an AMI with its own [env] when that
    differs (:mod:`kiln.aws.relayer`); without it, a different [env] is refused.
    Carries out :func:`plan_promotion`'s plan.
    """
    say = note or (lambda _msg: None)
    plan = plan_promotion(
        source, target, image, env=env, recipe=recipe, promote_to=promote_to, relayer=relayer
    )
    if plan.found is not None:
        if plan.image != image:
            found = plan.found
            say(f"reusing {found.id} ({found.image}: {image} with this environment's [env])")
        else:
            say(f"reusing {plan.found.id} in {target.region}")
        return plan.found, False
    base = plan.base
    if base is not None:
        say(f"reusing {base.id} in {target.region}")
    else:
        if plan.share_with is not None:
            grant(source, plan.origin, plan.share_with, allowed=promote_to, note=say)
        base = _copy(source, target, plan.origin, image, timeout, say, encrypt)
    if plan.derive:
        assert relayer is not None  # plan_promotion derives only with one
        return relayer.make(target, base, say), True
    return base, True


def _copy(
    source: Aws,
    target: Aws,
    origin: Ami,
    image: str,
    timeout: float,
    say: Note,
    encrypt: tuple[bool, str | None],
) -> Ami:
    """Copy ``origin`` (the target's account may read it) into the target's region."""
    say(f"copying {origin.id} from {source.region} to {target.region}")
    carried = tags({k: v for k, v in origin.tags.items() if k.startswith("kiln:") or k == "Name"})
    with aws_errors(f"copying {origin.id} to {target.region}"):
        copy = target.ec2.copy_image(
            SourceImageId=origin.id,
            SourceRegion=source.region,
            Name=origin.name,
            Description=f"kiln image {image}, copied from {origin.id} in {source.region}",
            TagSpecifications=[{"ResourceType": "image", "Tags": carried}],  # type: ignore[misc,list-item]
            **_encryption(origin, encrypt),
        )["ImageId"]
    ami = wait_available(target, copy, timeout=timeout, note=say)
    if IMAGE_TAG not in ami.tags:
        # Tagging it afterwards would need ec2:CreateTags on an existing AMI, which the
        # deploy policy never grants (tags are written only by the call that creates).
        raise AwsError(
            f"{copy} in {target.region} came out of CopyImage without kiln's tags: the "
            "endpoint ignored TagSpecifications, so kiln cannot find or prune it",
            hint=f"deregister {copy} in {target.region}; promote against an endpoint "
            "that tags copies as they are made (AWS does)",
        )
    return ami


def grant(source: Aws, origin: Ami, account: str, *, allowed: Sequence[str], note: Note) -> None:
    """With the source account's keys: let ``account`` launch and copy this one AMI.

    Launch permission on the AMI, createVolumePermission on its snapshots (what
    CopyImage reads). Only for an account the source environment lists in
    ``promote_to_accounts``: a key that may share may share with anyone, so
    kiln itself keeps to the list. Granting twice is harmless (AWS keeps one).
    """
    check_grantable(source, origin, account, allowed)
    with aws_errors(f"sharing {origin.id} with account {account}"):
        source.ec2.modify_image_attribute(
            ImageId=origin.id, LaunchPermission={"Add": [{"UserId": account}]}
        )
        for snapshot in origin.snapshots:
            source.ec2.modify_snapshot_attribute(
                SnapshotId=snapshot,
                Attribute="createVolumePermission",
                OperationType="add",
                UserIds=[account],
            )
    note(f"{origin.id} and its {len(origin.snapshots)} snapshot(s) shared with account {account}")


def check_grantable(source: Aws, origin: Ami, account: str, allowed: Sequence[str]) -> None:
    """Refuse sharing with an account ``promote_to_accounts`` does not list, or under a key
    that account may not use; read-only (the key's metadata and policy)."""
    if account not in allowed:
        raise PromotionRefused(
            f"the target environment is AWS account {account}, which the source "
            "environment's promote_to_accounts does not list",
            hint=f'add promote_to_accounts = ["{account}"] to the source environment\'s '
            "[provider.aws] (and re-create its deploy user's policies: 'kiln aws policy')",
        )
    check_shareable(source, origin, account)


def check_shareable(source: Aws, origin: Ami, account: str) -> None:
    """An encrypted AMI reaches another account only under a key that account may use.

    AWS managed keys (the default EBS key) cannot be shared at all; a customer
    managed key's policy must let the account decrypt and create grants (EC2
    does both for it when it copies). Checked with the source account's keys.
    """
    if not origin.encrypted:
        return
    key = origin.kms_key_id
    hint = (
        f"bake the source with [provider.aws] kms_key_id = a customer managed key whose "
        f"key policy allows arn:aws:iam::{account}:root kms:Decrypt, kms:DescribeKey, "
        "kms:CreateGrant and kms:ReEncrypt* (docs/environments.md#another-account)"
    )
    if key is None:
        raise PromotionRefused(
            f"{origin.id} is encrypted with the default EBS key, an AWS managed key, "
            f"which cannot be shared with account {account}",
            hint=hint,
        )
    kms = source.client("kms")
    with aws_errors(f"checking KMS key {key}"):
        meta = kms.describe_key(KeyId=key)["KeyMetadata"]
        policy = json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    if meta.get("KeyManager") == "AWS":
        raise PromotionRefused(
            f"{origin.id} is encrypted with {key}, an AWS managed key, which cannot be "
            f"shared with account {account}",
            hint=hint,
        )
    missing = sorted(KEY_ACTIONS - key_actions_for(policy, account))
    if missing:
        raise PromotionRefused(
            f"the key policy of {key} ({origin.id}'s key) does not let account {account} "
            f"use it: {', '.join(missing)} missing",
            hint=hint,
        )


# What EC2 does with the source's key on the target account's behalf when it copies
KEY_ACTIONS = frozenset({"kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey"})


def key_actions_for(policy: dict[str, Any], account: str) -> set[str]:
    """The KMS actions a key policy's Allow statements give ``account`` (ignoring conditions)."""
    given: set[str] = set()
    for statement in _listed(policy.get("Statement")):
        if statement.get("Effect") != "Allow" or not _names(statement.get("Principal"), account):
            continue
        for action in _listed(statement.get("Action")):
            given |= {a for a in KEY_ACTIONS if fnmatch.fnmatchcase(a, str(action))}
    return given


def _names(principal: Any, account: str) -> bool:
    if principal == "*":
        return True
    found = principal.get("AWS", []) if isinstance(principal, dict) else []
    return any(p in {"*", account, f"arn:aws:iam::{account}:root"} for p in _listed(found))


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _encryption(origin: Ami, encrypt: tuple[bool, str | None]) -> dict[str, Any]:
    """CopyImage's encryption: the target's key when it sets one (else EC2's default)."""
    encrypted, key = encrypt
    if not (encrypted or key or origin.encrypted):
        return {}
    return {"Encrypted": True, **({"KmsKeyId": key} if key else {})}


def _account(aws: Aws) -> str:
    with aws_errors("finding the account"):
        return str(aws.sts.get_caller_identity()["Account"])
