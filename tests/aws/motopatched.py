"""``moto_server`` with the AWS behaviour kiln relies on that moto 5.2 lacks.

- ``CreateImage`` with a ``snapshot`` TagSpecification tags every snapshot the
  image gets (AWS documents it; moto raises NotImplementedError). kiln tags
  its snapshots that way so a bake killed mid-wait leaves nothing prune
  cannot delete.
- ``DeleteLaunchTemplateVersions`` (moto has no such action): the versions
  are gone from every later describe; numbering and the default are kept.
- Percentile statistics (``p99``) in ``GetMetricData``: moto returns none; here
  the nearest-rank percentile of the raw values put in the period (AWS
  estimates percentiles; with raw values put one by one the two agree).

- ``CreateImage`` makes the AMI's snapshot from the instance's root volume,
  so the AMI's mapping shows that volume's size, type, encryption and KMS key
  (moto makes a fresh unencrypted 15 GiB one), and takes the request's
  ``BlockDeviceMappings`` ``DeleteOnTermination``.
- ``CopyImage`` takes ``TagSpecifications`` (image and snapshot),
  ``Encrypted``/``KmsKeyId`` (the copy's snapshot is encrypted with that key,
  or the region's default EBS key) and ``ClientToken`` (a repeated request
  returns the first copy); a copy stays ``pending`` for
  ``KILN_MOTO_COPY_SECONDS`` (default 0) as AWS's take minutes.
- ``CopyImage`` of another account's AMI (moto looks in the caller's account
  only): allowed, as on AWS, when the AMI's launch permission names the
  caller's account and its snapshot gives it createVolumePermission.
- ``EnableImageDeprecation``: the AMI's ``DeprecationTime``.
- Organizations' ``CreateAccount``: the new account's
  OrganizationAccountAccessRole holds AdministratorAccess (moto creates it
  with no permission), so its management account can reach into it.
- ``PutLifecycleHook`` keeps the hook's ``RoleARN``, ``NotificationTargetARN``
  and ``NotificationMetadata`` (moto describes every hook with one made-up
  role and queue); a hook without them has none, as on AWS.
- ``PutScalingPolicy`` answers with ``PolicyARN`` (moto spells it
  ``PolicyArn``, which boto3 drops).
- ``PutLifecycleHook`` with a ``RoleARN`` checks ``iam:PassRole`` on that
  role for the caller, as AWS does (moto checks only the call's own action):
  an Allow statement whose actions, resources and ``iam:PassedToService``
  (``autoscaling.amazonaws.com``) match; a statement with any other condition
  key does not count. Only when the server enforces IAM.

Nothing else changes.

    python motopatched.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import sys
import time
from typing import Any

from moto.autoscaling.responses import AutoScalingResponse
from moto.cloudwatch.models import Statistics
from moto.core.responses import ActionResult
from moto.ec2.exceptions import AuthFailureRestricted, InvalidAMIIdError
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.launch_templates import LaunchTemplateBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ec2.utils import random_ami_id
from moto.organizations.models import FakeAccount
from moto.server import main

_create_image = AmiBackend.create_image


def create_image(
    self: Any,
    instance_id: str,
    name: str,
    description: str,
    tag_specifications: list[Any],
    block_device_mappings: list[Any] | None = None,
) -> Any:
    snapshot_tags = [
        tag
        for spec in tag_specifications
        if spec["ResourceType"] == "snapshot"
        for tag in spec.get("Tags", [])
    ]
    others = [spec for spec in tag_specifications if spec["ResourceType"] != "snapshot"]
    ami = _create_image(self, instance_id, name, description, others)
    _snapshot_root_volume(self, ami, self.get_instance(instance_id), block_device_mappings or [])
    for tag in snapshot_tags:  # moto gives an image one snapshot
        ami.ebs_snapshot.add_tag(tag["Key"], tag["Value"])
    return ami


def _snapshot_root_volume(backend: Any, ami: Any, instance: Any, requested: list[Any]) -> None:
    """The AMI's snapshot is of the instance's root volume, as on AWS."""
    devices = dict(instance.get_block_device_mapping)
    device = ami.root_device_name if ami.root_device_name in devices else next(iter(devices), None)
    if device is None:
        return
    volume = backend.get_volume(devices[device].volume_id)
    old = ami.ebs_snapshot
    snapshot = backend.create_snapshot(volume.id, old.description, ami.owner_id, from_ami=ami.id)
    snapshot.encrypted = bool(volume.encrypted)
    snapshot.kms_key_id = volume.kms_key_id
    backend.snapshots.pop(old.id, None)
    ami.ebs_snapshot = snapshot
    delete = bool(devices[device].delete_on_termination)
    for mapping in requested:
        if mapping.get("DeviceName") == device and "DeleteOnTermination" in mapping.get("Ebs", {}):
            delete = str(mapping["Ebs"]["DeleteOnTermination"]).lower() == "true"
    ami.kiln_disk = {
        "size": int(volume.size),
        "type": volume.volume_type or "standard",
        "encrypted": bool(volume.encrypted),
        "kms": volume.kms_key_id,
        "delete": delete,
    }


def create_image_response(self: Any) -> ActionResult:
    image = self.ec2_backend.create_image(
        self._get_param("InstanceId"),
        self._get_param("Name"),
        self._get_param("Description", ""),
        tag_specifications=self._get_param("TagSpecifications", []),
        block_device_mappings=self._get_param("BlockDeviceMappings", []),
    )
    return ActionResult({"ImageId": image.id})


_mappings = Ami.block_device_mappings


def block_device_mappings(self: Any) -> list[dict[str, Any]]:
    disk = getattr(self, "kiln_disk", None)
    if disk is None:
        return _mappings.fget(self)  # type: ignore[attr-defined,no-any-return]
    ebs: dict[str, Any] = {
        "SnapshotId": self.ebs_snapshot.id,
        "VolumeSize": disk["size"],
        "DeleteOnTermination": disk["delete"],
        "VolumeType": disk["type"],
        "Encrypted": disk["encrypted"],
    }
    if disk["kms"]:
        ebs["KmsKeyId"] = disk["kms"]
    return [{"DeviceName": self.root_device_name, "Ebs": ebs}]


def _state(self: Any) -> str:
    ready = self.__dict__.get("kiln_ready_at")
    state = str(self.__dict__.get("kiln_state", "available"))
    if state == "pending" and ready is not None and time.monotonic() >= ready:
        return "available"
    return state


def _set_state(self: Any, value: str) -> None:
    self.__dict__["kiln_state"] = value


def copy_image_response(self: Any) -> ActionResult:
    backend = self.ec2_backend
    tokens = backend.__dict__.setdefault("kiln_copy_tokens", {})
    token = self._get_param("ClientToken")
    if token and token in tokens:
        return ActionResult({"ImageId": tokens[token]})
    source_id, source_region = self._get_param("SourceImageId"), self._get_param("SourceRegion")
    source = _copy_source(backend.account_id, source_id, source_region)
    ami = Ami(
        backend,
        random_ami_id(),
        instance=None,
        source_ami=source,
        name=self._get_param("Name"),
        description=self._get_param("Description"),
    )
    backend.amis[ami.id] = ami
    disk = dict(getattr(source, "kiln_disk", None) or {
        "size": 15, "type": "standard", "encrypted": False, "kms": None, "delete": True
    })  # fmt: skip
    if str(self._get_param("Encrypted", "false")).lower() == "true" or disk["encrypted"]:
        disk["encrypted"] = True
        disk["kms"] = self._get_param("KmsKeyId") or f"alias/aws/ebs ({backend.region_name})"
    ami.kiln_disk = disk
    ami.ebs_snapshot.encrypted = disk["encrypted"]
    ami.ebs_snapshot.kms_key_id = disk["kms"]
    for spec in self._get_param("TagSpecifications", []):
        target = ami if spec["ResourceType"] == "image" else ami.ebs_snapshot
        for tag in spec.get("Tags", []):
            target.add_tag(tag["Key"], tag["Value"])
    seconds = float(os.environ.get("KILN_MOTO_COPY_SECONDS", "0"))
    if seconds > 0:
        ami.state = "pending"
        ami.kiln_ready_at = time.monotonic() + seconds  # a duration: the wall clock may step
    if token:
        tokens[token] = ami.id
    return ActionResult({"ImageId": ami.id})


def _copy_source(account: str, image_id: str, region: str) -> Any:
    """The AMI CopyImage reads: the caller's own, or another account's shared with it.

    As on AWS, another account's AMI can be copied only with launch permission
    for the caller's account and createVolumePermission on its snapshot.
    """
    from moto.ec2.models import ec2_backends

    for owner in [account, *(a for a in list(ec2_backends) if a != account)]:
        found = ec2_backends[owner][region].amis.get(image_id)
        if found is None:
            continue
        if owner == account:
            return found
        if {"UserId": account} not in found.launch_permissions and not found.is_public:
            raise InvalidAMIIdError(image_id)
        if account not in found.ebs_snapshot.create_volume_permission_userids:
            raise AuthFailureRestricted()
        return found
    raise InvalidAMIIdError(image_id)


def enable_image_deprecation(self: Any) -> ActionResult:
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    ami.deprecation_time = str(self._get_param("DeprecateAt"))
    return ActionResult({"Return": True})


AmiBackend.create_image = create_image  # type: ignore[method-assign]
AmisResponse.create_image = create_image_response  # type: ignore[method-assign]
AmisResponse.copy_image = copy_image_response  # type: ignore[method-assign]
AmisResponse.enable_image_deprecation = enable_image_deprecation  # type: ignore[attr-defined]
Ami.block_device_mappings = property(block_device_mappings)  # type: ignore[assignment,method-assign]
Ami.state = property(_state, _set_state)  # type: ignore[assignment,method-assign]


_describe_versions = LaunchTemplateBackend.describe_launch_template_versions


def describe_launch_template_versions(self: Any, *args: Any, **kwargs: Any) -> Any:
    found = _describe_versions(self, *args, **kwargs)
    return [(t, v) for t, v in found if not getattr(v, "kiln_deleted", False)]


def delete_launch_template_versions(self: Any) -> Any:
    """EC2's DeleteLaunchTemplateVersions: any version but the default."""
    template = self.ec2_backend.get_launch_template_by_name(self._get_param("LaunchTemplateName"))
    deleted, refused = [], []
    for number in self._get_param("Versions", []):
        version = template.versions[int(number) - 1]
        entry = {"LaunchTemplateName": template.name, "VersionNumber": int(number)}
        if template.is_default(version):
            refused.append({**entry, "ResponseError": {"Code": "launchTemplateVersionIsDefault"}})
            continue
        version.kiln_deleted = True
        deleted.append(entry)
    return ActionResult(
        {
            "SuccessfullyDeletedLaunchTemplateVersions": deleted,
            "UnsuccessfullyDeletedLaunchTemplateVersions": refused,
        }
    )


