"""``kiln aws create-deploy-user``: a CI identity with exactly kiln's permissions.

Run once with admin credentials. Creates ``deploy-user-<team>`` (no console
access), attaches kiln's customer-managed policies to it (``kiln-<team>-bake``
and ``kiln-<team>-deploy``: inline policies are limited to 2,048 characters per
user, kiln's need about 6,000), and creates an access key whose secret is
returned exactly once. Re-running converges: a changed policy gets a new
default version (at most five are kept, as IAM allows), nothing else changes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from kiln.aws.policy import MANAGED_POLICY_MAX, PARTS, policy_document, size
from kiln.aws.session import Aws, aws_errors, connect
from kiln.config import AwsSettings
from kiln.errors import AwsError

LEGACY_INLINE_POLICY = "kiln-deploy"  # kiln 0.1 put its policy inline (over IAM's limit)
USER_PATH = "/kiln/"
POLICY_PATH = "/kiln/"
MAX_POLICY_VERSIONS = 5
_TEAM = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,52}$")


def policy_name(team: str, part: str) -> str:
    return f"kiln-{team}-{part}"


@dataclass(frozen=True)
class DeployUser:
    user: str
    arn: str
    created: bool
    policies: tuple[str, ...]  # managed policy names attached, one per part
    policies_changed: tuple[str, ...]  # created, given a new version, attached or detached
    console_access_removed: bool
    access_key_id: str | None
    secret_access_key: str | None  # only when a key was created by this call
    deleted_keys: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return (
            self.created
            or bool(self.policies_changed)
            or self.console_access_removed
            or self.secret_access_key is not None
        )

    def summary(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "user": self.user,
            "arn": self.arn,
            "created": self.created,
            "policies": list(self.policies),
            "policies_changed": list(self.policies_changed),
            "console_access_removed": self.console_access_removed,
            "access_key_id": self.access_key_id,
            "deleted_keys": list(self.deleted_keys),
            "changed": self.changed,
        }
        if self.secret_access_key is not None:
            doc["secret_access_key"] = self.secret_access_key
            doc["ci_secrets"] = {
                "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            }
        return doc


def user_name(team: str) -> str:
    if not _TEAM.match(team):
        raise AwsError(
            f"team name {team!r} cannot be part of an IAM user name",
            hint="use letters, digits and +=,.@_- (at most 52 characters)",
        )
    return f"deploy-user-{team}"


def create_deploy_user(
    aws: Aws,
    team: str,
    *,
    rotate_key: bool = False,
    parts: Sequence[str] = tuple(PARTS),
    documents: Mapping[str, dict[str, Any]] | None = None,
    pass_role: str | None = None,
    target_group: str | None = None,
    boot_test_target_group: str | None = None,
    listener: str | None = None,
    ssm: bool = False,
    builder_role: str | None = None,
    sticky: bool = False,
    canary_target_group: str | None = None,
    hook_roles: Sequence[str] = (),
    publish: Mapping[str, Any] | None = None,
) -> DeployUser:
    """Converge the deploy user; ``documents`` overrides a part's policy (tests).

    ``parts`` picks the policies: ``("bake",)`` makes a user that can bake,
    list, prune and reap AMIs but not deploy. ``publish`` holds
    policy_document's ``copy_regions``/``share``/``deprecate``/``kms``: the
    publish policy is attached only when they ask for something.
    """
    name = user_name(team)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise AwsError(f"unknown policy part(s) {unknown}", hint=f"choose from {sorted(PARTS)}")
    with aws_errors(f"setting up {name}"):
        caller = aws.sts.get_caller_identity()
        account, partition = caller["Account"], caller["Arn"].split(":")[1]
        wanted = {
            part: dict(
                (documents or {}).get(part)
                or policy_document(
                    region=aws.region,
                    account=account,
                    partition=partition,
                    purposes=PARTS[part],
                    pass_role=pass_role,
                    target_group=target_group,
                    boot_test_target_group=boot_test_target_group,
                    listener=listener,
                    ssm=ssm,
                    builder_role=builder_role,
                    sticky=sticky,
                    canary_target_group=canary_target_group,
                    hook_roles=hook_roles,
                    **(publish or {}),
                )
            )
            for part in parts
        }
        wanted = {part: doc for part, doc in wanted.items() if doc["Statement"]}
        arn, created = _ensure_user(aws, name, team)
        console_removed = _remove_console_access(aws, name)
        changed = _ensure_policies(aws, name, team, partition, account, wanted)
        key_id, secret, deleted = _ensure_key(aws, name, rotate_key)
    return DeployUser(
        user=name,
        arn=arn,
        created=created,
        policies=tuple(policy_name(team, part) for part in wanted),
        policies_changed=changed,
        console_access_removed=console_removed,
        access_key_id=key_id,
        secret_access_key=secret,
        deleted_keys=deleted,
    )


def _ensure_user(aws: Aws, name: str, team: str) -> tuple[str, bool]:
    try:
        return aws.iam.get_user(UserName=name)["User"]["Arn"], False
    except aws.iam.exceptions.NoSuchEntityException:
        pass
    user = aws.iam.create_user(
        UserName=name,
        Path=USER_PATH,
        Tags=[{"Key": "kiln:team", "Value": team}, {"Key": "kiln:purpose", "Value": "deploy"}],
    )
    return user["User"]["Arn"], True


def _remove_console_access(aws: Aws, name: str) -> bool:
    try:
        aws.iam.get_login_profile(UserName=name)
    except aws.iam.exceptions.NoSuchEntityException:
        return False
    aws.iam.delete_login_profile(UserName=name)
    return True


def _ensure_policies(
    aws: Aws,
    user: str,
    team: str,
    partition: str,
    account: str,
    wanted: dict[str, dict[str, Any]],
) -> tuple[str, ...]:
    """Each part's managed policy current and attached; other parts detached; no inline one."""
    changed: list[str] = []
    attached = {
        p["PolicyName"]: p["PolicyArn"]
        for p in aws.iam.list_attached_user_policies(UserName=user, PathPrefix=POLICY_PATH)[
            "AttachedPolicies"
        ]
    }
    for part, document in wanted.items():
        name = policy_name(team, part)
        if size(document) > MANAGED_POLICY_MAX:
            raise AwsError(
                f"policy {name} is {size(document)} characters, over IAM's {MANAGED_POLICY_MAX}",
                hint="this is a kiln bug: report it with 'kiln aws policy --json'",
            )
        arn = f"arn:{partition}:iam::{account}:policy{POLICY_PATH}{name}"
        if _ensure_managed_policy(aws, arn, name, team, part, document):
            changed.append(name)
        if name not in attached:
            aws.iam.attach_user_policy(UserName=user, PolicyArn=arn)
            if name not in changed:
                changed.append(name)
    for part in (p for p in PARTS if p not in wanted):
        name = policy_name(team, part)
        if name in attached:  # e.g. re-run with --bake-only
            aws.iam.detach_user_policy(UserName=user, PolicyArn=attached[name])
            changed.append(name)
    try:
        aws.iam.delete_user_policy(UserName=user, PolicyName=LEGACY_INLINE_POLICY)
    except aws.iam.exceptions.NoSuchEntityException:
        return tuple(changed)
    return (*changed, f"{LEGACY_INLINE_POLICY} (inline, removed)")


