"""Server groups: one Auto Scaling group per release, one launch template per fleet.

A group ``kiln-<fleet>-vNNN`` runs exactly one image, from its own
launch-template version (always the full launch data, never a diff). Groups
are found by their ``kiln:fleet`` tag, newest (highest NNN) first; every
listing paginates, so a fleet of any size is read the same way.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.aws.session import Aws, aws_errors, tag_map

FLEET_TAG = "kiln:fleet"
APP_TAG = "kiln:app"
IMAGE_TAG = "kiln:image"
AMI_TAG = "kiln:ami"
CONFIG_SIZE_TAG = "kiln:config-size"
SIZE_TAG = "kiln:size"  # the fleet's size when the last operation finished
WARM_UNTIL_TAG = "kiln:warm-until"
_NAME = re.compile(r"^kiln-(?P<fleet>.+)-v(?P<n>\d{3,})$")
RELEASE_SEP = "@"


def release_id(image: str, ami: str | None) -> str:
    """What the engine deploys on AWS: an image on one AMI, ``img-…@ami-…``.

    The same image re-baked on a patched base is a new AMI of the same digest;
    keyed by the image alone it could never roll out (the fleet "already
    serves" it). Locally an image is a release by itself.
    """
    return f"{image}{RELEASE_SEP}{ami}" if ami else image


def split_release(release: str) -> tuple[str, str | None]:
    """``img-…@ami-…`` → (image, AMI); a bare image → (image, None)."""
    image, sep, ami = release.partition(RELEASE_SEP)
    return image, (ami if sep and ami else None)


def template_name(fleet: str) -> str:
    return f"kiln-{fleet}"


def group_name(fleet: str, number: int) -> str:
    return f"kiln-{fleet}-v{number:03d}"


def group_number(name: str) -> int:
    match = _NAME.match(name)
    return int(match["n"]) if match else 0


@dataclass(frozen=True)
class Member:
    """One instance as its Auto Scaling group sees it."""

    id: str
    lifecycle: str  # Pending | InService | Terminating | ...
    health: str  # Healthy | Unhealthy (EC2 or ELB checks, per the group)
    template_version: str = ""


@dataclass(frozen=True)
class ServerGroup:
    name: str
    image: str
    desired: int
    min_size: int
    max_size: int
    attached: bool  # the group itself is attached to the fleet's target group
    template_version: str
    members: tuple[Member, ...]
    tags: dict[str, str] = field(default_factory=dict)
    warm_pool: dict[str, Any] | None = field(default=None, compare=False)  # as described

    @property
    def number(self) -> int:
        return group_number(self.name)

    @property
    def release(self) -> str:
        return release_id(self.image, self.tags.get(AMI_TAG))

    @classmethod
    def from_aws(cls, raw: Any, target_group: str | None) -> ServerGroup:
        tags = tag_map(raw.get("Tags"))
        template = raw.get("LaunchTemplate") or {}
        return cls(
            name=raw["AutoScalingGroupName"],
            image=tags.get(IMAGE_TAG, ""),
            desired=int(raw["DesiredCapacity"]),
            min_size=int(raw["MinSize"]),
            max_size=int(raw["MaxSize"]),
            attached=bool(target_group and target_group in raw.get("TargetGroupARNs", [])),
            template_version=str(template.get("Version", "")),
            members=tuple(
                Member(
                    m["InstanceId"],
                    m["LifecycleState"],
                    m.get("HealthStatus", ""),
                    str((m.get("LaunchTemplate") or {}).get("Version", "")),
                )
                for m in raw.get("Instances", [])
            ),
            tags=tags,
            warm_pool=raw.get("WarmPoolConfiguration") or None,
        )


def list_groups(aws: Aws, fleet: str, target_group: str | None) -> list[ServerGroup]:
    """The fleet's server groups, newest first (paginated)."""
    paginator = aws.client("autoscaling").get_paginator("describe_auto_scaling_groups")
    filters = [{"Name": f"tag:{FLEET_TAG}", "Values": [fleet]}]
    groups: list[ServerGroup] = []
    with aws_errors(f"listing the server groups of {fleet}"):
        for page in paginator.paginate(Filters=filters):
            groups += [ServerGroup.from_aws(g, target_group) for g in page["AutoScalingGroups"]]
    return sorted(groups, key=lambda g: g.number, reverse=True)


def describe_instances(aws: Aws, ids: Sequence[str]) -> dict[str, Any]:
    """EC2's view (address, launch time, state, tags) of these instances, by id."""
    found: dict[str, Any] = {}
    paginator = aws.ec2.get_paginator("describe_instances")
    with aws_errors("describing the fleet's instances"):
        for chunk in _chunks(sorted(set(ids)), 200):
            filters: list[Any] = [{"Name": "instance-id", "Values": chunk}]
            for page in paginator.paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    found.update({i["InstanceId"]: i for i in reservation["Instances"]})
    return found


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# launch template ------------------------------------------------------------


def launch_data(
    *,
    ami: str,
    instance_type: str,
    tags: dict[str, str],
    security_groups: Sequence[str],
    instance_profile: str | None,
) -> dict[str, Any]:
    """The full launch data of one image's version (IMDSv2 only, tags on instance and disk)."""
    tag_list = [{"Key": k, "Value": v} for k, v in sorted(tags.items())]
    data: dict[str, Any] = {
        "ImageId": ami,
        "InstanceType": instance_type,
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tag_list},
            {"ResourceType": "volume", "Tags": tag_list},
        ],
    }
    if security_groups:
        data["SecurityGroupIds"] = list(security_groups)
    if instance_profile:
        data["IamInstanceProfile"] = {"Name": instance_profile}
    return data