LaunchTemplateBackend.describe_launch_template_versions = describe_launch_template_versions  # type: ignore[method-assign]
LaunchTemplates.delete_launch_template_versions = delete_launch_template_versions  # type: ignore[attr-defined]

_statistic = Statistics.get_statistics_for_type


def get_statistics_for_type(self: Any, stat: str) -> Any:
    if not (stat.startswith("p") and stat[1:].replace(".", "", 1).isdigit()):
        return _statistic(self, stat)
    values = sorted(self.metric_single_values_list)
    if not values:
        return None
    rank = math.ceil(float(stat[1:]) / 100 * len(values))
    return values[max(0, rank - 1)]


Statistics.get_statistics_for_type = get_statistics_for_type  # type: ignore[method-assign]

_new_account = FakeAccount.__init__


def new_account(self: Any, *args: Any, **kwargs: Any) -> None:
    """A member account's OrganizationAccountAccessRole may do everything, as on AWS."""
    _new_account(self, *args, **kwargs)
    from moto.iam.models import iam_backends

    everything = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
    )
    role = kwargs.get("RoleName", "OrganizationAccountAccessRole")
    iam_backends[self.id]["global"].put_role_policy(role, "AdministratorAccess", everything)


FakeAccount.__init__ = new_account  # type: ignore[method-assign]

