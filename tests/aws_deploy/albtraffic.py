"""The ALB's data plane and its CloudWatch metrics, as a test drives them on moto.

moto stores a listener's weighted forward action but routes nothing and
publishes no ALB metrics. :class:`AlbTraffic` stands in for both: every tick
it reads the listener's default action (with the admin's keys), splits
``per_tick`` requests between its target groups by weight, and puts what each
group would have reported into CloudWatch (``put_metric_data``, timestamped
now, the dimensions ALB uses): ``RequestCount``, ``HTTPCode_Target_5XX_Count``
and one ``TargetResponseTime`` value per request. How each group answers is
the test's to set (``answers``), so the canary gate can be made to pass or trip.
It also records every distinct weight shape the listener took, in order.
"""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass, field
from typing import Any

from aws_deploy.awsworld import World


@dataclass
class Answers:
    """How one target group's targets answer: share of 5xx, and response time."""

    error_rate: float = 0.0
    seconds: float = 0.02


def weights(actions: list[Any]) -> dict[str, int]:
    """target group -> share in percent, read the way ALB reads a forward action."""
    (action,) = actions
    assert action["Type"] == "forward", action
    groups = (action.get("ForwardConfig") or {}).get("TargetGroups") or []
    raw = {g["TargetGroupArn"]: int(g.get("Weight", 1)) for g in groups}
    if not raw:
        raw = {action["TargetGroupArn"]: 1}
    total = sum(raw.values())
    return {tg: round(100 * w / total) for tg, w in raw.items() if w}


@dataclass
class AlbTraffic:
    world: World
    answers: dict[str, Answers] = field(default_factory=dict)  # target group -> answers
    per_tick: int = 100
    tick: float = 0.2
    shapes: list[dict[str, int]] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)  # the listener's action at each shape
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> AlbTraffic:
        elb = self.world.admin.session.client(
            "elbv2", region_name=self.world.admin.region, endpoint_url=self.world.admin.endpoint_url
        )
        cloudwatch = self.world.admin.session.client(
            "cloudwatch",
            region_name=self.world.admin.region,
            endpoint_url=self.world.admin.endpoint_url,
        )

        def run() -> None:
            while not self._stop.is_set():
                found = elb.describe_listeners(ListenerArns=[self.world.listener])
                actions = found["Listeners"][0]["DefaultActions"]
                shape = weights(actions)
                if not self.shapes or self.shapes[-1] != shape:
                    self.shapes.append(shape)
                    self.actions.append(actions)
                self._serve(cloudwatch, shape)
                self._stop.wait(self.tick)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _serve(self, cloudwatch: Any, shape: dict[str, int]) -> None:
        now = datetime.datetime.now(datetime.UTC)
        balancer = self.world.balancer.split("loadbalancer/", 1)[1]
        data: list[Any] = []
        for group, percent in shape.items():
            requests = round(self.per_tick * percent / 100)
            if not requests:
                continue
            answers = self.answers.get(group, Answers())
            dims = [
                {"Name": "TargetGroup", "Value": group.split(":")[-1]},
                {"Name": "LoadBalancer", "Value": balancer},
            ]
            errors = round(requests * answers.error_rate)
            data += [
                {"MetricName": "RequestCount", "Dimensions": dims, "Value": requests},
                {"MetricName": "HTTPCode_Target_5XX_Count", "Dimensions": dims, "Value": errors},
                {
                    "MetricName": "TargetResponseTime",
                    "Dimensions": dims,
                    "Values": [answers.seconds],
                    "Counts": [requests],
                },
            ]
        for item in data:
            item["Timestamp"] = now
        if data:
            cloudwatch.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=data)
