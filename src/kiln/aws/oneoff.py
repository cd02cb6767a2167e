"""One-off instances of an AMI: the release runner, and ``kiln run``.

A one-off instance is launched from the image's AMI with the fleet's launch
data (instance type, security groups, instance profile, IMDSv2, subnet),
never joins a server group or the target group, and carries the temporary
resources' tags (``kiln:build-id``, ``kiln:expires``) so ``kiln aws reap``
removes it if kiln is killed before its ``finally`` runs. Its user data
holds the app's own unit back (:data:`kiln.aws.install.ONEOFF_MARK`) and
says what to run; the installed ``oneoff`` script
(:mod:`kiln.aws.oneoff_runtime`) does it.

The release runner reports through an SSM parameter under
:data:`kiln.aws.policy.ONEOFF_RESULTS` (the instance role may write it, the
deploy role read and delete it): exit status, duration and the command's
last lines. The deployer polls for it, and the runner is terminated in every
case. ``kiln run`` adds the bake's temporary key pair and SSH-only security
group and runs the command over SSH (:func:`kiln.aws.ssh.attach`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import posixpath
import secrets
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack

from kiln.aws import builder as b
from kiln.aws.boottest import console_output
from kiln.aws.install import ONEOFF_MARK
from kiln.aws.policy import FLEET_TAG, ONEOFF_RESULTS
from kiln.aws.session import Aws, aws_errors
from kiln.aws.ssh import SshTarget, Streams, attach
from kiln.config import AwsSettings
from kiln.errors import AwsError
from kiln.providers.protocol import CommandResult

RUNTIME = "/usr/local/lib/kiln/oneoff"
BOOT_ALLOWANCE = 600.0  # a runner's boot and secret fetch, on top of the command's own limit
POLL = 3.0
ENDED = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
Note = Callable[[str], None]


def result_parameter(app: str, build_id: str) -> str:
    return f"{ONEOFF_RESULTS}{app}/{build_id}"


def new_build(app: str, ttl: float, prefix: str) -> b.BuildTags:
    """Tags of one one-off instance: expired (so reaped) ``ttl`` seconds from now."""
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl)
    return b.BuildTags(
        build_id=f"{prefix}-{secrets.token_hex(6)}",
        app=app,
        expires=expires.replace(microsecond=0),
    )


def user_data(app: str, runcmd: Sequence[Sequence[str]] = ()) -> str:
    """cloud-config: hold the app's unit back before it could start, then ``runcmd``.

    ``bootcmd`` runs in cloud-init's init stage, before ``network-online.target``,
    which the app's unit starts after; its condition is checked only then.
    """
    mark = shlex.quote(ONEOFF_MARK)
    lines = [
        "#cloud-config",
        f"# kiln: a one-off instance of {app}; the app's own unit does not start here",
        "bootcmd:",
        f"  - {json.dumps(['sh', '-c', f'mkdir -p /run/kiln && : > {mark}'])}",
    ]
    if runcmd:
        lines.append("runcmd:")
        lines += [f"  - {json.dumps(list(argv))}" for argv in runcmd]
        lines += [
            "power_state:",
            "  mode: poweroff",  # instance-initiated shutdown: terminate
            '  message: "kiln one-off done"',
            "  timeout: 30",
            "  condition: true",
        ]
    return "\n".join(lines) + "\n"


def release_user_data(app: str, parameter: str, timeout: float) -> str:
    command = ["/usr/bin/python3", RUNTIME, "release", app, parameter, f"{timeout:g}"]
    return user_data(app, [command])


def run_release(
    aws: Aws,
    settings: AwsSettings,
    app: str,
    fleet: str,
    ami: str,
    command: str,
    *,
    timeout: float,
    note: Note,
    on_wait: Callable[[], None] = lambda: None,
    poll: float = POLL,
    boot_allowance: float = BOOT_ALLOWANCE,
) -> CommandResult:
    """Run the image's release command once on a runner launched from ``ami``.

    ``command`` (the AMI's ``kiln:release`` tag) names it in messages; the
    runner reports the full one. ``timeout`` bounds the command itself; the
    runner has ``boot_allowance`` more to boot and report.
    """
    build = new_build(app, timeout + boot_allowance + 300, "kr")
    parameter = result_parameter(app, build.build_id)
    started = time.monotonic()
    with (
        b.terminate_as_interrupt(),
        b.fleet_like_instance(
            aws,
            ami,
            settings,
            build,
            name=f"kiln-release-{app}-{build.build_id}",
            note=note,
            user_data=release_user_data(app, parameter, timeout),
            extra_tags={FLEET_TAG: fleet},  # the deploy role may read its console and end it
        ) as instance_id,
    ):
        try:
            return _await_result(
                aws, instance_id, parameter, command, started + timeout + boot_allowance,
                note=note, on_wait=on_wait, poll=poll, started=started,
            )  # fmt: skip
        finally:
            _delete_parameter(aws, parameter)


def _await_result(
    aws: Aws,
    instance_id: str,
    parameter: str,
    command: str,
    deadline: float,
    *,
    note: Note,
    on_wait: Callable[[], None],
    poll: float,
    started: float,
) -> CommandResult:
    last_state = ""
    while True:
        found = _read_parameter(aws, parameter)
        if found is not None:
            return _parse_result(found, command, instance_id)
        with aws_errors(f"describing the release runner {instance_id}"):
            state = aws.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
                "Instances"
            ][0]["State"]["Name"]
        if state != last_state:
            note(f"release runner {instance_id}: {state}")
            last_state = state
        if state in ENDED:
            found = _read_parameter(aws, parameter)  # it may have reported as it went
            if found is not None:
                return _parse_result(found, command, instance_id)
            why = f"the release runner {instance_id} ended ({state}) without reporting a result"
            return _no_result(aws, instance_id, command, why, started)
        if time.monotonic() > deadline:
            why = f"the release runner {instance_id} reported no result in time"
            return _no_result(aws, instance_id, command, why, started)
        on_wait()
        time.sleep(poll)


def _read_parameter(aws: Aws, parameter: str) -> str | None:
    ssm = aws.client("ssm")
    with aws_errors("reading the release runner's result"):
        try:
            return str(ssm.get_parameter(Name=parameter)["Parameter"]["Value"])
        except ssm.exceptions.ParameterNotFound:
            return None


def _delete_parameter(aws: Aws, parameter: str) -> None:
    ssm = aws.client("ssm")
    with (
        b.interrupts_deferred(),
        contextlib.suppress(AwsError),  # a leftover result is harmless
        aws_errors("deleting the release runner's result"),
    ):
        try:
            ssm.delete_parameter(Name=parameter)
        except ssm.exceptions.ParameterNotFound:
            return


def _parse_result(raw: str, command: str, instance_id: str) -> CommandResult:
    """The runner's report, parsed strictly: it crossed a trust boundary (STYLE 14)."""
    try:
        doc = json.loads(raw)
        result = CommandResult(
            command=str(doc["command"]) or command,
            exit_code=int(doc["exit_code"]),
            output=str(doc["output"]),
            seconds=float(doc["seconds"]),
        )
    except (ValueError, KeyError, TypeError):
        raise AwsError(
            f"the release runner {instance_id} reported something that is not a result",
            hint="was the AMI baked by this version of kiln? bake it again",
        ) from None
    return result


def _no_result(aws: Aws, instance_id: str, command: str, why: str, started: float) -> CommandResult:
    console = console_output(aws, instance_id)
    return CommandResult(
        command=command,
        exit_code=-1,
        output=f"kiln: {why}; its console output:\n{console}",
        seconds=round(time.monotonic() - started, 3),
    )


RUN_TTL = 12 * 3600.0  # a 'kiln run' instance left by a killed kiln is reaped after this


def with_env(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """``argv`` run by env(1) with ``env`` set: over the instance's environment, which the
    runtime makes on the instance, where kiln cannot add to it."""
    if not env:
        return list(argv)
    return ["env", *(f"{name}={value}" for name, value in env.items()), *argv]


def oneoff_command(app: str, argv: Sequence[str], target: SshTarget) -> str:
    """The SSH command that runs ``argv`` through the installed runtime (as root, then kiln)."""
    prefix = "sudo -n " if target.sudo else ""
    script = posixpath.join(target.root, RUNTIME.lstrip("/"))
    words = ["/usr/bin/python3", script, "--root", target.root, "exec", app, "--", *argv]
    return prefix + " ".join(shlex.quote(w) for w in words)


def run_oneoff(
    aws: Aws,
    settings: AwsSettings,
    app: str,
    fleet: str,
    ami: str,
    argv: Sequence[str],
    *,
    note: Note,
    ssh_target: Callable[[b.Builder], SshTarget] | None = None,
    streams: Streams | None = None,
) -> int:
    """``argv`` once on a fresh instance of ``ami``, attached to this terminal; its status.

    The bake's temporary key pair and SSH-only security group (open to this
    machine's address) are added to the fleet's launch data; the instance,
    group and key are gone afterwards, whatever happens.
    """
    from kiln.aws.ami import caller_cidr, default_target, require_default_vpc, subnet_vpc

    build = new_build(app, RUN_TTL, "kx")
    cidr = settings.ssh_cidr or caller_cidr(aws)
    subnets = settings.subnet_ids or ([settings.subnet_id] if settings.subnet_id else [])
    vpc_id = subnet_vpc(aws, subnets[0]) if subnets else None
    if vpc_id is None:
        require_default_vpc(aws)
    with b.terminate_as_interrupt(), ExitStack() as stack:
        key_name, key = stack.enter_context(b.key_pair(aws, build, note))
        group_id = stack.enter_context(b.security_group(aws, build, cidr, vpc_id, note))
        instance_id = stack.enter_context(
            b.fleet_like_instance(
                aws,
                ami,
                settings,
                build,
                name=f"kiln-run-{app}-{build.build_id}",
                note=note,
                user_data=user_data(app),
                key_name=key_name,
                extra_groups=[group_id],
                extra_tags={FLEET_TAG: fleet},
            )
        )
        described = b.wait_instance(aws, instance_id, "running", timeout=600, note=note)
        instance = b.Builder(
            instance_id=instance_id,
            public_ip=described.get("PublicIpAddress"),
            private_ip=described.get("PrivateIpAddress"),
            key=key,
        )
        target = (ssh_target or default_target(settings))(instance)
        command = oneoff_command(app, argv, target)
        return attach(target, command, timeout=settings.ssh_timeout, note=note, streams=streams)