def add_template_version(
    aws: Aws, fleet: str, data: Any, description: str, tags: dict[str, str]
) -> str:
    """A new version of the fleet's template (created on first use); its number."""
    name = template_name(fleet)
    ec2 = aws.ec2
    with aws_errors(f"writing launch template {name}"):
        try:
            version = ec2.create_launch_template_version(
                LaunchTemplateName=name, LaunchTemplateData=data, VersionDescription=description
            )["LaunchTemplateVersion"]
        except ec2.exceptions.ClientError as exc:
            if "NotFound" not in str(exc.response.get("Error", {}).get("Code", "")):
                raise
            created = ec2.create_launch_template(
                LaunchTemplateName=name,
                LaunchTemplateData=data,
                VersionDescription=description,
                TagSpecifications=[
                    {
                        "ResourceType": "launch-template",
                        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                    }
                ],
            )["LaunchTemplate"]
            return str(created["LatestVersionNumber"])
    return str(version["VersionNumber"])


def set_default_version(aws: Aws, fleet: str, version: str) -> None:
    """The template's default version is the one the fleet serves: what a console launch gets."""
    with aws_errors(f"updating launch template {template_name(fleet)}"):
        aws.ec2.modify_launch_template(
            LaunchTemplateName=template_name(fleet), DefaultVersion=version
        )


def template_versions(aws: Aws, fleet: str) -> list[Any]:
    """Every version of the fleet's template, newest first; [] before the first deploy."""
    paginator = aws.ec2.get_paginator("describe_launch_template_versions")
    versions: list[Any] = []
    with aws_errors(f"reading launch template {template_name(fleet)}"):
        try:
            for page in paginator.paginate(LaunchTemplateName=template_name(fleet)):
                versions += page["LaunchTemplateVersions"]
        except aws.ec2.exceptions.ClientError as exc:
            if "NotFound" not in str(exc.response.get("Error", {}).get("Code", "")):
                raise
            return []
    return sorted(versions, key=lambda v: int(v["VersionNumber"]), reverse=True)


# Auto Scaling groups ------------------------------------------------------------


def create_group(
    aws: Aws,
    fleet: str,
    name: str,
    version: str,
    *,
    desired: int,
    min_size: int,
    max_size: int,
    subnets: Sequence[str],
    target_group: str | None,
    grace: int,
    tags: dict[str, str],
) -> None:
    kwargs: dict[str, Any] = {
        "AutoScalingGroupName": name,
        "LaunchTemplate": {"LaunchTemplateName": template_name(fleet), "Version": version},
        "MinSize": min_size,
        "MaxSize": max_size,
        "DesiredCapacity": desired,
        "VPCZoneIdentifier": ",".join(subnets),
        "HealthCheckGracePeriod": grace,
        "Tags": [
            {"Key": k, "Value": v, "PropagateAtLaunch": k in (APP_TAG, FLEET_TAG, IMAGE_TAG)}
            for k, v in tags.items()
        ],
    }
    if target_group:
        kwargs["TargetGroupARNs"] = [target_group]
        kwargs["HealthCheckType"] = "ELB"
    with aws_errors(f"creating server group {name}"):
        aws.client("autoscaling").create_auto_scaling_group(**kwargs)


def resize(aws: Aws, group: ServerGroup, desired: int) -> None:
    """Set the desired count, widening min/max only as far as that needs."""
    with aws_errors(f"resizing server group {group.name}"):
        aws.client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=group.name,
            DesiredCapacity=desired,
            MinSize=min(group.min_size, desired),
            MaxSize=max(group.max_size, desired),
        )


