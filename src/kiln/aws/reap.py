"""``kiln aws reap``: remove what a killed bake left behind.

Every temporary resource a bake creates carries ``kiln:build-id`` and
``kiln:expires``. A bake that ends normally (or by Ctrl-C) removes its own;
one killed outright cannot, so this finds tagged builders, security groups
and key pairs past their expiry and removes them, builders first (a group
cannot be deleted while an instance uses it).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kiln.aws.builder import EXPIRES_TAG, parse_expiry, wait_instance
from kiln.aws.policy import BUILD_TAG
from kiln.aws.session import Aws, aws_errors, tag_map

ORDER = {"instance": 0, "security-group": 1, "key-pair": 2}


@dataclass(frozen=True)
class Leftover:
    kind: str  # instance | security-group | key-pair
    id: str
    build_id: str
    expires: datetime.datetime | None

    def expired(self, now: datetime.datetime) -> bool:
        return self.expires is None or self.expires <= now

    def summary(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "build_id": self.build_id,
            "expires": self.expires.isoformat() if self.expires else None,
        }


@dataclass(frozen=True)
class ReapResult:
    removed: tuple[Leftover, ...]
    kept: tuple[Leftover, ...]  # not expired yet: a bake may still be using them
    dry_run: bool

    def summary(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "removed": [item.summary() for item in self.removed],
            "kept": [item.summary() for item in self.kept],
        }


def _build_filter() -> list[Any]:
    return [{"Name": "tag-key", "Values": [BUILD_TAG]}]


def find_leftovers(aws: Aws) -> list[Leftover]:
    """Every live resource tagged with a kiln build id, in removal order."""
    found: list[Leftover] = []
    with aws_errors("looking for leftovers of interrupted bakes"):
        paginator = aws.ec2.get_paginator("describe_instances")
        live = ["pending", "running", "stopping", "stopped", "shutting-down"]
        filters = [*_build_filter(), {"Name": "instance-state-name", "Values": live}]
        for page in paginator.paginate(Filters=filters):
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    found.append(_leftover("instance", instance["InstanceId"], instance))
        groups = aws.ec2.describe_security_groups(Filters=_build_filter())
        for group in groups["SecurityGroups"]:
            found.append(_leftover("security-group", group["GroupId"], group))
        pairs = aws.ec2.describe_key_pairs(Filters=_build_filter())
        for pair in pairs["KeyPairs"]:
            found.append(_leftover("key-pair", pair["KeyName"], pair))
    return sorted(found, key=lambda item: (ORDER[item.kind], item.id))


def _leftover(kind: str, ident: str, raw: Any) -> Leftover:
    tags = tag_map(raw.get("Tags"))
    return Leftover(
        kind=kind,
        id=ident,
        build_id=tags.get(BUILD_TAG, ""),
        expires=parse_expiry(tags.get(EXPIRES_TAG)),
    )


def reap(
    aws: Aws,
    *,
    dry_run: bool = False,
    include_unexpired: bool = False,
    now: datetime.datetime | None = None,
    note: Callable[[str], None] | None = None,
) -> ReapResult:
    """Remove expired leftovers (all of them with ``include_unexpired``)."""
    say = note or (lambda _msg: None)
    moment = now or datetime.datetime.now(datetime.UTC)
    leftovers = find_leftovers(aws)
    doomed = tuple(i for i in leftovers if include_unexpired or i.expired(moment))
    kept = tuple(i for i in leftovers if i not in doomed)
    if not dry_run:
        _remove(aws, doomed, say)
    return ReapResult(removed=doomed, kept=kept, dry_run=dry_run)


def _remove(aws: Aws, doomed: tuple[Leftover, ...], say: Callable[[str], None]) -> None:
    instances = [i.id for i in doomed if i.kind == "instance"]
    if instances:
        with aws_errors("terminating leftover builders"):
            aws.ec2.terminate_instances(InstanceIds=instances)
        for instance_id in instances:
            wait_instance(aws, instance_id, "terminated", timeout=600, note=say)
            say(f"terminated {instance_id}")
    for item in doomed:
        if item.kind == "security-group":
            with aws_errors(f"deleting security group {item.id}"):
                aws.ec2.delete_security_group(GroupId=item.id)
        elif item.kind == "key-pair":
            with aws_errors(f"deleting key pair {item.id}"):
                aws.ec2.delete_key_pair(KeyName=item.id)
        else:
            continue
        say(f"deleted {item.kind} {item.id}")
