"""SSH to a builder: wait until it answers, upload files, run the installer.

The target is a plain value, so tests point the very same code at an SSH
server on 127.0.0.1 while the "builder" EC2 instance lives in moto.

Host keys are not checked: the builder is a fresh instance we launched
seconds ago, reachable only from the caller's address through a security
group we created, and destroyed right after (what Packer does as well).
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from kiln.errors import AwsError

CHUNK = 256 * 1024


@dataclass(frozen=True)
class SshTarget:
    """Where and how to reach a builder, and where its root filesystem is."""

    host: str
    port: int
    username: str
    key: asyncssh.SSHKey = field(repr=False)
    sudo: bool = True
    root: str = "/"  # install prefix: "/" on a real builder, a scratch dir in tests

    @property
    def where(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Upload:
    """A local file and where it goes on the builder."""

    source: Path
    dest: str


async def _connect(target: SshTarget, timeout: float) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        target.host,
        port=target.port,
        username=target.username,
        client_keys=[target.key],
        known_hosts=None,
        agent_path=None,
        config=[],  # the user's ~/.ssh/config must not reroute a bake
        connect_timeout=timeout,
        login_timeout=timeout,
        keepalive_interval=15,
    )


async def _wait(
    target: SshTarget, timeout: float, note: Callable[[str], None]
) -> asyncssh.SSHClientConnection:
    deadline = time.monotonic() + timeout
    delay = 0.5
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AwsError(
                f"the builder did not accept SSH at {target.where} within {timeout:g}s "
                f"(last error: {last})",
                hint="check [provider.aws] ssh_cidr, the subnet's public addressing "
                "and ssh_user; raise ssh_timeout for slow base images",
            )
        try:
            return await _connect(target, min(10.0, max(remaining, 0.1)))
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            last = str(exc) or type(exc).__name__
        note(f"waiting for SSH at {target.where}: {last}")
        await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
        delay = min(delay * 2, 5.0)


async def _upload(conn: asyncssh.SSHClientConnection, item: Upload) -> None:
    parent = shlex.quote(posixpath.dirname(item.dest))
    command = f"umask 077 && mkdir -p {parent} && cat > {shlex.quote(item.dest)}"
    async with conn.create_process(command, encoding=None) as proc:
        with item.source.open("rb") as f:
            while chunk := f.read(CHUNK):
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        proc.stdin.write_eof()
        result = await proc.wait()
    if result.exit_status is None:
        raise AwsError(
            f"upload of {item.source.name} broke: the builder closed the session",
            hint="the bake was cleaned up; run it again",
        )
    if result.exit_status != 0:
        raise AwsError(f"upload of {item.source.name} failed: {_stderr(result)}")


async def _provision(
    target: SshTarget,
    uploads: list[Upload],
    command: str,
    timeout: float,
    note: Callable[[str], None],
) -> str:
    conn = await _wait(target, timeout, note)
    async with conn:
        note(f"SSH up at {target.where}")
        for item in uploads:
            note(f"uploading {item.source.name} ({item.source.stat().st_size} bytes)")
            await _upload(conn, item)
        note("installing")
        result = await conn.run(command, check=False)
    if result.exit_status != 0:
        raise AwsError(
            f"installing the image on the builder failed (exit {result.exit_status}): "
            f"{_stderr(result)}"
        )
    return str(result.stdout or "")


def provision(
    target: SshTarget,
    uploads: list[Upload],
    command: str,
    *,
    timeout: float,
    note: Callable[[str], None],
) -> str:
    """Wait for SSH, upload the files, run ``command``; its stdout on success."""
    try:
        return asyncio.run(_provision(target, uploads, command, timeout, note))
    except (OSError, asyncssh.Error) as exc:
        raise AwsError(
            f"SSH to the builder at {target.where} broke: {exc or type(exc).__name__}",
            hint="the bake was cleaned up; run it again",
        ) from None


def _stderr(result: asyncssh.SSHCompletedProcess) -> str:
    text = result.stderr if isinstance(result.stderr, str) else (result.stderr or b"").decode()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"
