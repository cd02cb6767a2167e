"""AMIs as kiln images: find by digest, list, wait, and prune with their snapshots."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kiln.aws.policy import APP_TAG
from kiln.aws.session import Aws, aws_errors, eventually, tag_map
from kiln.errors import AwsError

DIGEST_TAG = "kiln:digest"
CODE_TAG = "kiln:code"  # the image's code digest: its digest minus the env layer
ENV_TAG = "kiln:env"  # sha256 of the image's [env]: with the code, the whole image
RECIPE_TAG = "kiln:recipe"
IMAGE_TAG = "kiln:image"
COMMIT_TAG = "kiln:commit"
BASE_TAG = "kiln:base-ami"
RELEASE_TAG = "kiln:release"  # the image's [app] release command (cut to 256 characters)
RUNTIME_TAG = "kiln:runtime"  # the installer version: 4 and later run releases and one-offs
BASE_CREATED_TAG = "kiln:base-created"  # the base AMI's creation date
PACKAGES_TAG = "kiln:packages"  # how many packages the builder had
BASE_NAME_TAG = "kiln:base-name"  # the base's name: the same base in another region
PROMOTED_FROM_TAG = "kiln:promoted-from"  # a derived AMI (kiln.aws.relayer): whose code it runs
SOURCE_AMI_TAG = "kiln:source-ami"  # ...and the AMI it was derived from
AMI_TAG = "kiln:ami"  # on server groups (kiln.aws.groups): the AMI a group launches


def release_tag(command: str) -> str:
    """An EC2 tag value holds 256 characters: a longer command is cut, and says so."""
    return command if len(command) <= 256 else command[:255] + "…"


@dataclass(frozen=True)
class Ami:
    """One AMI kiln baked, as AWS describes it."""

    id: str
    name: str
    state: str
    created: str  # ISO 8601, as EC2 reports it
    tags: dict[str, str]
    snapshots: tuple[str, ...]
    encrypted: bool = False  # its root snapshot is
    deprecation_time: str | None = None
    kms_key_id: str | None = None  # the key its root snapshot is encrypted with, if AWS says

    @property
    def app(self) -> str:
        return self.tags.get(APP_TAG, "")

    @property
    def digest(self) -> str:
        return self.tags.get(DIGEST_TAG, "")

    @property
    def image(self) -> str:
        return self.tags.get(IMAGE_TAG, "")

    def summary(self) -> dict[str, Any]:
        return {
            "ami": self.id,
            "image": self.image,
            "digest": self.digest,
            "app": self.app,
            "state": self.state,
            "created": self.created,
            "commit": self.tags.get(COMMIT_TAG),
            "code_digest": self.tags.get(CODE_TAG),
            "base_ami": self.tags.get(BASE_TAG),
            "base_created": self.tags.get(BASE_CREATED_TAG),
            "packages": int(self.tags[PACKAGES_TAG]) if PACKAGES_TAG in self.tags else None,
            "snapshots": list(self.snapshots),
            "encrypted": self.encrypted,
            "deprecation_time": self.deprecation_time,
            "promoted_from": self.tags.get(PROMOTED_FROM_TAG),  # derived for another [env]
        }

    @classmethod
    def from_aws(cls, raw: Any) -> Ami:
        snapshots = tuple(
            str(m["Ebs"]["SnapshotId"])
            for m in raw.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        )
        return cls(
            id=raw["ImageId"],
            name=raw.get("Name", ""),
            state=raw.get("State", "unknown"),
            created=raw.get("CreationDate", ""),
            tags=tag_map(raw.get("Tags")),
            snapshots=snapshots,
            encrypted=any(
                bool(m.get("Ebs", {}).get("Encrypted")) for m in raw.get("BlockDeviceMappings", [])
            ),
            deprecation_time=raw.get("DeprecationTime"),
            kms_key_id=next(
                (
                    str(m["Ebs"]["KmsKeyId"])
                    for m in raw.get("BlockDeviceMappings", [])
                    if m.get("Ebs", {}).get("KmsKeyId")
                ),
                None,
            ),
        )


def _describe(aws: Aws, filters: list[Any]) -> list[Ami]:
    with aws_errors("listing AMIs"):
        raw = aws.ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
    return sorted((Ami.from_aws(r) for r in raw), key=lambda a: a.created, reverse=True)


def list_amis(aws: Aws, app: str | None = None) -> list[Ami]:
    """kiln's AMIs in the region (one app's, or all), newest first."""
    filters: list[Any] = [{"Name": "tag-key", "Values": [DIGEST_TAG]}]
    if app:
        filters.append({"Name": f"tag:{APP_TAG}", "Values": [app]})
    return _describe(aws, filters)


def describe_ami(aws: Aws, ami_id: str) -> Ami | None:
    """One AMI by id (any owner: a base image too), or None if it is gone."""
    with aws_errors(f"describing {ami_id}"):
        found = aws.ec2.describe_images(Filters=[{"Name": "image-id", "Values": [ami_id]}])
    raw = found["Images"]
    return Ami.from_aws(raw[0]) if raw else None


def age_of(created: str | None, now: float) -> float | None:
    """Seconds since an EC2 CreationDate (ISO 8601), or None when unknown."""
    if not created:
        return None
    try:
        when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, now - when.timestamp())


def find_ami(aws: Aws, digest: str, recipe: str, base: str | None = None) -> Ami | None:
    """The AMI already baked from this image with this recipe (on ``base``), if any.

    The base image is part of an AMI's identity: the same app on a patched
    base is a different machine, so an AMI on an older base is not reused.
    """
    filters: list[Any] = [
        {"Name": f"tag:{DIGEST_TAG}", "Values": [digest]},
        {"Name": f"tag:{RECIPE_TAG}", "Values": [recipe]},
    ]
    if base is not None:
        filters.append({"Name": f"tag:{BASE_TAG}", "Values": [base]})
    found = _describe(aws, filters)
    usable = [a for a in found if a.state in {"available", "pending"}]
    candidates = usable or found
    return candidates[0] if candidates else None


def find_copy(aws: Aws, digest: str, recipe: str, base_name: str) -> Ami | None:
    """A copy of this image from another region, made from a base of the same name.

    A base image has another id in each region (Debian publishes one per
    region under one name), so a copy matches on the base's name: that is how
    reuse by digest works in every copy region.
    """
    filters: list[Any] = [
        {"Name": f"tag:{DIGEST_TAG}", "Values": [digest]},
        {"Name": f"tag:{RECIPE_TAG}", "Values": [recipe]},
        {"Name": f"tag:{BASE_NAME_TAG}", "Values": [base_name]},
        {"Name": "tag-key", "Values": ["kiln:source-ami"]},
    ]
    usable = [a for a in _describe(aws, filters) if a.state in {"available", "pending"}]
    return usable[0] if usable else None


def wait_available(aws: Aws, ami_id: str, *, timeout: float, note: Callable[[str], None]) -> Ami:
    deadline = time.monotonic() + timeout
    delay = 1.0
    while True:
        with aws_errors(f"waiting for {ami_id}"):
            raw = eventually(lambda: aws.ec2.describe_images(ImageIds=[ami_id])["Images"])
        if not raw:
            raise AwsError(f"{ami_id} disappeared while it was being created")
        ami = Ami.from_aws(raw[0])
        if ami.state == "available":
            return ami
        if ami.state in {"failed", "invalid", "error", "deregistered"}:
            raise AwsError(
                f"AWS could not create {ami_id} (state {ami.state})",
                hint="run the bake again; kiln deregisters failed AMIs first",
            )
        if time.monotonic() > deadline:
            raise AwsError(
                f"{ami_id} is still {ami.state} after {timeout:g}s",
                hint="run the bake again later: it resumes this wait instead of rebuilding",
            )
        note(f"{ami_id} is {ami.state}")
        time.sleep(delay)
        delay = min(delay * 1.5, 15.0)


def in_use(aws: Aws, ami_ids: Iterable[str]) -> set[str]:
    """AMIs some instance (running, stopped or starting) was launched from."""
    ids = sorted(set(ami_ids))
    used: set[str] = set()
    paginator = aws.ec2.get_paginator("describe_instances")
    for start in range(0, len(ids), 100):
        filters: list[Any] = [
            {"Name": "image-id", "Values": ids[start : start + 100]},
            {
                "Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped"],
            },
        ]
        with aws_errors("checking which AMIs are in use"):
            for page in paginator.paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    used.update(i["ImageId"] for i in reservation["Instances"])
    return used


def in_server_groups(aws: Aws) -> set[str]:
    """AMIs kiln's server groups run, warm groups scaled to zero included."""
    paginator = aws.client("autoscaling").get_paginator("describe_auto_scaling_groups")
    used: set[str] = set()
    with aws_errors("checking which AMIs server groups use"):
        for page in paginator.paginate(Filters=[{"Name": "tag-key", "Values": [AMI_TAG]}]):
            for group in page["AutoScalingGroups"]:
                ami = tag_map(group.get("Tags")).get(AMI_TAG)
                if ami:
                    used.add(ami)
    return used