def _ensure_managed_policy(
    aws: Aws, arn: str, name: str, team: str, part: str, document: dict[str, Any]
) -> bool:
    """Create the policy, or make ``document`` its default version; True when changed."""
    try:
        policy = aws.iam.get_policy(PolicyArn=arn)["Policy"]
    except aws.iam.exceptions.NoSuchEntityException:
        aws.iam.create_policy(
            PolicyName=name,
            Path=POLICY_PATH,
            PolicyDocument=json.dumps(document),
            Description=f"kiln {part}: exactly the AWS calls kiln makes (team {team})",
            Tags=[{"Key": "kiln:team", "Value": team}, {"Key": "kiln:part", "Value": part}],
        )
        return True
    default = policy["DefaultVersionId"]
    current = aws.iam.get_policy_version(PolicyArn=arn, VersionId=default)["PolicyVersion"]
    if _document(current["Document"]) == document:
        return False
    versions = aws.iam.list_policy_versions(PolicyArn=arn)["Versions"]
    if len(versions) >= MAX_POLICY_VERSIONS:  # IAM keeps five: drop the oldest non-default
        oldest = min(
            (v for v in versions if not v["IsDefaultVersion"]), key=lambda v: v["CreateDate"]
        )
        aws.iam.delete_policy_version(PolicyArn=arn, VersionId=oldest["VersionId"])
    aws.iam.create_policy_version(
        PolicyArn=arn, PolicyDocument=json.dumps(document), SetAsDefault=True
    )
    return True


def _document(raw: Any) -> Any:
    """IAM returns documents URL-encoded (boto3 decodes them); accept either."""
    if isinstance(raw, str):
        return json.loads(unquote(raw))
    return raw


def _ensure_key(
    aws: Aws, name: str, rotate: bool
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """The user's key; rotating: create the new one, prove it works, then delete the old.

    The old key stays valid until the new one has answered STS, so a rotation
    that fails leaves the user with a working key. (AWS allows two keys: if
    both slots are taken, the older of the two goes first.)
    """
    keys = sorted(
        aws.iam.list_access_keys(UserName=name)["AccessKeyMetadata"],
        key=lambda k: k["CreateDate"],
    )
    if keys and not rotate:
        return keys[-1]["AccessKeyId"], None, ()
    deleted: list[str] = []
    if len(keys) >= 2:
        aws.iam.delete_access_key(UserName=name, AccessKeyId=keys[0]["AccessKeyId"])
        deleted.append(keys[0]["AccessKeyId"])
        keys = keys[1:]
    new = aws.iam.create_access_key(UserName=name)["AccessKey"]
    try:
        verify_key(aws, new["AccessKeyId"], new["SecretAccessKey"])
    except AwsError:
        aws.iam.delete_access_key(UserName=name, AccessKeyId=new["AccessKeyId"])
        raise
    for old in keys:
        aws.iam.delete_access_key(UserName=name, AccessKeyId=old["AccessKeyId"])
        deleted.append(old["AccessKeyId"])
    return new["AccessKeyId"], new["SecretAccessKey"], tuple(deleted)


KEY_VERIFY_WAIT = 60.0  # IAM is eventually consistent: a new key works within seconds


def verify_key(aws: Aws, key_id: str, secret: str, *, wait: float | None = None) -> None:
    """Sign an STS GetCallerIdentity with the new key until AWS accepts it."""
    wait = KEY_VERIFY_WAIT if wait is None else wait
    fresh = connect(
        AwsSettings(region=aws.region, endpoint_url=aws.endpoint_url),
        access_key_id=key_id,
        secret_access_key=secret,
    )
    deadline = time.monotonic() + wait
    delay = 1.0
    while True:
        try:
            with aws_errors("checking the new access key"):
                fresh.sts.get_caller_identity()
            return
        except AwsError as exc:
            if time.monotonic() > deadline:
                raise AwsError(
                    f"the new access key does not work after {wait:g}s ({exc.message}); "
                    "it was deleted and the old key kept",
                    hint="run 'kiln aws create-deploy-user --team NAME --rotate-key' again",
                ) from None
        time.sleep(delay)
        delay = min(delay * 2, 8.0)
