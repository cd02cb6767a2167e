"""Deployment state kept in AWS: the lock, the history, the fleet record.

- Lock: a security group ``kiln-lock-<fleet>``, created atomically (a second
  CreateSecurityGroup fails with a duplicate), holder and expiry in its tags,
  the expiry pushed forward by a heartbeat; an expired lock is taken over.
- History: one launch-template version per finished operation, its
  description a compact JSON record (255 characters at most), its data the
  full launch data of the image serving afterwards.
- Fleet record (current and previous image, size, warm standby): derived
  from the server groups and their tags.

So any CI runner sees the same truth and no local file is needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kiln.aws import groups as g
from kiln.aws.session import Aws, aws_errors, tag_map
from kiln.deploy.clock import Clock
from kiln.deploy.history import Result
from kiln.deploy.state import FleetRecord
from kiln.durations import format_duration
from kiln.errors import LockHeld

LOCK_TAG = "kiln:lock"
HOLDER_TAG = "kiln:holder"
EXPIRES_TAG = "kiln:expires"
STARTED_TAG = "kiln:started"
DEPLOYMENT_TAG = "kiln:deployment"
RECORD_FORMAT = 1
DESCRIPTION_MAX = 255


def lock_name(fleet: str) -> str:
    return f"kiln-lock-{fleet}"


class AwsLock:
    """The fleet's deploy lock: a tagged security group only one caller can create."""

    def __init__(
        self,
        aws: Aws,
        fleet: str,
        clock: Clock,
        *,
        holder: str,
        ttl: float = 120.0,
        vpc: str | None = None,
        warn: Any = None,
    ) -> None:
        self.aws, self.fleet, self.clock = aws, fleet, clock
        self.holder = f"{holder} pid {os.getpid()}"
        self.ttl, self.vpc = ttl, vpc
        self.warn = warn or (lambda _m: None)
        self.group_id: str | None = None
        self._last_beat = float("-inf")

    @contextmanager
    def held(self, wait: float | None = None) -> Iterator[None]:
        """Hold the lock; a kill -9 leaves it to expire and be taken over."""
        self.acquire(wait)
        try:
            yield
        finally:
            self.release()

    def acquire(self, wait: float | None = None) -> None:
        deadline = None if wait is None else self.clock.now() + wait
        while True:
            holder = self._try()
            if holder is None:
                return
            if not holder:
                continue  # a stale lock was just removed, or vanished: create again now
            now = self.clock.now()
            if deadline is None or now >= deadline:
                raise LockHeld(
                    f"fleet {self.fleet} is being deployed by {_describe(holder, now)}",
                    hint="wait with --wait, or once its expiry passes the lock is taken over; "
                    f"delete security group {lock_name(self.fleet)} only if that deploy is gone",
                )
            self.clock.sleep(min(2.0, max(0.1, deadline - now)))

    def _try(self) -> dict[str, str] | None:
        """Create the lock; None when ours, else the live holder's tags."""
        ec2 = self.aws.ec2
        now = self.clock.now()
        kwargs: dict[str, Any] = {
            "GroupName": lock_name(self.fleet),
            "Description": f"kiln deploy lock of fleet {self.fleet}; deleted when the deploy ends",
            "TagSpecifications": [
                {"ResourceType": "security-group", "Tags": self._tags(now, started=now)}
            ],
        }
        if self.vpc:
            kwargs["VpcId"] = self.vpc
        with aws_errors(f"taking the deploy lock of {self.fleet}"):
            try:
                self.group_id = str(ec2.create_security_group(**kwargs)["GroupId"])
            except ec2.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidGroup.Duplicate":
                    raise
            else:
                self._last_beat = now
                return None
            current = self.read()
        if current is None:
            return {}  # released between our create and our read: try again
        group_id, tags = current
        if float(tags.get(EXPIRES_TAG, "0")) > now:
            return tags
        self.warn(
            f"taking over the deploy lock of {self.fleet} from {_describe(tags, now)}: "
            "its heartbeat expired"
        )
        self._delete(group_id)
        return {}

    def read(self) -> tuple[str, dict[str, str]] | None:
        filters: list[Any] = [{"Name": "group-name", "Values": [lock_name(self.fleet)]}]
        found = self.aws.ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
        if not found:
            return None
        return str(found[0]["GroupId"]), tag_map(found[0].get("Tags"))

    def _tags(self, now: float, *, started: float | None = None) -> list[Any]:
        tags = {
            LOCK_TAG: self.fleet,
            HOLDER_TAG: self.holder[:200],
            EXPIRES_TAG: f"{now + self.ttl:.0f}",
        }
        if started is not None:
            tags[STARTED_TAG] = f"{started:.0f}"
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def beat(self, deployment: str | None = None) -> None:
        """Push the expiry forward (writes at most every ttl/6 unless naming a deployment)."""
        now = self.clock.now()
        if self.group_id is None or (deployment is None and now - self._last_beat < self.ttl / 6):
            return
        tags = self._tags(now)
        if deployment:
            tags.append({"Key": DEPLOYMENT_TAG, "Value": deployment})
        ec2 = self.aws.ec2
        with aws_errors(f"refreshing the deploy lock of {self.fleet}"):
            try:
                ec2.create_tags(Resources=[self.group_id], Tags=tags)
            except ec2.exceptions.ClientError as exc:
                if "NotFound" not in str(exc.response.get("Error", {}).get("Code", "")):
                    raise
                self.group_id = None
                raise LockHeld(
                    f"lost the deploy lock of {self.fleet}: another runner took it over "
                    "after this one's heartbeat stopped",
                    hint="check 'kiln aws status' and 'kiln aws history' before deploying again",
                ) from None
        self._last_beat = now

    def release(self) -> None:
        if self.group_id is not None:
            self._delete(self.group_id)
            self.group_id = None

    def _delete(self, group_id: str) -> None:
        ec2 = self.aws.ec2
        with aws_errors(f"releasing the deploy lock of {self.fleet}"):
            try:
                ec2.delete_security_group(GroupId=group_id)
            except ec2.exceptions.ClientError as exc:
                if "NotFound" not in str(exc.response.get("Error", {}).get("Code", "")):
                    raise


