"""Copies of each AMI in ``copy_to_regions``, started by a bake, never waited for.

A bake whose AMI is available starts ``CopyImage`` in every copy region that
has no usable copy yet and returns: a deploy in the AMI's own region does not
wait minutes for snapshots to cross regions. Each copy is created with the
source's kiln tags (so reuse by digest and deploys by image find it there)
plus ``kiln:source-ami`` and ``kiln:source-region``, encrypted with that
region's key when the AMI is encrypted, and with an idempotency token, so two
runners racing get one copy. Later bakes (a reused AMI included) finish the
job: a copy found available is shared and deprecated like its source
(:mod:`kiln.aws.publish`), a failed one is deregistered and started again, a
region added to the list gets its copy. ``kiln images --provider aws`` shows
each copy's state; ``kiln prune`` removes copies with their source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kiln.aws.disks import check_key, key_for
from kiln.aws.images import Ami, delete_ami, in_server_groups, in_use
from kiln.aws.policy import APP_TAG
from kiln.aws.publish import PUBLISHED_TAG, publish
from kiln.aws.session import Aws, aws_errors, tags
from kiln.config import AwsSettings

SOURCE_AMI_TAG = "kiln:source-ami"
SOURCE_REGION_TAG = "kiln:source-region"
_NOT_COPIED = {PUBLISHED_TAG, "Name"}  # a copy is published in its own region


@dataclass(frozen=True)
class Copy:
    """One copy region's view of an AMI."""

    region: str
    ami: str | None
    state: str  # available | pending | started | missing | failed

    def summary(self) -> dict[str, Any]:
        return {"region": self.region, "ami": self.ami, "state": self.state}


def copies_in(
    aws: Aws, sources: Iterable[str] | None, app: str | None = None
) -> dict[str, list[Ami]]:
    """kiln's copies in ``aws``'s region (of ``sources``, or all), by source AMI id."""
    filters: list[Any] = [{"Name": "tag-key", "Values": [SOURCE_AMI_TAG]}]
    if app:
        filters.append({"Name": f"tag:{APP_TAG}", "Values": [app]})
    with aws_errors(f"listing AMI copies in {aws.region}"):
        raw = aws.ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
    wanted = None if sources is None else set(sources)
    found: dict[str, list[Ami]] = {}
    for ami in sorted((Ami.from_aws(r) for r in raw), key=lambda a: a.created, reverse=True):
        source = ami.tags.get(SOURCE_AMI_TAG, "")
        if wanted is None or source in wanted:
            found.setdefault(source, []).append(ami)
    return found


def sync_copies(
    aws: Aws, source: Ami, settings: AwsSettings, note: Callable[[str], None]
) -> list[Copy]:
    """Start, restart or finish the copies of an available ``source`` AMI; never wait."""
    result = []
    for region in settings.copy_to_regions:
        there = aws.in_region(region)
        found = copies_in(there, [source.id]).get(source.id, [])
        ready = next((a for a in found if a.state == "available"), None)
        pending = next((a for a in found if a.state == "pending"), None)
        if ready is not None:
            publish(there, ready, settings, note)
            result.append(Copy(region, ready.id, "available"))
            continue
        if pending is not None:
            note(f"copy {pending.id} in {region} is still pending")
            result.append(Copy(region, pending.id, "pending"))
            continue
        for failed in found:  # failed, invalid, error: gone before copying again
            note(f"deregistering copy {failed.id} in {region} (state {failed.state})")
            delete_ami(there, failed)
        # a new token per attempt (a token names its first copy, failed or not); runners
        # racing see the same failures, so they still make one copy
        copied = start_copy(there, aws.region, source, settings, attempt=len(found))
        note(f"copying {source.id} to {region} as {copied} (not waited for)")
        result.append(Copy(region, copied, "started"))
    return result


def start_copy(
    there: Aws, home: str, source: Ami, settings: AwsSettings, *, attempt: int = 0
) -> str:
    """CopyImage into ``there``'s region, tagged as the source, encrypted with its key."""
    copy_tags = {k: v for k, v in source.tags.items() if k.startswith("kiln:")}
    copy_tags = {k: v for k, v in copy_tags.items() if k not in _NOT_COPIED}
    copy_tags |= {"Name": source.tags.get("Name", source.name)}
    copy_tags |= {SOURCE_AMI_TAG: source.id, SOURCE_REGION_TAG: home}
    spec: list[Any] = [
        {"ResourceType": kind, "Tags": tags(copy_tags)} for kind in ("image", "snapshot")
    ]
    args: dict[str, Any] = {
        "SourceImageId": source.id,
        "SourceRegion": home,
        "Name": source.name,
        "Description": f"kiln copy of {source.id} from {home}",
        "TagSpecifications": spec,
        "ClientToken": f"kiln-{source.id}-{there.region}-{attempt}",  # one copy per attempt
    }
    if settings.encrypts:
        args["Encrypted"] = True
        key = check_key(there, key_for(settings, there.region, home), shared=settings.shares)
        if key:
            args["KmsKeyId"] = key
    with aws_errors(f"copying {source.id} to {there.region}"):
        return str(there.ec2.copy_image(**args)["ImageId"])


def where(
    aws: Aws, sources: list[Ami], settings: AwsSettings, app: str | None
) -> dict[str, list[Copy]]:
    """Each source AMI's copies, region by region (``missing`` where there is none)."""
    ids = [a.id for a in sources]
    by_region = {r: copies_in(aws.in_region(r), ids, app) for r in settings.copy_to_regions}
    out: dict[str, list[Copy]] = {}
    for ami in sources:
        out[ami.id] = []
        for region in settings.copy_to_regions:
            found = by_region[region].get(ami.id, [])
            best = next((a for a in found if a.state == "available"), None) or next(
                iter(found), None
            )
            state = best.state if best else "missing"
            out[ami.id].append(Copy(region, best.id if best else None, state))
    return out


def prune_copies(
    aws: Aws, app: str, kept: set[str], regions: Iterable[str], *, dry_run: bool
) -> list[tuple[str, Ami]]:
    """Copies whose source AMI is gone (or going), unless something runs them there.

    ``kept`` is every source AMI the home region keeps (newest, in use,
    pending); a copy of anything else is deregistered with its snapshots, in
    its own region, unless an instance or a server group there uses it.
    """
    deleted: list[tuple[str, Ami]] = []
    for region in regions:
        there = aws.in_region(region)
        orphans = [
            copy
            for source, found in copies_in(there, None, app).items()
            if source not in kept
            for copy in found
            if copy.state != "pending"
        ]
        if not orphans:
            continue
        used = in_use(there, [c.id for c in orphans]) | in_server_groups(there)
        for copy in orphans:
            if copy.id in used:
                continue
            if not dry_run:
                delete_ami(there, copy)
            deleted.append((region, copy))
    return deleted
