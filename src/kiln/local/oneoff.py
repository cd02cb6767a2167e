"""Commands run once in a fresh, throw-away directory of an image: releases, ``kiln run``.

They get what an instance gets (the image's files, its clean environment,
its secrets, ``KILN_IMAGE``), run as the user of the kiln command that asked,
from this process rather than the agent (so ``kiln run`` can have the
terminal), and their directory is deleted afterwards, whatever happens.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from kiln.errors import CommandNotFound
from kiln.home import Home
from kiln.image.store import Manifest, Store
from kiln.local import procs
from kiln.providers.protocol import CommandResult
from kiln.runenv import check_interpreter, instance_env

OUTPUT_LINES = 40  # kept of a release's output: shown on failure, journaled


@contextmanager
def scratch_instance(
    home: Home, image: str, secrets: Mapping[str, str], purpose: str
) -> Iterator[tuple[Path, Manifest, dict[str, str]]]:
    """A fresh directory of ``image`` and the environment an instance would have."""
    store = Store(home)
    record = store.get(image)
    directory = home.tmp / f"{purpose}-{record.id}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        manifest = store.materialize(record.id, directory)
        env = instance_env(manifest.env) | dict(secrets)
        check_interpreter(manifest.python, env["PATH"])
        env |= {
            "HOST": "127.0.0.1",
            "PORT": str(procs.free_port()),
            "KILN_IMAGE": record.id,
            "KILN_INSTANCE_ID": f"{purpose}-{os.getpid()}",
        }
        yield directory, manifest, env
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_captured(command: str, cwd: Path, env: Mapping[str, str], timeout: float) -> CommandResult:
    """Run ``command`` through /bin/sh, keep its last lines; its whole group dies on timeout."""
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=OUTPUT_LINES)
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    timer = _Deadline(proc.pid, timeout)
    try:
        for raw in proc.stdout:
            tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
        code = proc.wait()
    except BaseException:
        procs.signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        timer.cancel()
        procs.signal_group(proc.pid, signal.SIGKILL)  # nothing it started outlives it
    if timer.fired:
        tail.append(f"(kiln: stopped after {timeout:g}s)")
    return CommandResult(command, code, "\n".join(tail), round(time.monotonic() - started, 3))


def run_attached(argv: list[str], cwd: Path, env: Mapping[str, str]) -> int:
    """Run ``argv`` on this terminal (stdin, stdout, stderr); its exit status."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=dict(env))
    except (FileNotFoundError, PermissionError) as exc:
        raise CommandNotFound(
            f"{argv[0]}: {'not found' if isinstance(exc, FileNotFoundError) else 'not runnable'}"
            f" in the image's directory or on its PATH ({env.get('PATH', '')})",
            hint="a Python tool the app installs also runs as 'python3 -m NAME' "
            "(e.g. kiln run -- python3 -m alembic upgrade head)",
        ) from None
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the terminal sent SIGINT to both: let it finish
        return proc.wait()


class _Deadline:
    """SIGKILL a process group when time is up, from a timer thread."""

    def __init__(self, pid: int, timeout: float) -> None:
        self.fired = False
        self._pid = pid
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        procs.signal_group(self._pid, signal.SIGKILL)

    def cancel(self) -> None:
        self._timer.cancel()
