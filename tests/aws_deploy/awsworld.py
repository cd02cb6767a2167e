"""A fleet's surroundings on a moto server: VPC, ALB, target group, AMIs, app processes.

The admin (all actions) builds the world; kiln runs with the deploy user's
own keys under IAM enforcement. Instance addresses resolve to local app
processes by image, so kiln's own probe sees healthy and failing releases
(moto reports every registered target healthy).
"""

from __future__ import annotations

import datetime
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.aws.groups import split_release
from kiln.aws.iam import user_name
from kiln.aws.policy import SCALING_PURPOSES, options, policy_document
from kiln.aws.provider import AwsProvider
from kiln.aws.session import Aws
from kiln.aws.targets import Target
from kiln.config import LoadedConfig, load_config
from kiln.home import Home

HERE = Path(__file__).parent
_names = itertools.count(1)


def image_of(release: str | None) -> str | None:
    """The image of an AWS release (``img-…@ami-…``)."""
    return split_release(release)[0] if release else None


@contextmanager
def app_process(status: int) -> Iterator[str]:
    """A real HTTP server answering ``status``; yields its 127.0.0.1 address."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "healthapp.py"), str(status)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class World:
    admin: Aws
    deploy: Aws
    app: str
    vpc: str
    subnets: list[str]
    target_group: str
    dns: str
    addresses: dict[str, str] = field(default_factory=dict)  # image -> app process
    base_ami: str = ""
    balancer: str = ""
    listener: str = ""  # port 80, forwarding to target_group
    canary_group: str = ""  # a second target group, empty, for canary deployments

    def resolve(self, target: Target) -> str | None:
        return self.addresses.get(target.image)

    def ami(self, image: str, *, verified: bool = True, release: str | None = None) -> str:
        """Bake stand-in: an AMI tagged as kiln's bake tags it (after a passed boot test)."""
        reservation = self.admin.ec2.run_instances(ImageId=self.base_ami, MinCount=1, MaxCount=1)
        source = reservation["Instances"][0]["InstanceId"]
        ami = self.admin.ec2.create_image(InstanceId=source, Name=f"{self.app}-{image}")["ImageId"]
        self.admin.ec2.terminate_instances(InstanceIds=[source])
        self.admin.ec2.create_tags(
            Resources=[ami],
            Tags=[
                {"Key": "kiln:app", "Value": self.app},
                {"Key": "kiln:image", "Value": image},
                {"Key": "kiln:digest", "Value": image * 2},
                {"Key": "kiln:runtime", "Value": "4"},
                *([{"Key": "kiln:verified", "Value": "stand-in"}] if verified else []),
                *([{"Key": "kiln:release", "Value": release}] if release else []),
            ],
        )
        return str(ami)

    def config(
        self,
        root: Path,
        *,
        size: int = 2,
        interval: str = "0.2s",
        timeout: str = "0.5s",
        grace: str = "1s",
        extra_fleet: str = "",
        extra_aws: str = "",
    ) -> LoadedConfig:
        root.mkdir(parents=True, exist_ok=True)
        subnets = ", ".join(f'"{s}"' for s in self.subnets[:2])
        (root / "kiln.toml").write_text(
            f"""
[app]
name = "{self.app}"
run = "python3 app.py"

[health]
path = "/health"
interval = "{interval}"
timeout = "{timeout}"
healthy_threshold = 2
unhealthy_threshold = 2
grace = "{grace}"

[fleet]
size = {size}
settle = "0.3s"
progress_deadline = "60s"
keep_warm = "0s"
{extra_fleet}

[provider.aws]
target_group_arn = "{self.target_group}"
subnet_ids = [{subnets}]
instance_type = "t3.micro"
{extra_aws}
""",
            encoding="utf-8",
        )
        return load_config(root / "kiln.toml")

    def provider(self, home: Home, loaded: LoadedConfig) -> AwsProvider:
        return AwsProvider(home, loaded, aws=self.deploy, resolve=self.resolve)

    # what AWS says, read with the admin's keys ----------------------------------

    def groups(self) -> dict[str, dict[str, Any]]:
        found = self.admin.client("autoscaling").describe_auto_scaling_groups()
        return {
            g["AutoScalingGroupName"]: g
            for g in found["AutoScalingGroups"]
            if g["AutoScalingGroupName"].startswith(f"kiln-{self.app}-v")
        }

    def targets(self, group: str | None = None) -> set[str]:
        found = self.admin.client("elbv2").describe_target_health(
            TargetGroupArn=group or self.target_group
        )
        return {d["Target"]["Id"] for d in found["TargetHealthDescriptions"]}

    def canary_settings(self, traffic: str = "[10, 50]") -> str:
        """[provider.aws] lines for canary deployments (CloudWatch read at once: moto)."""
        return (
            f'canary_target_group_arn = "{self.canary_group}"\n'
            f'listener_arn = "{self.listener}"\n'
            f"canary_traffic = {traffic}\n"
            'metrics_lag = "0s"\n'
        )

    def default_actions(self) -> list[Any]:
        found = self.admin.client("elbv2").describe_listeners(ListenerArns=[self.listener])
        return list(found["Listeners"][0]["DefaultActions"])

    def decorate(self, group: str) -> None:
        """What a team sets up on its serving group by hand (or Terraform): kiln never made it.

        A target-tracking and a step policy (with the alarm that triggers it), a
        terminating lifecycle hook, scheduled actions (a recurring one that started
        yesterday, a one-off next month, a one-off that ran yesterday), a warm pool.
        """
        scaling = self.admin.client("autoscaling")
        scaling.put_scaling_policy(
            AutoScalingGroupName=group,
            PolicyName="cpu55",
            PolicyType="TargetTrackingScaling",
            TargetTrackingConfiguration={
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "ASGAverageCPUUtilization"
                },
                "TargetValue": 55.0,
            },
            EstimatedInstanceWarmup=90,
        )
        step = scaling.put_scaling_policy(
            AutoScalingGroupName=group,
            PolicyName="step-out",
            PolicyType="StepScaling",
            AdjustmentType="ChangeInCapacity",
            StepAdjustments=[{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 2}],
        )["PolicyARN"]
        self.admin.client("cloudwatch").put_metric_alarm(
            AlarmName=f"{self.app}-step-out-high",
            AlarmDescription="scale out at 80% CPU",
            AlarmActions=[step, f"arn:aws:sns:{self.admin.region}:123456789012:pager"],
            MetricName="CPUUtilization",
            Namespace="AWS/EC2",
            Statistic="Average",
            Dimensions=[{"Name": "AutoScalingGroupName", "Value": group}],
            Period=60,
            EvaluationPeriods=3,
            DatapointsToAlarm=2,
            Threshold=80.0,
            ComparisonOperator="GreaterThanThreshold",
            TreatMissingData="notBreaching",
        )
        now = datetime.datetime.now(datetime.UTC)
        day = datetime.timedelta(days=1)
        scaling.put_scheduled_update_group_action(
            AutoScalingGroupName=group,
            ScheduledActionName="nightly-down",
            Recurrence="0 22 * * *",
            StartTime=now - day,
            MinSize=1,
            TimeZone="Europe/Paris",
        )
        scaling.put_scheduled_update_group_action(
            AutoScalingGroupName=group,
            ScheduledActionName="launch-day",
            StartTime=now + 30 * day,
            MaxSize=6,
        )
        scaling.put_scheduled_update_group_action(
            AutoScalingGroupName=group,
            ScheduledActionName="sale-ran",
            StartTime=now - day,
            MaxSize=5,
        )
        scaling.put_lifecycle_hook(
            AutoScalingGroupName=group,
            LifecycleHookName="drain-sessions",
            LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
            HeartbeatTimeout=120,
            DefaultResult="CONTINUE",
        )
        scaling.put_warm_pool(AutoScalingGroupName=group, MinSize=1, PoolState="Stopped")

    @contextmanager
    def hook_roles_passable(self, loaded: LoadedConfig) -> Iterator[None]:
        """The deploy user may pass kiln.toml's hook_roles: the statement kiln renders, as is.

        The session's deploy user holds moto's unscoped rendering, which has no
        iam:PassRole (kiln adds PassRole statements outside the rules); this
        adds the scaling policy's KilnScalingPassHookRoles for the test's length.
        """
        settings = loaded.config.provider.aws
        assert settings is not None and settings.hook_roles
        (statement,) = [
            s
            for s in policy_document(
                region=self.deploy.region,
                account="123456789012",
                purposes=SCALING_PURPOSES,
                **options(settings),
            )["Statement"]
            if s["Sid"] == "KilnScalingPassHookRoles"
        ]
        user = user_name("deploys")  # the deploy user of tests/aws_deploy/conftest.py
        document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
        self.admin.iam.put_user_policy(UserName=user, PolicyName="hooks", PolicyDocument=document)
        try:
            yield
        finally:
            self.admin.iam.delete_user_policy(UserName=user, PolicyName="hooks")

    def live_members(self, group: str) -> set[str]:
        g = self.groups().get(group)
        return {m["InstanceId"] for m in g["Instances"]} if g else set()


