"""The boot test: an AMI may deploy once one instance booted from it passed its health check.

After a bake creates an AMI, one instance is launched from it with the
fleet's own launch data (instance type, security groups, instance profile,
IMDSv2, subnet) and no SSH key: what must work is what works at boot. kiln
probes it like a load balancer would (``[health]`` path, interval, timeout,
thresholds, grace). Passed: the AMI is tagged ``kiln:verified``, which
``kiln deploy --provider aws`` asks for. Failed: the bake fails with the
instance's console output, which on this instance alone also carries the
app's own output (``boot_test_user_data``): a fleet's app logs to the
journal, which EC2 cannot show, and its error was nowhere in the console.
Either way the instance is terminated; it carries the bake's
``kiln:build-id`` and ``kiln:expires`` tags, so ``kiln aws reap`` removes it
if kiln is killed first.

The probe needs a route to the instance (a runner inside the VPC, or a
public address the security groups admit). ``checker`` replaces it: tests
stand in for an app that moto's instances cannot run.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from kiln.aws import builder as b
from kiln.aws import targets as t
from kiln.aws.policy import VERIFIED_TAG
from kiln.aws.session import Aws, aws_errors
from kiln.causes import condensed
from kiln.config import AwsSettings, HealthSettings
from kiln.errors import AwsError

CONSOLE_LINES = 40
# the instance as EC2 describes it -> its check passed, failed, or it cannot be reached
Checker = Callable[[dict[str, Any]], bool | None]
Note = Callable[[str], None]


class BootTestFailed(AwsError):
    """The AMI's test instance never passed its health check."""

    def __init__(self, message: str, *, console: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.console = console


@dataclass(frozen=True)
class BootTestResult:
    instance_id: str
    seconds: float  # from launch to the last passing check
    checks: int


def direct_checker(port: int, health: HealthSettings, *, public: bool = False) -> Checker:
    """kiln's own ALB-like probe of the instance's private (or public) address."""

    def check(instance: dict[str, Any]) -> bool | None:
        address = instance.get("PublicIpAddress" if public else "PrivateIpAddress")
        if not address:
            return None
        return t.probe(f"{address}:{port}", health.path, health.timeout)

    return check


@contextmanager
def elb_checker(aws: Aws, target_group: str, port: int) -> Iterator[Checker]:
    """ELB's view: the instance is registered in ``target_group`` on first use, removed after.

    Works from anywhere (a runner outside the VPC): ELB probes from inside.
    """
    registered: list[str] = []

    def check(instance: dict[str, Any]) -> bool | None:
        instance_id = str(instance["InstanceId"])
        if not registered:
            t.register(aws, target_group, [instance_id], port, True)
            registered.append(instance_id)
            return None
        with aws_errors("reading the boot test's target health"):
            found = aws.client("elbv2").describe_target_health(
                TargetGroupArn=target_group, Targets=[{"Id": instance_id, "Port": port}]
            )["TargetHealthDescriptions"]
        state = found[0]["TargetHealth"]["State"] if found else "unused"
        return True if state == "healthy" else False if state == "unhealthy" else None

    try:
        yield check
    finally:
        if registered:
            b.cleanup(
                f"{registered[0]} from the boot test's target group",
                lambda _msg: None,
                lambda: t.register(aws, target_group, registered, port, False),
            )


def is_verified(tags: dict[str, str]) -> bool:
    return bool(tags.get(VERIFIED_TAG))


def boot_test(
    aws: Aws,
    ami: str,
    settings: AwsSettings,
    health: HealthSettings,
    build: b.BuildTags,
    *,
    note: Note,
    checker: Checker | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> BootTestResult:
    """Launch one instance from ``ami`` as the fleet would, wait for its health check."""
    with ExitStack() as stack:
        instance_id = stack.enter_context(_test_instance(aws, ami, settings, build, note))
        if checker is not None:
            check = checker
        elif settings.boot_test_target_group_arn:
            group = settings.boot_test_target_group_arn
            check = stack.enter_context(elb_checker(aws, group, settings.port))
        else:
            check = direct_checker(settings.port, health)
        started = clock()
        b.wait_instance(aws, instance_id, "running", timeout=600, note=note)
        deadline = started + settings.boot_test_timeout
        passes = fails = checks = 0
        reached = False
        while True:
            described = _describe(aws, instance_id)
            state = described["State"]["Name"]
            if state != "running":
                _fail(aws, instance_id, f"stopped being running ({state})", settings)
            ok = check(described)
            checks += 1
            reached = reached or ok is not None
            past_grace = clock() - started > health.grace
            if ok:
                passes, fails = passes + 1, 0
            elif ok is False and past_grace:
                passes, fails = 0, fails + 1
            if passes >= health.healthy_threshold:
                seconds = clock() - started
                note(f"{instance_id} passed its health check after {seconds:.0f}s")
                _tag_verified(aws, ami)
                return BootTestResult(instance_id, seconds, checks)
            if fails >= health.unhealthy_threshold:
                _fail(aws, instance_id, f"failed {fails} health checks in a row", settings)
            if clock() > deadline:
                limit = f"{settings.boot_test_timeout:g}s"
                why = (
                    f"passed no health check within {limit}"
                    if reached
                    else f"could not be reached from here within {limit}"
                    if checker is not None or not settings.boot_test_target_group_arn
                    else f"got no health verdict from its target group within {limit}"
                )
                _fail(aws, instance_id, why, settings, reached=reached)
            sleep(health.interval)


def boot_test_user_data(app: str) -> str:
    """cloud-config for the test instance: the app's unit copies its output to the serial
    console, which EC2 shows (``get_console_output``) and the bake prints when the test
    fails. A drop-in under /run, for this boot only; ``bootcmd`` runs before the unit
    starts (it waits for ``network-online.target``), and the reload makes systemd read it.
    """
    dropin = f"/run/systemd/system/kiln-{app}.service.d"
    conf = "[Service]\\nStandardOutput=journal+console\\nStandardError=journal+console\\n"
    script = (
        f"mkdir -p {dropin} && printf '{conf}' > {dropin}/kiln-boot-test.conf"
        " && systemctl daemon-reload"
    )
    return "#cloud-config\nbootcmd:\n  - " + json.dumps(["sh", "-c", script]) + "\n"


@contextmanager
def _test_instance(
    aws: Aws, ami: str, settings: AwsSettings, build: b.BuildTags, note: Note
) -> Iterator[str]:
    name = f"kiln-boot-test-{build.app}-{build.build_id}"
    with b.fleet_like_instance(
        aws, ami, settings, build, name=name, note=note, user_data=boot_test_user_data(build.app)
    ) as instance_id:
        yield instance_id


def _describe(aws: Aws, instance_id: str) -> dict[str, Any]:
    with aws_errors(f"describing {instance_id}"):
        found = aws.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return dict(found[0]["Instances"][0])


def _tag_verified(aws: Aws, ami: str) -> None:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with aws_errors(f"tagging {ami} as verified"):
        aws.ec2.create_tags(Resources=[ami], Tags=[{"Key": VERIFIED_TAG, "Value": when}])


def _fail(
    aws: Aws, instance_id: str, why: str, settings: AwsSettings, *, reached: bool = True
) -> None:
    console = console_output(aws, instance_id)
    hint = (
        "the instance's console output is above (the app's own output among it); "
        "fix the app or its unit and bake again"
        if reached
        else "kiln probes the instance's private address: run the bake inside the VPC, "
        "or set [provider.aws] boot_test = false and test the AMI another way"
    )
    raise BootTestFailed(
        f"boot test: {instance_id} {why} (port {settings.port})", console=console, hint=hint
    )


def console_output(aws: Aws, instance_id: str, lines: int = CONSOLE_LINES) -> str:
    """The tail of the instance's serial console (EC2 keeps the latest 64 KB)."""
    try:
        with aws_errors(f"reading the console of {instance_id}"):
            found = aws.ec2.get_console_output(InstanceId=instance_id, Latest=True)
    except AwsError as exc:
        return f"(no console output: {exc})"
    raw = str(found.get("Output") or "")
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        text = raw
    return condensed(text, lines) or "(the console is empty)"
