"""Real servers for the AWS tests: a moto server process and an asyncssh server.

The SSH server stands in for the AMI builder: it accepts only the keys a
test authorizes (the bake's own generated key), and runs each command with
/bin/sh on this machine, so the installer really runs into a scratch root.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import requests

COPY_SECONDS = 2.0  # how long an AMI copy stays pending on the test servers (AWS: minutes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server(log: Path, *, free_requests: int | None = None) -> Iterator[str]:
    """``moto_server`` on a free loopback port; IAM enforced after ``free_requests``."""
    port = free_port()
    env = dict(os.environ)
    if free_requests is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(free_requests)
    env.setdefault("KILN_MOTO_COPY_SECONDS", str(COPY_SECONDS))
    # moto plus snapshot tags at CreateImage, which AWS applies and moto 5.2 lacks
    server = [sys.executable, str(Path(__file__).with_name("motopatched.py"))]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*server, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.05)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def reset_moto(url: str) -> None:
    requests.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()


async def _feed(source: Any, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sink.close()


async def _pump(source: asyncio.StreamReader, sink: Any) -> None:
    while chunk := await source.read(65536):
        sink.write(chunk)


@dataclass
class SshServer:
    """An SSH server on 127.0.0.1 in its own thread and event loop."""

    port: int = 0
    authorized: set[str] = field(default_factory=set)  # OpenSSH public key lines
    commands: list[str] = field(default_factory=list)
    break_upload_after: int | None = None  # close the connection mid-upload
    logins: list[str] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: Any = None
    _thread: threading.Thread | None = None

    def authorize(self, key: asyncssh.SSHKey) -> None:
        self.authorized.add(key.export_public_key().decode().split()[1])

    def start(self) -> None:
        ready: Future[int] = Future()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._listen(ready))
            except BaseException as exc:
                ready.set_exception(exc)
                return
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self.port = ready.result(timeout=10)

    async def _listen(self, ready: Future[int]) -> None:
        server_ref = self

        class Server(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return True

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
                blob = key.export_public_key().decode().split()[1]
                ok = blob in server_ref.authorized
                if ok:
                    server_ref.logins.append(username)
                return ok

        self._server = await asyncssh.create_server(
            Server,
            "127.0.0.1",
            0,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            process_factory=self._handle,
            encoding=None,
        )
        ready.set_result(self._server.sockets[0].getsockname()[1])

    async def _handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or ""
        self.commands.append(command)
        if self.break_upload_after is not None and "cat >" in command:
            received = 0
            while received < self.break_upload_after:
                chunk = await process.stdin.read(65536)
                if not chunk:
                    break
                received += len(chunk)
            process.channel.get_connection().abort()
            return
        proc = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdin and proc.stdout and proc.stderr
        feeding = asyncio.ensure_future(_feed(process.stdin, proc.stdin))
        await asyncio.gather(_pump(proc.stdout, process.stdout), _pump(proc.stderr, process.stderr))
        status = await proc.wait()
        feeding.cancel()
        process.exit(status)

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