_put_lifecycle_hook = AutoScalingResponse.put_lifecycle_hook


def _may_pass_role(response: Any, role: str, service: str) -> None:
    """iam:PassRole on ``role`` to ``service`` for the caller, or AccessDenied (AWS's check)."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.access_control import IAMPolicy, IAMRequest

    if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
        return
    request = IAMRequest(
        account_id=response.current_account,
        method=response.method,
        path=response.raw_path,
        data=response.data,
        body=response.raw_body,
        headers=response.headers,
        action="PassRole",
    )

    def listed(value: Any) -> list[str]:
        return value if isinstance(value, list) else [value]

    def matches(patterns: Any, value: str) -> bool:
        return any(fnmatch.fnmatchcase(value, p) for p in listed(patterns))

    for policy in request._access_key.collect_policies():
        for statement in listed(IAMPolicy(policy)._policy_json["Statement"]):
            condition = statement.get("Condition", {})
            passed = condition.get("StringEquals", {}).get("iam:PassedToService")
            others = {k for block in condition.values() for k in block} - {"iam:PassedToService"}
            if (
                statement["Effect"] == "Allow"
                and matches(statement.get("Action", []), "iam:PassRole")
                and matches(statement.get("Resource", []), role)
                and (passed is None or service in listed(passed))
                and not others
            ):
                return
    request._action = "iam:PassRole"
    request._raise_access_denied()


def put_lifecycle_hook(self: Any) -> Any:
    role = self._get_param("RoleARN")
    if role:
        _may_pass_role(self, role, "autoscaling.amazonaws.com")
    result = _put_lifecycle_hook(self)
    group, name = self._get_param("AutoScalingGroupName"), self._get_param("LifecycleHookName")
    hook = self.autoscaling_backend.lifecycle_hooks[f"{group}_{name}"]
    hook.role_arn = self._get_param("RoleARN")
    hook.notification_target_arn = self._get_param("NotificationTargetARN")
    hook.notification_metadata = self._get_param("NotificationMetadata")
    return result


AutoScalingResponse.put_lifecycle_hook = put_lifecycle_hook  # type: ignore[method-assign]
_put_scaling_policy = AutoScalingResponse.put_scaling_policy


def put_scaling_policy(self: Any) -> ActionResult:
    _put_scaling_policy(self)
    (policy,) = self.autoscaling_backend.describe_policies(
        autoscaling_group_name=self._get_param("AutoScalingGroupName"),
        policy_names=[self._get_param("PolicyName")],
    )
    return ActionResult({"PolicyARN": policy.arn})


AutoScalingResponse.put_scaling_policy = put_scaling_policy  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
