"""What a new server group gets of the old one's alarms and schedule: the rewriting alone.

The calls themselves run against moto in tests/aws_deploy/test_aws_carry.py;
here, what moto would accept without showing it: metric-math alarms, other
dimensions and actions, names at IAM's length limit, schedules at their edges.
"""

from __future__ import annotations

import datetime

from kiln.aws.alarms import alarm_name, moved
from kiln.aws.carry import _still_ahead

OLD, NEW = "kiln-shop-v007", "kiln-shop-v008"
_POLICY = "arn:aws:autoscaling:eu-west-1:1:scalingPolicy:{}:autoScalingGroupName/{}:policyName/up"
OLD_ARN, NEW_ARN = _POLICY.format("x", OLD), _POLICY.format("y", NEW)


def test_a_metric_math_alarm_is_re_pointed_and_the_rest_kept() -> None:
    pager = "arn:aws:sns:eu-west-1:1:pager"
    alarm = {
        "AlarmName": f"{OLD}-busy",  # kiln's copy from before: renamed, not prefixed twice
        "AlarmActions": [OLD_ARN, pager],
        "OKActions": [pager],
        "InsufficientDataActions": [OLD_ARN],
        "ActionsEnabled": False,
        "EvaluationPeriods": 2,
        "Threshold": 0.0,
        "ComparisonOperator": "GreaterThanThreshold",
        "ThresholdMetricId": "ratio",
        "Metrics": [
            {
                "Id": "cpu",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/EC2",
                        "MetricName": "CPUUtilization",
                        "Dimensions": [
                            {"Name": "AutoScalingGroupName", "Value": OLD},
                            {"Name": "Other", "Value": OLD},  # not the group's dimension
                        ],
                    },
                    "Period": 60,
                    "Stat": "Average",
                },
                "ReturnData": False,
            },
            {"Id": "ratio", "Expression": "cpu / 100", "ReturnData": True},
        ],
    }
    new = moved(alarm, OLD, NEW, {OLD_ARN: NEW_ARN})
    assert new["AlarmName"] == f"{NEW}-busy"
    assert new["AlarmActions"] == [NEW_ARN, pager] and new["OKActions"] == [pager]
    assert new["InsufficientDataActions"] == [NEW_ARN]
    dims = new["Metrics"][0]["MetricStat"]["Metric"]["Dimensions"]
    assert dims == [
        {"Name": "AutoScalingGroupName", "Value": NEW},
        {"Name": "Other", "Value": OLD},
    ]
    assert new["ActionsEnabled"] is False and new["Threshold"] == 0.0
    assert new["Metrics"][1] == alarm["Metrics"][1]
    # the original is not changed in place
    assert alarm["AlarmActions"][0] == OLD_ARN
    assert alarm["Metrics"][0]["MetricStat"]["Metric"]["Dimensions"][0]["Value"] == OLD


def test_a_team_alarms_name_gets_the_group_in_front_within_cloudwatchs_limit() -> None:
    assert alarm_name("cpu-high", OLD, NEW) == f"{NEW}-cpu-high"
    assert alarm_name(f"{OLD}-cpu-high", OLD, NEW) == f"{NEW}-cpu-high"
    assert len(alarm_name("a" * 255, OLD, NEW)) == 255


def test_scheduled_actions_at_their_edges() -> None:
    now = datetime.datetime(2026, 11, 29, 12, tzinfo=datetime.UTC)
    hour = datetime.timedelta(hours=1)
    assert _still_ahead({"ScheduledActionName": "ran", "StartTime": now - hour}, now) is None
    assert _still_ahead({"ScheduledActionName": "now", "StartTime": now}, now) is None
    ahead = {"ScheduledActionName": "soon", "StartTime": now + hour, "MaxSize": 3}
    assert _still_ahead(ahead, now) == ahead
    recurring = {"ScheduledActionName": "r", "Recurrence": "0 8 * * *", "StartTime": now - hour}
    assert _still_ahead(recurring, now) == {"ScheduledActionName": "r", "Recurrence": "0 8 * * *"}
    over = {**recurring, "EndTime": now - hour}
    assert _still_ahead(over, now) is None
    until = {**recurring, "EndTime": now + hour}
    assert _still_ahead(until, now) == {k: v for k, v in until.items() if k != "StartTime"}