def set_size(aws: Aws, name: str, *, desired: int, min_size: int) -> None:
    """Desired and minimum count of a group created empty (max set at creation)."""
    with aws_errors(f"resizing server group {name}"):
        aws.client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=name, DesiredCapacity=desired, MinSize=min_size
        )


def lower_min(aws: Aws, group: ServerGroup, floor: int) -> None:
    if group.min_size > floor:
        with aws_errors(f"resizing server group {group.name}"):
            aws.client("autoscaling").update_auto_scaling_group(
                AutoScalingGroupName=group.name, MinSize=max(0, floor)
            )


def set_attached(aws: Aws, group: str, target_group: str, attached: bool) -> None:
    client = aws.client("autoscaling")
    with aws_errors(f"{'attaching' if attached else 'detaching'} server group {group}"):
        if attached:
            client.attach_load_balancer_target_groups(
                AutoScalingGroupName=group, TargetGroupARNs=[target_group]
            )
        else:
            client.detach_load_balancer_target_groups(
                AutoScalingGroupName=group, TargetGroupARNs=[target_group]
            )


def launch_failure(aws: Aws, group: str, since: datetime.datetime) -> str | None:
    """Why Auto Scaling failed to launch into ``group`` since ``since``, if it says so."""
    with aws_errors(f"reading the scaling activities of {group}"):
        found = aws.client("autoscaling").describe_scaling_activities(
            AutoScalingGroupName=group, MaxRecords=20
        )
    for activity in found.get("Activities", []):
        if activity.get("StatusCode") not in ("Failed", "Cancelled"):
            continue
        if activity.get("StartTime") and activity["StartTime"] < since:
            continue
        return str(activity.get("StatusMessage") or activity.get("Description") or "failed")
    return None


def use_elb_health(aws: Aws, group: str, grace: int) -> None:
    """Judge the group's instances by the load balancer too, not only EC2 status.

    A group created outside the target group (a blue-green standby) keeps
    EC2 checks after attaching unless told: ELB-unhealthy instances would then
    never be replaced.
    """
    with aws_errors(f"switching server group {group} to load-balancer health checks"):
        aws.client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=group, HealthCheckType="ELB", HealthCheckGracePeriod=grace
        )


def terminate_members(aws: Aws, ids: Iterable[str]) -> None:
    """Terminate and lower the group's desired count, so nothing replaces them."""
    client = aws.client("autoscaling")
    for instance in ids:
        with aws_errors(f"terminating {instance}"):
            client.terminate_instance_in_auto_scaling_group(
                InstanceId=instance, ShouldDecrementDesiredCapacity=True
            )


def delete_group(aws: Aws, name: str) -> None:
    with aws_errors(f"deleting server group {name}"):
        aws.client("autoscaling").delete_auto_scaling_group(
            AutoScalingGroupName=name, ForceDelete=True
        )


def tag_group(aws: Aws, name: str, tags: dict[str, str]) -> None:
    with aws_errors(f"tagging server group {name}"):
        aws.client("autoscaling").create_or_update_tags(
            Tags=[
                {
                    "ResourceId": name,
                    "ResourceType": "auto-scaling-group",
                    "Key": k,
                    "Value": v,
                    "PropagateAtLaunch": False,
                }
                for k, v in tags.items()
            ]
        )


KEEP_TEMPLATE_VERSIONS = 100  # newest versions kept (the history kiln aws history shows)


def prune_template_versions(aws: Aws, fleet: str, in_use: Iterable[str]) -> list[int]:
    """Delete old versions of the fleet's template; the versions deleted.

    Kept: the newest ``KEEP_TEMPLATE_VERSIONS`` (the history), the default, and
    every version a group or instance still uses. EC2 allows 10,000 versions
    per template, and every history read pages through all of them.
    """
    versions = template_versions(aws, fleet)  # newest first
    keep = {str(v["VersionNumber"]) for v in versions[:KEEP_TEMPLATE_VERSIONS]}
    keep |= {str(v["VersionNumber"]) for v in versions if v.get("DefaultVersion")}
    keep |= {str(v) for v in in_use if str(v)}
    doomed = sorted(
        int(v["VersionNumber"]) for v in versions if str(v["VersionNumber"]) not in keep
    )
    with aws_errors(f"deleting old versions of launch template {template_name(fleet)}"):
        for start in range(0, len(doomed), 200):  # EC2 takes 200 a call
            aws.ec2.delete_launch_template_versions(
                LaunchTemplateName=template_name(fleet),
                Versions=[str(n) for n in doomed[start : start + 200]],
            )
    return doomed