def _describe(tags: dict[str, str], now: float) -> str:
    holder = tags.get(HOLDER_TAG, "someone")
    started = float(tags.get(STARTED_TAG, now))
    left = float(tags.get(EXPIRES_TAG, now)) - now
    dep = f", deployment {tags[DEPLOYMENT_TAG]}" if tags.get(DEPLOYMENT_TAG) else ""
    return (
        f"{holder}{dep}, started {format_duration(max(0.0, now - started))} ago, "
        f"lock expires in {format_duration(max(0.0, left))}"
    )


# history ----------------------------------------------------------------------------


def history_record(result: Result, who: str, commit: str | None, now: float) -> str:
    """The operation as a launch-template version description (<= 255 characters)."""
    record: dict[str, Any] = {
        "kiln": RECORD_FORMAT,
        "id": result.deployment,
        "k": result.kind,
        "o": result.outcome,
        "s": result.strategy,
        "f": _compact(result.from_image),
        "t": _compact(result.to_image),
        "at": round(now - (result.duration or 0.0)),
        "d": round(result.duration or 0.0, 1),
        "by": who[:48],
        "c": (commit or "")[:12] or None,
        "g": result.gate,
        "m": (result.message or "")[:120] or None,
    }
    record = {k: v for k, v in record.items() if v is not None}
    text = json.dumps(record, separators=(",", ":"))
    while len(text) > DESCRIPTION_MAX and record.get("m"):
        record["m"] = str(record["m"])[: max(0, len(str(record["m"])) - 20)] or None
        record = {k: v for k, v in record.items() if v is not None}
        text = json.dumps(record, separators=(",", ":"))
    return text[:DESCRIPTION_MAX]


def _compact(release: str | None) -> str | None:
    """``img-X@ami-Y`` as ``X@Y``: the record has 255 characters, the message needs them."""
    if release is None or g.split_release(release)[1] is None:
        return release
    image, ami = g.split_release(release)
    return f"{image.removeprefix('img-')}{g.RELEASE_SEP}{(ami or '').removeprefix('ami-')}"


def _expand(recorded: Any) -> str | None:
    if not isinstance(recorded, str):
        return None
    image, sep, ami = recorded.partition(g.RELEASE_SEP)
    if not sep or image.startswith("img-"):
        return recorded  # a bare image (records before releases), or written in full
    return g.release_id(f"img-{image}", f"ami-{ami}")


def parse_record(version: Any) -> dict[str, Any] | None:
    """A history entry from a template version, or None for a release's own version."""
    try:
        raw = json.loads(version.get("VersionDescription") or "")
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("kiln") != RECORD_FORMAT:
        return None
    started = float(raw.get("at", 0))
    duration = float(raw.get("d", 0))
    return {
        "id": raw.get("id"),
        "kind": raw.get("k"),
        "from": _expand(raw.get("f")),
        "to": _expand(raw.get("t")),
        "strategy": raw.get("s"),
        "started": started,
        "finished": started + duration,
        "duration": duration,
        "outcome": raw.get("o"),
        "who": raw.get("by"),
        "commit": raw.get("c"),
        "gate": raw.get("g"),
        "message": raw.get("m"),
        "version": int(version["VersionNumber"]),
    }


