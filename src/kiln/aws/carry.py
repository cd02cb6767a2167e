"""What a new server group inherits from the one serving: scaling policies, hooks, warm pool.

Auto Scaling keeps these per group, so a release in a new group would lose the
target tracking someone set up on the old one (and its lifecycle hooks, and
its warm pool) unless they are copied. They are read from the group serving
now and put on the new group before it launches anything: a group with
lifecycle hooks is created empty, given its hooks, then sized, so its first
instances already pass through them.

What cannot be carried: a step or simple scaling policy is copied, but the
CloudWatch alarms that trigger it name the old policy's ARN; target tracking
and predictive policies make their own alarms, so they work at once. A
hook's notification role is passed again (``iam:PassRole`` on it, for the
deploy user).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.aws.session import Aws, aws_errors
from kiln.config import WarmPoolSettings

_POLICY_FIELDS = (
    "PolicyName",
    "PolicyType",
    "AdjustmentType",
    "MinAdjustmentMagnitude",
    "ScalingAdjustment",
    "Cooldown",
    "MetricAggregationType",
    "StepAdjustments",
    "EstimatedInstanceWarmup",
    "TargetTrackingConfiguration",
    "Enabled",
    "PredictiveScalingConfiguration",
)
_HOOK_FIELDS = (
    "LifecycleHookName",
    "LifecycleTransition",
    "NotificationTargetARN",
    "RoleARN",
    "NotificationMetadata",
    "HeartbeatTimeout",
    "DefaultResult",
)


@dataclass(frozen=True)
class Carried:
    """A group's scaling policies, lifecycle hooks and warm pool, as Put* arguments."""

    policies: tuple[dict[str, Any], ...] = ()
    hooks: tuple[dict[str, Any], ...] = ()
    warm_pool: dict[str, Any] | None = field(default=None)

    def summary(self) -> dict[str, Any]:
        return {
            "policies": [p["PolicyName"] for p in self.policies],
            "hooks": [h["LifecycleHookName"] for h in self.hooks],
            "warm_pool": self.warm_pool,
        }


def read(aws: Aws, group: str, warm_pool: Any) -> Carried:
    """What ``group`` has (``warm_pool``: its WarmPoolConfiguration, from its description)."""
    client = aws.client("autoscaling")
    policies: list[dict[str, Any]] = []
    with aws_errors(f"reading the scaling policies of {group}"):
        for page in client.get_paginator("describe_policies").paginate(AutoScalingGroupName=group):
            policies += [_pick(p, _POLICY_FIELDS) for p in page.get("ScalingPolicies", [])]
    with aws_errors(f"reading the lifecycle hooks of {group}"):
        raw = client.describe_lifecycle_hooks(AutoScalingGroupName=group)
    hooks = [_pick(h, _HOOK_FIELDS) for h in raw.get("LifecycleHooks", [])]
    return Carried(tuple(policies), tuple(hooks), _warm_pool(warm_pool))


def configured(settings: WarmPoolSettings) -> dict[str, Any]:
    """kiln.toml's ``warm_pool`` as PutWarmPool arguments."""
    pool: dict[str, Any] = {
        "MinSize": settings.min_size,
        "PoolState": settings.state,
        "InstanceReusePolicy": {"ReuseOnScaleIn": settings.reuse_on_scale_in},
    }
    if settings.max_prepared_capacity is not None:
        pool["MaxGroupPreparedCapacity"] = settings.max_prepared_capacity
    return pool


def put_hooks(aws: Aws, group: str, carried: Carried) -> None:
    client = aws.client("autoscaling")
    for hook in carried.hooks:
        with aws_errors(f"putting lifecycle hook {hook['LifecycleHookName']} on {group}"):
            client.put_lifecycle_hook(AutoScalingGroupName=group, **hook)


def put_policies_and_pool(aws: Aws, group: str, carried: Carried) -> None:
    client = aws.client("autoscaling")
    for policy in carried.policies:
        with aws_errors(f"putting scaling policy {policy['PolicyName']} on {group}"):
            client.put_scaling_policy(AutoScalingGroupName=group, **policy)
    if carried.warm_pool is not None:
        with aws_errors(f"putting a warm pool on {group}"):
            client.put_warm_pool(AutoScalingGroupName=group, **carried.warm_pool)


def _pick(raw: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    """The Put* arguments of a Describe* entry: only the fields it takes, none empty."""
    picked = {k: raw[k] for k in fields if raw.get(k) not in (None, [], {}, "")}
    tracking = picked.get("TargetTrackingConfiguration")
    if tracking:  # described with read-only fields Put does not take
        picked["TargetTrackingConfiguration"] = {
            k: v for k, v in tracking.items() if v not in (None, [], {}, "")
        }
    return picked


def _warm_pool(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    pool: dict[str, Any] = {}
    for name in ("MinSize", "MaxGroupPreparedCapacity", "PoolState", "InstanceReusePolicy"):
        if raw.get(name) is not None:
            pool[name] = raw[name]
    return pool
