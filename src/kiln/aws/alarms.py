"""The CloudWatch alarms of a carried step or simple scaling policy, re-pointed.

Such a policy does nothing by itself: an alarm names its ARN among its
actions, and a copy of the policy on a new group has a new ARN. So each alarm
acting on the old policy is copied as well, under a name of the new group's
(``<group>-<the alarm's own name>``, kiln-* like the group), with the new
policy's ARN in its actions and the new group in its ``AutoScalingGroupName``
dimension; everything else is kept. When kiln deletes a server group it
deletes the alarms named after it: the alarms it made. An alarm someone made
by hand is never changed or deleted: once its group is gone it simply has no
action left (AWS deletes a group's policies with it).

Target-tracking policies are not handled here: Auto Scaling makes and
deletes their alarms itself.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from kiln.aws.session import Aws, aws_errors

STEP_TYPES = frozenset({"StepScaling", "SimpleScaling"})
_NAME_MAX = 255
_ALARM_FIELDS = (
    "AlarmName",
    "AlarmDescription",
    "ActionsEnabled",
    "OKActions",
    "AlarmActions",
    "InsufficientDataActions",
    "MetricName",
    "Namespace",
    "Statistic",
    "ExtendedStatistic",
    "Dimensions",
    "Period",
    "Unit",
    "EvaluationPeriods",
    "DatapointsToAlarm",
    "Threshold",
    "ComparisonOperator",
    "TreatMissingData",
    "EvaluateLowSampleCountPercentile",
    "Metrics",
    "ThresholdMetricId",
)
_ACTIONS = ("OKActions", "AlarmActions", "InsufficientDataActions")
_GROUP_DIMENSION = "AutoScalingGroupName"


def acting_on(aws: Aws, policy_arns: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    """The metric alarms whose actions name one of these policies (name -> ARN), once each."""
    client = aws.client("cloudwatch")
    found: dict[str, dict[str, Any]] = {}
    for name, arn in policy_arns.items():
        with aws_errors(f"reading the alarms of scaling policy {name}"):
            for page in client.get_paginator("describe_alarms").paginate(
                ActionPrefix=arn, AlarmTypes=["MetricAlarm"]
            ):
                for alarm in page.get("MetricAlarms", []):
                    found.setdefault(alarm["AlarmName"], _pick(alarm))
    return tuple(found.values())


def moved(
    alarm: Mapping[str, Any], old_group: str, new_group: str, arns: Mapping[str, str]
) -> dict[str, Any]:
    """``alarm`` (PutMetricAlarm arguments) for ``new_group``: its name, actions, dimension.

    ``arns`` maps each old policy ARN to its copy's.
    """
    new = copy.deepcopy(dict(alarm))
    new["AlarmName"] = alarm_name(alarm["AlarmName"], old_group, new_group)
    for key in _ACTIONS:
        if key in new:
            new[key] = [arns.get(action, action) for action in new[key]]
    if "Dimensions" in new:
        new["Dimensions"] = _regrouped(new["Dimensions"], old_group, new_group)
    for query in new.get("Metrics", []):
        metric = query.get("MetricStat", {}).get("Metric", {})
        if "Dimensions" in metric:
            metric["Dimensions"] = _regrouped(metric["Dimensions"], old_group, new_group)
    return new


def alarm_name(name: str, old_group: str, new_group: str) -> str:
    """kiln's copy's name: the new group's name, then the alarm's own name."""
    own = name[len(old_group) + 1 :] if name.startswith(old_group + "-") else name
    return f"{new_group}-{own}"[:_NAME_MAX]


def put(aws: Aws, alarms: list[dict[str, Any]]) -> None:
    client = aws.client("cloudwatch")
    for alarm in alarms:
        with aws_errors(f"putting alarm {alarm['AlarmName']}"):
            client.put_metric_alarm(**alarm)


def retire(aws: Aws, group: str) -> list[str]:
    """Delete the alarms kiln made for ``group`` (named after it); the names deleted."""
    client = aws.client("cloudwatch")
    with aws_errors(f"reading the alarms of {group}"):
        names = [
            alarm["AlarmName"]
            for page in client.get_paginator("describe_alarms").paginate(
                AlarmNamePrefix=f"{group}-", AlarmTypes=["MetricAlarm"]
            )
            for alarm in page.get("MetricAlarms", [])
        ]
    for start in range(0, len(names), 100):  # DeleteAlarms takes 100 names a call
        with aws_errors(f"deleting the alarms of {group}"):
            client.delete_alarms(AlarmNames=names[start : start + 100])
    return names


def _regrouped(dimensions: list[dict[str, str]], old: str, new: str) -> list[dict[str, str]]:
    return [
        {**d, "Value": new} if d.get("Name") == _GROUP_DIMENSION and d.get("Value") == old else d
        for d in dimensions
    ]


def _pick(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: raw[k] for k in _ALARM_FIELDS if raw.get(k) not in (None, [], "")}
