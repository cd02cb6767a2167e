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
    """
    say = note or (lambda _msg: None)
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
    into = (source, target, origin, image, timeout, say, promote_to, encrypt)
    if origin.tags.get(ENV_TAG) == env_digest(env):
        return _into_target(*into)
    if relayer is None:
        raise PromotionRefused(
            f"{origin.id} holds the source environment's [env]; the target's differs, "
            "and on AWS the env layer is inside the AMI",
            hint="keep [env] the same in both environments and put what differs in "
            "[secrets] (SSM, read at boot)",
        )
    derived = newest_ami(target, relayer.image_for(origin))
    if derived is not None:
        say(f"reusing {derived.id} ({derived.image}: {image} with this environment's [env])")
        return derived, False
    base, _copied = _into_target(*into)
    return relayer.make(target, base, say), True


def _into_target(
    source: Aws,
    target: Aws,
    origin: Ami,
    image: str,
    timeout: float,
    say: Note,
    promote_to: Sequence[str],
    encrypt: tuple[bool, str | None],
) -> tuple[Ami, bool]:
    """``origin`` where ``target`` deploys: found there, or shared and copied there."""
    here = newest_ami(target, image)
    if here is not None:
        say(f"reusing {here.id} in {target.region}")
        return here, False
    owner, account = _account(source), _account(target)
    if owner != account:
        grant(source, origin, account, allowed=promote_to, note=say)
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
    return ami, True


def grant(source: Aws, origin: Ami, account: str, *, allowed: Sequence[str], note: Note) -> None:
    """With the source account's keys: let ``account`` launch and copy this one AMI.

    Launch permission on the AMI, createVolumePermission on its snapshots (what
    CopyImage reads). Only for an account the source environment lists in
    ``promote_to_accounts``: a key that may share may share with anyone, so
    kiln itself keeps to the list. Granting twice is harmless (AWS keeps one).
    """
    if account not in allowed:
        raise PromotionRefused(
            f"the target environment is AWS account {account}, which the source "
            "environment's promote_to_accounts does not list",
            hint=f'add promote_to_accounts = ["{account}"] to the source environment\'s '
            "[provider.aws] (and re-create its deploy user's policies: 'kiln aws policy')",
        )
    check_shareable(source, origin, account)
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
