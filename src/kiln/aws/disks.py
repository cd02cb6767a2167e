"""The AMI's root volume: encryption with a chosen KMS key, size, type, deletion.

The builder is launched with its root volume already encrypted (and sized),
so its snapshot, and so the AMI, is encrypted from the start: no unencrypted
intermediate AMI ever exists, unlike create-then-copy. Copies to other
regions are copy-encrypted with that region's key (:mod:`kiln.aws.regions`).

KMS keys are checked before anything is launched, with the checks AWS makes
only minutes later (or moto never): the key exists in the region, is
enabled, is a symmetric encryption key, and, when the AMI is shared, is a
customer managed key (AMIs encrypted with an AWS managed key cannot be shared).
"""

from __future__ import annotations

from typing import Any

from kiln.aws.session import Aws, aws_errors
from kiln.config import AwsSettings, portable_key
from kiln.errors import AwsError


def builder_mappings(
    settings: AwsSettings, root_device: str, key_arn: str | None, base_size: int | None = None
) -> list[Any] | None:
    """RunInstances' mapping for the builder's root volume; None: the base image's as is.

    The size is always given (the base's when not configured): EC2 infers it,
    moto insists on it.
    """
    ebs: dict[str, Any] = {"DeleteOnTermination": True}  # the builder's disk never outlives it
    if settings.encrypts:
        ebs["Encrypted"] = True
        if key_arn:
            ebs["KmsKeyId"] = key_arn
    if settings.root_volume_size is not None:
        ebs["VolumeSize"] = settings.root_volume_size
    if settings.root_volume_type is not None:
        ebs["VolumeType"] = settings.root_volume_type
    if len(ebs) == 1:
        return None
    if "VolumeSize" not in ebs and base_size:
        ebs["VolumeSize"] = base_size
    return [{"DeviceName": root_device, "Ebs": ebs}]


def image_mappings(settings: AwsSettings, root_device: str) -> list[Any] | None:
    """CreateImage's mapping: what an instance launched from the AMI does with its disk."""
    if settings.delete_on_termination:
        return None  # EC2's default for a root volume
    return [{"DeviceName": root_device, "Ebs": {"DeleteOnTermination": False}}]


def key_for(settings: AwsSettings, region: str, home: str) -> str | None:
    """The key name to encrypt with in ``region``: None is the region's default EBS key."""
    if not settings.encrypts:
        return None
    if region != home and region in settings.copy_kms_key_ids:
        return settings.copy_kms_key_ids[region]
    key = settings.kms_key_id
    if key is None or region == home or not key.startswith("arn:"):
        return key  # an alias or an mrk- id names a key in every region
    parts = key.split(":")
    if not portable_key(key):  # refused by the config unless copy_kms_key_ids covers it
        raise AwsError(f"kms_key_id {key} is a key of {parts[3]}, not of {region}")
    parts[3] = region
    return ":".join(parts)


def check_key(aws: Aws, key: str | None, *, shared: bool) -> str | None:
    """The key's ARN after KMS's checks; None for the region's default EBS key."""
    if key is None:
        return None
    with aws_errors(f"checking KMS key {key} in {aws.region}"):
        try:
            meta = aws.client("kms").describe_key(KeyId=key)["KeyMetadata"]
        except aws.client("kms").exceptions.NotFoundException:
            raise AwsError(
                f"KMS key {key} does not exist in {aws.region}",
                hint="KMS keys are regional: create it there, or set [provider.aws] "
                "kms_key_id / copy_kms_key_ids to a key of that region",
            ) from None
    problem = _unusable(meta, shared)
    if problem:
        raise AwsError(f"KMS key {key} in {aws.region} {problem}", hint=_KEY_HINT)
    return str(meta["Arn"])


_KEY_HINT = "choose an enabled symmetric customer managed key ([provider.aws] kms_key_id)"


def _unusable(meta: Any, shared: bool) -> str | None:
    if not meta.get("Enabled") or meta.get("KeyState") != "Enabled":
        return f"is not enabled (state {meta.get('KeyState', '?')})"
    if (
        meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT"
        or meta.get("KeySpec", meta.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT"))
        != "SYMMETRIC_DEFAULT"
    ):
        return "is not a symmetric encryption key (EBS needs SYMMETRIC_DEFAULT)"
    if shared and meta.get("KeyManager") == "AWS":
        return "is an AWS managed key: AMIs encrypted with it cannot be shared"
    return None
