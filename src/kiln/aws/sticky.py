"""``[fleet] sticky`` on AWS: the ALB's own session affinity, set on kiln.toml's target groups.

The local balancer's cookie (``kiln.local.affinity``) has an ALB twin: a target
group's ``lb_cookie`` stickiness (the ALB sets ``AWSALB``, naming the target,
encrypted by AWS). ``sticky = "cookie"`` turns it on for ``target_group_arn``
and ``canary_target_group_arn``, with ``sticky_duration`` (one day, the ALB's
default, when unset); ``"off"`` turns it off; unset leaves the groups as their
owner set them. While a canary splits the listener between the two groups,
the weighted forward gets group-level stickiness too: without it a client
pinned to a target in one group could be sent to the other group by weight.
Applied at each deployment (``Provider.apply_settings``), only when the
attributes differ, so an unchanged fleet makes one read per group.
"""

from __future__ import annotations

from typing import Any

from kiln.aws.session import Aws, aws_errors

DEFAULT_SECONDS = 86400  # the ALB's default lb_cookie duration
_ENABLED = "stickiness.enabled"
_TYPE = "stickiness.type"
_DURATION = "stickiness.lb_cookie.duration_seconds"


def attributes(mode: str | None, duration: float | None) -> dict[str, str] | None:
    """The target group attributes ``[fleet] sticky`` asks for; None: not kiln's to set."""
    if mode is None:
        return None
    if mode == "off":
        return {_ENABLED: "false"}
    seconds = round(duration) if duration is not None else DEFAULT_SECONDS
    return {_ENABLED: "true", _TYPE: "lb_cookie", _DURATION: str(seconds)}


def group_stickiness(mode: str | None, duration: float | None) -> dict[str, Any] | None:
    """The weighted forward's TargetGroupStickinessConfig while a canary splits traffic."""
    if mode != "cookie":
        return None
    seconds = round(duration) if duration is not None else DEFAULT_SECONDS
    return {"Enabled": True, "DurationSeconds": seconds}


def ensure(aws: Aws, target_group: str, wanted: dict[str, str]) -> bool:
    """Give the target group these stickiness attributes; False when it had them."""
    client = aws.client("elbv2")
    with aws_errors("reading the target group's stickiness ([fleet] sticky)"):
        found = client.describe_target_group_attributes(TargetGroupArn=target_group)
    current = {str(a["Key"]): str(a["Value"]) for a in found["Attributes"]}
    if all(current.get(key) == value for key, value in wanted.items()):
        return False
    with aws_errors("setting the target group's stickiness ([fleet] sticky)"):
        client.modify_target_group_attributes(
            TargetGroupArn=target_group,
            Attributes=[{"Key": key, "Value": value} for key, value in wanted.items()],
        )
    return True


def describe(wanted: dict[str, str]) -> str:
    """What the attributes mean, for the deployment's log."""
    if wanted[_ENABLED] != "true":
        return "not sticky"
    return f"sticky by the ALB's cookie for {wanted[_DURATION]}s"
