"""Run as a process by test_aws_reap: a bake stuck waiting for SSH, to be killed -9."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from kiln.aws.ami import bake_ami
from kiln.aws.builder import Builder
from kiln.aws.ssh import SshTarget
from kiln.config import load_config
from kiln.home import Home


def main(config: str, home: str, port: int) -> None:
    def unreachable(builder: Builder) -> SshTarget:
        return SshTarget("127.0.0.1", port, "admin", builder.key, sudo=False, root="/nonexistent")

    # a shell may start background jobs with SIGINT ignored; a terminal would not
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("baking", flush=True)
    bake_ami(load_config(Path(config)), Home.resolve(home).ensure(), ssh_target=unreachable)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
