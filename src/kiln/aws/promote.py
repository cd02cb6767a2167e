"""Promotion on AWS: the AMI that served in one environment serves in the next, unbaked.

An AMI holds the whole image (code and env layer) plus its recipe (port, where
secrets come from), so the next environment can run it only if its own [env]
and recipe are the same: then the AMI is reused where it is (same account and
region) or copied into the target region (``CopyImage``, tags carried over).
Environment-specific values belong in SSM then: the same parameter names in
each account, different values. Copying between
accounts is refused: it needs the source account to share the AMI and its
snapshots first, which kiln does not do yet.
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.aws.ami import env_digest
from kiln.aws.images import ENV_TAG, IMAGE_TAG, RECIPE_TAG, Ami, _describe, wait_available
from kiln.aws.session import Aws, aws_errors, tags
from kiln.errors import AwsError, ImageNotFound, PromotionRefused

Note = Callable[[str], None]


def newest_ami(aws: Aws, image: str) -> Ami | None:
    """The newest available AMI of ``image`` in this session's account and region."""
    found = _describe(
        aws,
        [
            {"Name": f"tag:{IMAGE_TAG}", "Values": [image]},
            {"Name": "state", "Values": ["available"]},
        ],
    )
    return found[0] if found else None


def promote_ami(
    source: Aws,
    target: Aws,
    image: str,
    *,
    env: dict[str, str],
    recipe: str,
    timeout: float,
    note: Note | None = None,
) -> tuple[Ami, bool]:
    """The AMI of ``image`` where ``target`` deploys, and whether it was copied there."""
    say = note or (lambda _msg: None)
    origin = newest_ami(source, image)
    if origin is None:
        raise ImageNotFound(
            f"image {image} has no available AMI in {source.region}",
            hint="bake it there with 'kiln bake --provider aws' (the source environment's)",
        )
    if origin.tags.get(ENV_TAG) != env_digest(env):
        raise PromotionRefused(
            f"{origin.id} holds the source environment's [env]; the target's differs, "
            "and on AWS the env layer is inside the AMI",
            hint="keep [env] the same in both environments and put what differs in "
            "[secrets] (SSM, read at boot)",
        )
    if origin.tags.get(RECIPE_TAG) != recipe:
        raise PromotionRefused(
            f"{origin.id} was made with another recipe (port or secret sources) than "
            "the target environment's",
            hint="give both environments the same [provider.aws] port, ssm_prefix and [secrets]",
        )
    here = newest_ami(target, image)
    if here is not None:
        say(f"reusing {here.id} in {target.region}")
        return here, False
    if _account(source) != _account(target):
        raise PromotionRefused(
            f"the target environment is another AWS account than {origin.id}'s: copying "
            "AMIs between accounts is not supported yet",
            hint="promote within one account (regions may differ), or bake in the target account",
        )
    say(f"copying {origin.id} from {source.region} to {target.region}")
    carried = tags({k: v for k, v in origin.tags.items() if k.startswith("kiln:") or k == "Name"})
    with aws_errors(f"copying {origin.id} to {target.region}"):
        copy = target.ec2.copy_image(
            SourceImageId=origin.id,
            SourceRegion=source.region,
            Name=origin.name,
            Description=f"kiln image {image}, copied from {origin.id} in {source.region}",
            TagSpecifications=[{"ResourceType": "image", "Tags": carried}],  # type: ignore[misc,list-item]
        )["ImageId"]
    ami = wait_available(target, copy, timeout=timeout, note=say)
    if IMAGE_TAG not in ami.tags:
        # Tagging it afterwards would need ec2:CreateTags on an existing AMI, which the
        # deploy policy never grants (tags are written only by the call that creates).
        raise AwsError(
            f"{copy} in {target.region} came out of CopyImage without kiln's tags: the "
            "endpoint ignored TagSpecifications, so kiln cannot find or prune it",
            hint=f"deregister {copy} in {target.region}; promote against an endpoint "
            "that tags copies as they are made (AWS does)",
        )
    return ami, True


def _account(aws: Aws) -> str:
    with aws_errors("finding the account"):
        return str(aws.sts.get_caller_identity()["Account"])
