"""Canary on AWS: one ALB listener's weighted forward, and CloudWatch's counts per side.

The fleet serves from ``target_group_arn``; canaries serve from their own
``canary_target_group_arn``. The listener (``listener_arn``) forwards to the
fleet's group; a split rewrites its default action, from its parsed form, to a
weighted forward between the two groups, and ending the split rewrites it to a
plain forward to the fleet's group again. Anything else in the listener's
default action is refused rather than guessed at.

The gate reads ``AWS/ApplicationELB`` per target group (dimensions
``TargetGroup`` and ``LoadBalancer``): ``RequestCount`` and
``HTTPCode_Target_5XX_Count`` summed, ``TargetResponseTime`` as p99, per
minute (the ALB's resolution), from the minute a step began.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from typing import Any

from kiln.aws.session import Aws, aws_errors
from kiln.errors import ConfigError
from kiln.providers.protocol import InstanceStats

NAMESPACE = "AWS/ApplicationELB"
PERIOD = 60  # ALB metrics are published per minute


@dataclass(frozen=True)
class Forward:
    """A listener's default forward action, parsed: which groups get which weight."""

    weights: dict[str, int]  # target group ARN -> weight
    stickiness: dict[str, Any] | None = None  # group-level stickiness, kept as it was

    def to_action(self) -> dict[str, Any]:
        """The action re-emitted from the parsed fields (a single group: the plain form)."""
        live = {tg: w for tg, w in self.weights.items() if w > 0}
        if len(live) == 1 and not self.stickiness:
            return {"Type": "forward", "TargetGroupArn": next(iter(live))}
        config: dict[str, Any] = {
            "TargetGroups": [{"TargetGroupArn": tg, "Weight": w} for tg, w in live.items()]
        }
        if self.stickiness:
            config["TargetGroupStickinessConfig"] = self.stickiness
        return {"Type": "forward", "ForwardConfig": config}


@dataclass(frozen=True)
class Listener:
    arn: str
    balancer: str  # the load balancer's ARN
    forward: Forward


def read_listener(aws: Aws, arn: str, fleet_group: str, canary_group: str) -> Listener:
    """The listener, its default action parsed; refused unless it forwards to the fleet."""
    with aws_errors("reading the canary listener"):
        found = aws.client("elbv2").describe_listeners(ListenerArns=[arn])["Listeners"]
    if not found:
        raise ConfigError(
            f"listener {arn} does not exist", hint="check [provider.aws] listener_arn"
        )
    raw = found[0]
    forward = parse_forward(raw.get("DefaultActions", []), arn)
    if fleet_group not in forward.weights or set(forward.weights) - {fleet_group, canary_group}:
        raise ConfigError(
            f"listener {arn} does not forward to target_group_arn (it forwards to "
            f"{', '.join(sorted(forward.weights))})",
            hint="[provider.aws] listener_arn must be the listener serving target_group_arn",
        )
    return Listener(arn, str(raw["LoadBalancerArn"]), forward)


def parse_forward(actions: list[Any], arn: str) -> Forward:
    """One forward action, plain or weighted; anything else is not kiln's to rewrite."""
    if len(actions) != 1 or actions[0].get("Type") != "forward":
        kinds = ", ".join(str(a.get("Type")) for a in actions) or "none"
        raise ConfigError(
            f"listener {arn}'s default action is not a single forward ({kinds})",
            hint="kiln weights only a listener whose default action forwards to target groups; "
            "put authentication or redirects in listener rules",
        )
    action = actions[0]
    config = action.get("ForwardConfig") or {}
    groups = config.get("TargetGroups") or []
    if groups:
        weights = {str(g["TargetGroupArn"]): int(g.get("Weight", 1)) for g in groups}
    else:
        weights = {str(action["TargetGroupArn"]): 1}
    sticky = config.get("TargetGroupStickinessConfig") or {}
    if not sticky.get("Enabled"):
        return Forward(weights)
    stickiness: dict[str, Any] = {"Enabled": True}
    if "DurationSeconds" in sticky:
        stickiness["DurationSeconds"] = int(sticky["DurationSeconds"])
    return Forward(weights, stickiness)


def weights_for(fleet_group: str, canary_group: str, percent: int) -> dict[str, int]:
    """``percent`` of requests to the canaries' group, the rest to the fleet's."""
    if percent <= 0:
        return {fleet_group: 1}
    return {fleet_group: 100 - percent, canary_group: percent}


def set_split(
    aws: Aws,
    listener: Listener,
    weights: dict[str, int],
    stickiness: dict[str, Any] | None = None,
) -> bool:
    """Rewrite the listener's default action to ``weights``; False when it had them.

    ``stickiness`` (kiln.aws.sticky) replaces the group-level stickiness the
    listener had; without it, that is kept as it was.
    """
    wanted = Forward(weights, stickiness or listener.forward.stickiness)
    if _normal(wanted.weights) == _normal(listener.forward.weights):
        return False
    with aws_errors("weighting the listener between the fleet and the canaries"):
        aws.client("elbv2").modify_listener(
            ListenerArn=listener.arn, DefaultActions=[wanted.to_action()]
        )
    return True