def delete_ami(aws: Aws, ami: Ami) -> None:
    """Deregister, then delete its snapshots and package list: together, never one without
    the others."""
    from kiln.aws.packages import delete_packages

    with aws_errors(f"deleting {ami.id}"):
        aws.ec2.deregister_image(ImageId=ami.id)
        for snapshot in ami.snapshots:
            aws.ec2.delete_snapshot(SnapshotId=snapshot)
    if ami.app:
        delete_packages(aws, ami.app, ami.id)


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[Ami, ...]
    kept: tuple[Ami, ...]
    in_use: tuple[Ami, ...]

    def summary(self) -> dict[str, Any]:
        return {
            "deleted": [a.summary() for a in self.deleted],
            "kept": [a.id for a in self.kept],
            "in_use": [a.id for a in self.in_use],
        }


def prune_amis(
    aws: Aws,
    app: str,
    keep: int,
    *,
    dry_run: bool = False,
    also_in_use: Iterable[str] = (),
) -> PruneResult:
    """Keep the ``keep`` newest AMIs of ``app`` and every one in use; delete the rest.

    In use: launched by an instance that still exists, or run by one of
    kiln's server groups (a warm group scaled to zero still needs its AMI to
    roll back). ``also_in_use`` protects AMIs referenced elsewhere.
    """
    if keep < 1:
        raise AwsError("--keep must be at least 1: pruning never deletes the newest AMI")
    amis = [a for a in list_amis(aws, app) if a.state != "pending"]
    newest, older = amis[:keep], amis[keep:]
    used = set(also_in_use)
    if older:
        used |= in_use(aws, [a.id for a in older]) | in_server_groups(aws)
    protected = tuple(a for a in older if a.id in used)
    doomed = tuple(a for a in older if a.id not in used)
    if not dry_run:
        for ami in doomed:
            delete_ami(aws, ami)
    return PruneResult(deleted=doomed, kept=tuple(newest), in_use=protected)
