"""``kiln aws create-deploy-user``: a CI identity with exactly kiln's permissions.

Run once with admin credentials. Creates ``deploy-user-<team>`` (no console
access), puts kiln's policy on it inline, and creates an access key whose
secret is returned exactly once. Re-running converges without changing
anything; ``rotate_key`` replaces the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from kiln.aws.policy import policy_document
from kiln.aws.session import Aws, aws_errors
from kiln.errors import AwsError

POLICY_NAME = "kiln-deploy"
USER_PATH = "/kiln/"
_TEAM = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,52}$")


@dataclass(frozen=True)
class DeployUser:
    user: str
    arn: str
    created: bool
    policy_changed: bool
    console_access_removed: bool
    access_key_id: str | None
    secret_access_key: str | None  # only when a key was created by this call
    deleted_keys: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return (
            self.created
            or self.policy_changed
            or self.console_access_removed
            or self.secret_access_key is not None
        )

    def summary(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "user": self.user,
            "arn": self.arn,
            "created": self.created,
            "policy": POLICY_NAME,
            "policy_changed": self.policy_changed,
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
    document: dict[str, Any] | None = None,
    pass_role: str | None = None,
) -> DeployUser:
    """Converge the deploy user; ``document`` overrides the policy (tests, part 2)."""
    name = user_name(team)
    with aws_errors(f"setting up {name}"):
        account = aws.sts.get_caller_identity()["Account"]
        policy = document or policy_document(
            region=aws.region, account=account, pass_role=pass_role
        )
        arn, created = _ensure_user(aws, name, team)
        console_removed = _remove_console_access(aws, name)
        policy_changed = _ensure_policy(aws, name, policy)
        key_id, secret, deleted = _ensure_key(aws, name, rotate_key)
    return DeployUser(
        user=name,
        arn=arn,
        created=created,
        policy_changed=policy_changed,
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


def _ensure_policy(aws: Aws, name: str, policy: dict[str, Any]) -> bool:
    try:
        current: Any = aws.iam.get_user_policy(UserName=name, PolicyName=POLICY_NAME)
        existing = current["PolicyDocument"]
        if isinstance(existing, str):
            existing = json.loads(existing)
        if existing == policy:
            return False
    except aws.iam.exceptions.NoSuchEntityException:
        pass
    aws.iam.put_user_policy(
        UserName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy)
    )
    return True


def _ensure_key(
    aws: Aws, name: str, rotate: bool
) -> tuple[str | None, str | None, tuple[str, ...]]:
    keys = sorted(
        aws.iam.list_access_keys(UserName=name)["AccessKeyMetadata"],
        key=lambda k: k["CreateDate"],
    )
    if keys and not rotate:
        return keys[-1]["AccessKeyId"], None, ()
    deleted: list[str] = []
    if len(keys) >= 2:  # AWS allows two keys: make room for the new one
        aws.iam.delete_access_key(UserName=name, AccessKeyId=keys[0]["AccessKeyId"])
        deleted.append(keys[0]["AccessKeyId"])
        keys = keys[1:]
    new = aws.iam.create_access_key(UserName=name)["AccessKey"]
    for old in keys:
        aws.iam.delete_access_key(UserName=name, AccessKeyId=old["AccessKeyId"])
        deleted.append(old["AccessKeyId"])
    return new["AccessKeyId"], new["SecretAccessKey"], tuple(deleted)
