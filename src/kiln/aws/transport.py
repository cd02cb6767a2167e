"""How a bake reaches its builder, and the bake's steps on it, written once.

A :class:`Transport` opens (waits until the builder answers), puts a file and
runs a command. SSH (:mod:`kiln.aws.ssh`) and Systems Manager Run Command
(:mod:`kiln.aws.ssm`) are the two; they differ only in those three
operations. :func:`provision` is the one copy of what a bake does over
either: open, upload every file and check its sha256 on the builder, run the
installer, say why it failed.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kiln.errors import AwsError

Note = Callable[[str], None]


@dataclass(frozen=True)
class Upload:
    """A local file and where it goes on the builder."""

    source: Path
    dest: str


@dataclass(frozen=True)
class Ran:
    """A command's end on the builder."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def last_error(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else "no error output"


class Transport(Protocol):
    """One way to reach a builder; see the module docstring."""

    name: str  # "SSH", "Systems Manager": said in progress and errors
    where: str  # the builder as this transport addresses it
    root: str  # install prefix: "/" on a real builder, a scratch dir in tests
    sudo: bool  # whether the installer needs sudo (SSH logs in as a user; SSM is root)

    def open(self, timeout: float, note: Note) -> None:
        """Wait until the builder answers, up to ``timeout`` seconds; raise AwsError if not."""
        ...

    def put(self, item: Upload) -> None:
        """Write ``item.source`` to ``item.dest`` (mode 0600, parents made)."""
        ...

    def run(self, command: str) -> Ran:
        """Run a shell command on the builder."""
        ...

    def close(self) -> None: ...


def provision(
    transport: Transport,
    uploads: list[Upload],
    command: str,
    *,
    timeout: float,
    note: Note,
    doing: str = "installing the image",
) -> str:
    """Open, upload (each file checked on the builder), run ``command``; its stdout."""
    try:
        transport.open(timeout, note)
        note(f"{transport.name} up at {transport.where}")
        for item in uploads:
            note(f"uploading {item.source.name} ({item.source.stat().st_size} bytes)")
            transport.put(item)
            _check(transport, item)
        note(doing)
        ran = transport.run(command)
    finally:
        transport.close()
    if ran.exit_status != 0:
        raise AwsError(f"{doing} on the builder failed (exit {ran.exit_status}): {ran.last_error}")
    return ran.stdout


def _check(transport: Transport, item: Upload) -> None:
    """The file on the builder has the local file's sha256: nothing lost or reordered."""
    want = sha256(item.source)
    ran = transport.run(f"sha256sum {shlex.quote(item.dest)}")
    got = ran.stdout.split()[0] if ran.exit_status == 0 and ran.stdout.split() else None
    if got != want:
        seen = f"sha256 {got}" if got else ran.last_error
        raise AwsError(
            f"upload of {item.source.name} arrived damaged on the builder ({seen}, "
            f"expected {want})",
            hint="the bake was cleaned up; run it again",
        )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def parent(dest: str) -> str:
    return shlex.quote(posixpath.dirname(dest))
