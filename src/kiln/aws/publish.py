"""What an AMI carries besides its content: who may launch it, and when it is deprecated.

Applied to each AMI once it is available, in its own region and in every copy
region: launch permission for ``share_with_accounts``, organisations and OUs
(plus createVolumePermission on its snapshots for the accounts, with
``share_snapshots``: what they need to copy it), and EC2 image deprecation
``deprecate_after`` its creation. The AMI is then tagged ``kiln:published``
with a hash of those settings, so a later bake reusing it applies them again
only when they changed. Permissions are only ever added: an account removed
from kiln.toml keeps its permission on AMIs already shared with it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

from kiln.aws.images import Ami
from kiln.aws.session import Aws, aws_errors
from kiln.config import AwsSettings

PUBLISHED_TAG = "kiln:published"
Note = Any  # Callable[[str], None]


def publish_spec(settings: AwsSettings) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if settings.shares:
        spec["accounts"] = sorted(settings.share_with_accounts)
        spec["organizations"] = sorted(settings.share_with_organizations)
        spec["ous"] = sorted(settings.share_with_ous)
        spec["snapshots"] = settings.share_snapshots
    if settings.deprecate_after is not None:
        spec["deprecate_after"] = settings.deprecate_after
    return spec


def publish_mark(settings: AwsSettings) -> str | None:
    """The ``kiln:published`` value for these settings; None when there is nothing to do."""
    spec = publish_spec(settings)
    if not spec:
        return None
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def is_published(ami: Ami, settings: AwsSettings) -> bool:
    mark = publish_mark(settings)
    return mark is None or ami.tags.get(PUBLISHED_TAG) == mark


def publish(aws: Aws, ami: Ami, settings: AwsSettings, note: Note) -> bool:
    """Share and deprecate one available AMI as kiln.toml says; False if it already is."""
    if is_published(ami, settings):
        return False
    if settings.shares:
        _share(aws, ami, settings)
        note(f"{ami.id} ({aws.region}) shared with {_who(settings)}")
    if settings.deprecate_after is not None:
        at = deprecation_time(ami.created, settings.deprecate_after)
        with aws_errors(f"setting the deprecation time of {ami.id}"):
            aws.ec2.enable_image_deprecation(ImageId=ami.id, DeprecateAt=at)
        note(f"{ami.id} ({aws.region}) deprecated from {at:%Y-%m-%d %H:%M} UTC")
    with aws_errors(f"marking {ami.id} published"):
        mark = str(publish_mark(settings))
        aws.ec2.create_tags(Resources=[ami.id], Tags=[{"Key": PUBLISHED_TAG, "Value": mark}])
    return True


def _share(aws: Aws, ami: Ami, settings: AwsSettings) -> None:
    grants: list[Any] = [{"UserId": a} for a in settings.share_with_accounts]
    grants += [{"OrganizationArn": o} for o in settings.share_with_organizations]
    grants += [{"OrganizationalUnitArn": u} for u in settings.share_with_ous]
    with aws_errors(f"sharing {ami.id}"):
        aws.ec2.modify_image_attribute(ImageId=ami.id, LaunchPermission={"Add": grants})
        if settings.share_snapshots and settings.share_with_accounts:
            for snapshot in ami.snapshots:
                aws.ec2.modify_snapshot_attribute(
                    SnapshotId=snapshot,
                    Attribute="createVolumePermission",
                    OperationType="add",
                    UserIds=list(settings.share_with_accounts),
                )


def _who(settings: AwsSettings) -> str:
    parts = [
        f"{len(settings.share_with_accounts)} account(s)",
        f"{len(settings.share_with_organizations)} organization(s)",
        f"{len(settings.share_with_ous)} OU(s)",
    ]
    return ", ".join(p for p in parts if not p.startswith("0 "))


def deprecation_time(created: str, after: float) -> datetime.datetime:
    """``after`` seconds past the AMI's creation; at least a minute from now (EC2's floor)."""
    try:
        born = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        born = datetime.datetime.now(datetime.UTC)
    if born.tzinfo is None:
        born = born.replace(tzinfo=datetime.UTC)
    soonest = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
    return max(born + datetime.timedelta(seconds=after), soonest).replace(microsecond=0)
