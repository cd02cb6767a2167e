"""What a new server group inherits from the one serving: scaling, hooks, schedule, warm pool.

Auto Scaling keeps these per group, so a release in a new group would lose the
target tracking someone set up on the old one (and its lifecycle hooks, its
scheduled actions, its warm pool) unless they are copied. They are read from
the group serving now and put on the new group before it launches anything: a
group with lifecycle hooks is created empty, given its hooks, then sized, so
its first instances already pass through them.

A step or simple scaling policy is copied with the CloudWatch alarms that
trigger it, re-pointed at the copy (kiln.aws.alarms); target tracking and
predictive policies make their own alarms. A one-off scheduled action whose
time has passed is not copied (Auto Scaling refuses a start time in the
past); a recurring one is, without its past start time. A hook's notification
role is passed again, which needs ``iam:PassRole`` on it: only the roles
kiln.toml lists (``hook_roles``) are in the policy, and a hook naming another
stops the deploy before the new group exists. (If putting any of it fails, the
provider deletes the new group again: a retry would otherwise find it and only
size it.)
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.aws import alarms
from kiln.aws.session import Aws, aws_errors
from kiln.config import WarmPoolSettings
from kiln.errors import ProviderError

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
_SCHEDULE_FIELDS = (
    "ScheduledActionName",
    "StartTime",
    "EndTime",
    "Recurrence",
    "MinSize",
    "MaxSize",
    "DesiredCapacity",
    "TimeZone",
)


@dataclass(frozen=True)
class Carried:
    """A group's policies, hooks, schedule and warm pool, as Put* arguments.

    ``source``: the group they were read from; ``policy_arns``: its step and
    simple policies' ARNs by name; ``alarms``: the alarms acting on those.
    """

    policies: tuple[dict[str, Any], ...] = ()
    hooks: tuple[dict[str, Any], ...] = ()
    warm_pool: dict[str, Any] | None = field(default=None)
    scheduled: tuple[dict[str, Any], ...] = ()
    source: str = ""
    policy_arns: dict[str, str] = field(default_factory=dict)
    alarms: tuple[dict[str, Any], ...] = ()

    def summary(self) -> dict[str, Any]:
        return {
            "policies": [p["PolicyName"] for p in self.policies],
            "hooks": [h["LifecycleHookName"] for h in self.hooks],
            "scheduled": [a["ScheduledActionName"] for a in self.scheduled],
            "alarms": [a["AlarmName"] for a in self.alarms],
            "warm_pool": self.warm_pool,
        }


def read(aws: Aws, group: str, warm_pool: Any, now: datetime.datetime) -> Carried:
    """What ``group`` has (``warm_pool``: its WarmPoolConfiguration, from its description)."""
    client = aws.client("autoscaling")
    policies: list[dict[str, Any]] = []
    arns: dict[str, str] = {}
    with aws_errors(f"reading the scaling policies of {group}"):
        for page in client.get_paginator("describe_policies").paginate(AutoScalingGroupName=group):
            for raw_policy in page.get("ScalingPolicies", []):
                policies.append(_pick(raw_policy, _POLICY_FIELDS))
                if raw_policy.get("PolicyType", "SimpleScaling") in alarms.STEP_TYPES:
                    arns[raw_policy["PolicyName"]] = raw_policy["PolicyARN"]
    with aws_errors(f"reading the lifecycle hooks of {group}"):
        raw = client.describe_lifecycle_hooks(AutoScalingGroupName=group)
    hooks = [_pick(h, _HOOK_FIELDS) for h in raw.get("LifecycleHooks", [])]
    scheduled: list[dict[str, Any]] = []
    with aws_errors(f"reading the scheduled actions of {group}"):
        pages = client.get_paginator("describe_scheduled_actions").paginate(
            AutoScalingGroupName=group
        )
        for page in pages:
            for action in page.get("ScheduledUpdateGroupActions", []):
                kept = _still_ahead(_pick(action, _SCHEDULE_FIELDS), now)
                if kept is not None:
                    scheduled.append(kept)
    return Carried(
        tuple(policies),
        tuple(hooks),
        _warm_pool(warm_pool),
        tuple(scheduled),
        source=group,
        policy_arns=arns,
        alarms=alarms.acting_on(aws, arns) if arns else (),
    )


def check_hook_roles(carried: Carried, allowed: Sequence[str]) -> None:
    """Every hook's role is one kiln.toml lists, so the policy lets kiln pass it."""
    for hook in carried.hooks:
        role = hook.get("RoleARN")
        if role and role.split(":role/", 1)[-1] not in allowed:
            name = role.split(":role/", 1)[-1]
            raise ProviderError(
                f"lifecycle hook {hook['LifecycleHookName']} of {carried.source} notifies "
                f"through role {name}, which the scaling policy may not pass to Auto Scaling",
                hint=f"add {name!r} to [provider.aws] hook_roles, then update the deploy "
                "user's policies ('kiln aws create-deploy-user' or 'kiln aws policy')",
            )


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
    """Policies (their alarms re-pointed), scheduled actions, the warm pool."""
    client = aws.client("autoscaling")
    arns: dict[str, str] = {}
    for policy in carried.policies:
        with aws_errors(f"putting scaling policy {policy['PolicyName']} on {group}"):
            made = client.put_scaling_policy(AutoScalingGroupName=group, **policy)
        old = carried.policy_arns.get(policy["PolicyName"])
        if old:
            arns[old] = made["PolicyARN"]
    alarms.put(aws, [alarms.moved(a, carried.source, group, arns) for a in carried.alarms])
    for action in carried.scheduled:
        with aws_errors(f"putting scheduled action {action['ScheduledActionName']} on {group}"):
            client.put_scheduled_update_group_action(AutoScalingGroupName=group, **action)
    if carried.warm_pool is not None:
        with aws_errors(f"putting a warm pool on {group}"):
            client.put_warm_pool(AutoScalingGroupName=group, **carried.warm_pool)


def _still_ahead(action: dict[str, Any], now: datetime.datetime) -> dict[str, Any] | None:
    """A scheduled action as PutScheduledUpdateGroupAction takes it, or None when it is over.

    Auto Scaling refuses a start time in the past: a one-off action whose time
    has passed already ran (or never will), a recurring one keeps its recurrence
    and loses its start; one whose end time has passed is over either way.
    """
    end, start = action.get("EndTime"), action.get("StartTime")
    if end is not None and end <= now:
        return None
    if start is not None and start <= now:
        if not action.get("Recurrence"):
            return None
        action = {k: v for k, v in action.items() if k != "StartTime"}
    return action


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
