"""SSH to a builder (a bake's Transport) or a one-off instance (a command on this terminal).

The target is a plain value, so tests point the very same code at an SSH
server on 127.0.0.1 while the "builder" EC2 instance lives in moto.

Host keys are not checked: the builder is a fresh instance we launched
seconds ago, reachable only from the caller's address through a security
group we created, and destroyed right after (what Packer does as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

import asyncssh

from kiln.aws.transport import Note, Ran, Upload, parent
from kiln.errors import AwsError

CHUNK = 256 * 1024
Streams = tuple[BinaryIO, BinaryIO, BinaryIO]  # stdin, stdout, stderr
T = TypeVar("T")


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
                f"the instance did not accept SSH at {target.where} within {timeout:g}s "
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


class SshTransport:
    """:class:`~kiln.aws.transport.Transport` over one SSH connection (asyncssh, its own loop)."""

    name = "SSH"

    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.where, self.root, self.sudo = target.where, target.root, target.sudo
        # asyncio.Runner, as asyncio.run: Ctrl-C cancels the running step and then raises,
        # and close() cancels what is left and joins the loop's executor threads
        self._runner = asyncio.Runner()
        self._conn: asyncssh.SSHClientConnection | None = None

    def open(self, timeout: float, note: Note) -> None:
        self._conn = self._do(_wait(self.target, timeout, note))

    def put(self, item: Upload) -> None:
        self._do(self._put(item))

    def run(self, command: str) -> Ran:
        result = self._do(self._connection().run(command, check=False))
        if result.exit_status is None:
            raise AwsError(
                f"SSH to the builder at {self.where} broke: the session ended mid-command",
                hint="the bake was cleaned up; run it again",
            )
        return Ran(result.exit_status, _text(result.stdout), _text(result.stderr))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(Exception):
                self._runner.run(self._conn.wait_closed())
        self._runner.close()

    def _connection(self) -> asyncssh.SSHClientConnection:
        assert self._conn is not None, "open() first"
        return self._conn

    def _do(self, work: Coroutine[Any, Any, T]) -> T:
        try:
            return self._runner.run(work)
        except (OSError, asyncssh.Error) as exc:
            raise AwsError(
                f"SSH to the builder at {self.where} broke: {exc or type(exc).__name__}",
                hint="the bake was cleaned up; run it again",
            ) from None

    async def _put(self, item: Upload) -> None:
        command = f"umask 077 && mkdir -p {parent(item.dest)} && cat > {shlex.quote(item.dest)}"
        async with self._connection().create_process(command, encoding=None) as proc:
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
            stderr = Ran(result.exit_status, "", _text(result.stderr)).last_error
            raise AwsError(f"upload of {item.source.name} failed: {stderr}")


async def _attach(
    target: SshTarget,
    command: str,
    streams: Streams,
    timeout: float,
    note: Callable[[str], None],
) -> int:
    conn = await _wait(target, timeout, note)
    async with conn:
        note(f"SSH up at {target.where}")
        stdin, stdout, stderr = streams
        tty = stdin.isatty() and stdout.isatty()
        size = shutil.get_terminal_size()
        with _raw(stdin) if tty else contextlib.nullcontext():
            result = await conn.run(
                command,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                term_type=os.environ.get("TERM", "xterm") if tty else None,
                term_size=(size.columns, size.lines) if tty else None,
                encoding=None,
                check=False,
            )
    if result.exit_status is not None and result.exit_status >= 0:
        return int(result.exit_status)
    if result.exit_signal:  # killed remotely: a shell's 128 + signal number
        number = getattr(signal, f"SIG{result.exit_signal[0]}", None)
        return 128 + int(number) if number is not None else 255
    raise AwsError(
        f"the SSH session at {target.where} ended without an exit status",
        hint="the instance was terminated; run the command again",
    )


@contextlib.contextmanager
def _raw(stream: BinaryIO) -> Iterator[None]:
    """The local terminal in raw mode: keys (Ctrl-C too) go to the remote one."""
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(
    target: SshTarget,
    command: str,
    *,
    timeout: float,
    note: Callable[[str], None],
    streams: Streams | None = None,
) -> int:
    """Wait for SSH, run ``command`` attached to ``streams`` (this terminal); its status.

    With a terminal on both ends the remote command gets a PTY of this size.
    """
    chosen = streams or (sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer)
    try:
        return asyncio.run(_attach(target, command, chosen, timeout, note))
    except (OSError, asyncssh.Error) as exc:
        raise AwsError(
            f"SSH to the instance at {target.where} broke: {exc or type(exc).__name__}",
            hint="the instance was terminated; run the command again",
        ) from None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
