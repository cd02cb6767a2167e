"""Run as a process by test_aws_reap: a bake stuck waiting for SSH, to be killed.

With ``slow``, EC2 behaves as on AWS rather than moto: a terminated instance
stays ``shutting-down`` (30-90 s there) and its security group cannot be
deleted meanwhile (DependencyViolation).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from awskit import fail_call

from kiln.aws.ami import bake_ami, settings_of
from kiln.aws.builder import Builder
from kiln.aws.session import connect
from kiln.aws.ssh import SshTarget
from kiln.config import load_config
from kiln.home import Home


def _slow_termination(parsed: dict[str, Any], **_kwargs: Any) -> None:
    for reservation in parsed.get("Reservations", []):
        for instance in reservation["Instances"]:
            if instance["State"]["Name"] == "terminated":
                instance["State"] = {"Code": 32, "Name": "shutting-down"}


def main(config: str, home: str, port: int, slow: bool) -> None:
    def unreachable(builder: Builder) -> SshTarget:
        return SshTarget("127.0.0.1", port, "admin", builder.key, sudo=False, root="/nonexistent")

    # a shell may start background jobs with SIGINT ignored; a terminal would not
    signal.signal(signal.SIGINT, signal.default_int_handler)
    loaded = load_config(Path(config))
    aws = connect(settings_of(loaded.config))
    if slow:
        aws.ec2.meta.events.register("after-call.ec2.DescribeInstances", _slow_termination)
        fail_call(aws, "DeleteSecurityGroup", "DependencyViolation", "resource has a dependent")
    print("baking", flush=True)
    bake_ami(loaded, Home.resolve(home).ensure(), aws=aws, ssh_target=unreachable)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:] == ["slow"])