def _normal(weights: dict[str, int]) -> dict[str, float]:
    live = {tg: w for tg, w in weights.items() if w > 0}
    total = sum(live.values()) or 1
    return {tg: round(w / total, 4) for tg, w in live.items()}


def dimension(arn: str, kind: str) -> str:
    """CloudWatch's name for an ALB resource: the ARN from ``targetgroup/`` or ``app/``."""
    marker = "targetgroup/" if kind == "targetgroup" else "loadbalancer/"
    at = arn.find(marker)
    if at < 0:
        raise ConfigError(f"{arn} is not an ALB {kind} ARN")
    return arn[at:] if kind == "targetgroup" else arn[at + len(marker) :]


def read_sides(
    aws: Aws, balancer: str, groups: dict[str, str], since: float, until: float
) -> dict[str, InstanceStats]:
    """Per named target group: requests, target 5xx and p99 response time in whole minutes.

    The window starts at the minute ``since`` falls in and ends at ``until``
    (CloudWatch's datapoints are per minute: a step shorter than that shares
    its first minute with what came before).
    """
    start = datetime.datetime.fromtimestamp(math.floor(since / PERIOD) * PERIOD, datetime.UTC)
    end = datetime.datetime.fromtimestamp(max(until, since + 1), datetime.UTC)
    queries = []
    lb = dimension(balancer, "loadbalancer")
    for side, tg in groups.items():
        dims = [
            {"Name": "TargetGroup", "Value": dimension(tg, "targetgroup")},
            {"Name": "LoadBalancer", "Value": lb},
        ]
        for metric, stat, tag in (
            ("RequestCount", "Sum", "req"),
            ("HTTPCode_Target_5XX_Count", "Sum", "err"),
            ("TargetResponseTime", "p99", "p99"),
        ):
            found = {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dims}
            queries.append(
                {
                    "Id": f"{tag}_{side}",
                    "MetricStat": {"Metric": found, "Period": PERIOD, "Stat": stat},
                }
            )
    values: dict[str, list[float]] = {}
    with aws_errors("reading the load balancer's metrics from CloudWatch"):
        paginator = aws.client("cloudwatch").get_paginator("get_metric_data")
        for page in paginator.paginate(MetricDataQueries=queries, StartTime=start, EndTime=end):
            for result in page["MetricDataResults"]:
                values.setdefault(str(result["Id"]), []).extend(
                    float(v) for v in result.get("Values", []) if v is not None
                )
    return {
        side: InstanceStats(
            requests=round(sum(values.get(f"req_{side}", []))),
            errors=round(sum(values.get(f"err_{side}", []))),
            p99_seconds=max(values[f"p99_{side}"]) if values.get(f"p99_{side}") else None,
        )
        for side in groups
    }


def listener_balancer(aws: Aws, arn: str) -> str:
    """The ARN of the load balancer a listener belongs to."""
    with aws_errors("reading the listener"):
        found = aws.client("elbv2").describe_listeners(ListenerArns=[arn])["Listeners"]
    if not found:
        raise ConfigError(
            f"listener {arn} does not exist", hint="check [provider.aws] listener_arn"
        )
    return str(found[0]["LoadBalancerArn"])


def read_traffic(
    aws: Aws, balancer: str, groups: list[str], since: float, until: float
) -> list[list[float]]:
    """Per minute, oldest first: ``[end, 60, requests, target 5xx]`` summed over ``groups``.

    What ``kiln ui`` draws on AWS; a minute with no datapoint is left out, as CloudWatch
    leaves it out.
    """
    start = datetime.datetime.fromtimestamp(math.floor(since / PERIOD) * PERIOD, datetime.UTC)
    end = datetime.datetime.fromtimestamp(max(until, since + 1), datetime.UTC)
    lb = dimension(balancer, "loadbalancer")
    queries = []
    for n, tg in enumerate(groups):
        dims = [
            {"Name": "TargetGroup", "Value": dimension(tg, "targetgroup")},
            {"Name": "LoadBalancer", "Value": lb},
        ]
        for metric, tag in (("RequestCount", "req"), ("HTTPCode_Target_5XX_Count", "err")):
            found = {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dims}
            queries.append(
                {
                    "Id": f"{tag}_{n}",
                    "MetricStat": {"Metric": found, "Period": PERIOD, "Stat": "Sum"},
                }
            )
    minutes: dict[float, list[float]] = {}
    with aws_errors("reading the load balancer's metrics from CloudWatch"):
        paginator = aws.client("cloudwatch").get_paginator("get_metric_data")
        for page in paginator.paginate(MetricDataQueries=queries, StartTime=start, EndTime=end):
            for result in page["MetricDataResults"]:
                column = 0 if str(result["Id"]).startswith("req_") else 1
                pairs = zip(result.get("Timestamps", []), result.get("Values", []), strict=True)
                for at, value in pairs:
                    row = minutes.setdefault(at.timestamp() + PERIOD, [0.0, 0.0])
                    row[column] += float(value)
    return [[at, float(PERIOD), round(r), round(e)] for at, (r, e) in sorted(minutes.items())]