def build_world(admin: Aws, deploy: Aws, base_ami: str, *, delay: int = 1) -> World:
    app = f"shop{next(_names)}"
    vpc = admin.ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    subnets = [
        s["SubnetId"]
        for s in admin.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])[
            "Subnets"
        ]
    ]
    elb = admin.client("elbv2")
    balancer = elb.create_load_balancer(Name=f"{app}-alb", Subnets=subnets[:2])["LoadBalancers"][0]
    tg = elb.create_target_group(
        Name=f"{app}-tg",
        Protocol="HTTP",
        Port=3000,
        VpcId=vpc["VpcId"],
        TargetType="instance",
        HealthCheckPath="/health",
    )["TargetGroups"][0]["TargetGroupArn"]
    canary = elb.create_target_group(
        Name=f"{app}-canary",
        Protocol="HTTP",
        Port=3000,
        VpcId=vpc["VpcId"],
        TargetType="instance",
        HealthCheckPath="/health",
    )["TargetGroups"][0]["TargetGroupArn"]
    listener = elb.create_listener(
        LoadBalancerArn=balancer["LoadBalancerArn"],
        Protocol="HTTP",
        Port=80,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}],
    )["Listeners"][0]["ListenerArn"]
    for group in (tg, canary):
        elb.modify_target_group_attributes(
            TargetGroupArn=group,
            Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": str(delay)}],
        )
    return World(
        admin=admin,
        deploy=deploy,
        app=app,
        vpc=vpc["VpcId"],
        subnets=subnets,
        target_group=tg,
        dns=balancer["DNSName"],
        base_ami=base_ami,
        balancer=balancer["LoadBalancerArn"],
        listener=listener,
        canary_group=canary,
    )