def read_history(aws: Aws, fleet: str, limit: int = 50) -> list[dict[str, Any]]:
    """Finished operations on the fleet, newest first."""
    entries = [e for v in g.template_versions(aws, fleet) if (e := parse_record(v))]
    return entries[:limit]


def write_history(aws: Aws, fleet: str, description: str, image: str | None) -> None:
    """Append the record as a version holding the launch data of ``image`` (or the latest)."""
    versions = g.template_versions(aws, fleet)
    if not versions:
        return  # nothing was ever launched: nothing to record against
    same = [v for v in versions if _image_of(v) == image]
    data = (same or versions)[0]["LaunchTemplateData"]
    g.add_template_version(aws, fleet, data, description, {})


def _image_of(version: Any) -> str | None:
    """The release a template version launches: its image tag on its AMI."""
    data = version.get("LaunchTemplateData", {})
    for spec in data.get("TagSpecifications", []):
        found = tag_map(spec.get("Tags")).get(g.IMAGE_TAG)
        if found:
            return g.release_id(found, data.get("ImageId"))
    return None


# the fleet record --------------------------------------------------------------------


def fleet_record(
    fleet: str,
    groups: list[g.ServerGroup],
    serving: set[str],
    history: list[dict[str, Any]],
    configured: int,
) -> FleetRecord | None:
    """What the engine remembers of a fleet, rebuilt from its groups and history."""
    live = [grp for grp in groups if grp.members or grp.desired > 0]
    in_service = [grp for grp in live if any(m.id in serving for m in grp.members)]
    if not (in_service or live):
        return None
    settled = [grp for grp in in_service if g.SIZE_TAG in grp.tags]
    if len(in_service) > 1 and settled:
        # an operation stopped half-way: the fleet is still the last one that finished
        current_group = settled[0]
        current = current_group.release
        size = int(current_group.tags[g.SIZE_TAG])
    else:
        current_group = (in_service or live)[0]
        current = current_group.release
        # one serving group: its desired count, whatever autoscaling made of it
        size = sum(grp.desired for grp in live if grp.release == current) or configured
    previous = next(
        (
            _as_release(e["from"], groups)
            for e in history
            if _same_release(e["to"], current) and e["from"] and e["from"] != e["to"]
        ),
        None,
    )
    if previous is None or previous == current:
        previous = next((grp.release for grp in groups if grp.release != current), None)
    warm_image: str | None = None
    warm_ids: tuple[str, ...] = ()
    warm_until: float | None = None
    for grp in live:
        until = grp.tags.get(g.WARM_UNTIL_TAG)
        idle = tuple(m.id for m in grp.members if m.id not in serving)
        if grp.release != current and until and idle:
            warm_image, warm_ids, warm_until = grp.release, idle, float(until)
            break
    return FleetRecord(
        fleet=fleet,
        size=size,
        config_size=int(current_group.tags.get(g.CONFIG_SIZE_TAG, configured)),
        current_image=current,
        previous_image=previous,
        warm_image=warm_image,
        warm_ids=warm_ids,
        warm_until=warm_until,
    )


def save_record(aws: Aws, groups: list[g.ServerGroup], record: FleetRecord) -> None:
    """Tag the groups with what the fleet record needs beyond their own shape."""
    current = next((grp for grp in groups if grp.release == record.current_image), None)
    if current is not None:
        sizes = {g.CONFIG_SIZE_TAG: str(record.config_size), g.SIZE_TAG: str(record.size)}
        g.tag_group(aws, current.name, sizes)
        if current.template_version.isdigit():
            g.set_default_version(aws, record.fleet, current.template_version)
    warm = set(record.warm_ids)
    for grp in groups:
        holds = any(m.id in warm for m in grp.members)
        if holds and record.warm_until is not None:
            g.tag_group(aws, grp.name, {g.WARM_UNTIL_TAG: f"{record.warm_until:.0f}"})
        elif g.WARM_UNTIL_TAG in grp.tags and not holds:
            with aws_errors(f"untagging server group {grp.name}"):
                aws.client("autoscaling").delete_tags(
                    Tags=[
                        {
                            "ResourceId": grp.name,
                            "ResourceType": "auto-scaling-group",
                            "Key": g.WARM_UNTIL_TAG,
                        }
                    ]
                )


def _same_release(recorded: str | None, release: str) -> bool:
    """A history entry names this release (entries before releases name the bare image)."""
    if recorded is None:
        return False
    return recorded == release or g.split_release(recorded) == (g.split_release(release)[0], None)


def _as_release(recorded: str, groups: list[g.ServerGroup]) -> str:
    """A bare image from an older history entry, as the newest group of it runs it."""
    if g.split_release(recorded)[1] is not None:
        return recorded
    return next((grp.release for grp in groups if grp.image == recorded), recorded)
