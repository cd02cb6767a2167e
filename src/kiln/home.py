"""Where kiln keeps its state: one directory, ``KILN_HOME``."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import HomeError

ENV_VAR = "KILN_HOME"


@dataclass(frozen=True)
class Home:
    """Paths under KILN_HOME; nothing else on disk is kiln's."""

    root: Path

    @classmethod
    def resolve(cls, override: str | os.PathLike[str] | None = None) -> Home:
        """``--home`` beats ``$KILN_HOME`` beats ``~/.kiln``."""
        raw = override or os.environ.get(ENV_VAR) or Path.home() / ".kiln"
        return cls(Path(raw).expanduser().absolute())

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def tmp(self) -> Path:
        """Scratch space on the store's filesystem, so renames stay atomic."""
        return self.root / "tmp"

    @property
    def state_db(self) -> Path:
        return self.root / "state.db"

    @property
    def agent_dir(self) -> Path:
        return self.root / "agent"

    @property
    def agent_socket(self) -> Path:
        return self.root / "agent.sock"

    @property
    def balancer_pid_file(self) -> Path:
        """The load balancer process's pid (kiln.local.lbproc), while one runs."""
        return self.agent_dir / "lb.pid"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    def ensure(self) -> Home:
        """Create the home (private to its owner) or explain why it cannot be."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            for sub in (self.store, self.tmp):
                sub.mkdir(exist_ok=True)
            probe = self.tmp / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise HomeError(
                f"KILN_HOME {self.root} is not usable: {exc.strerror or exc}",
                hint="point KILN_HOME (or --home) at a directory you can write",
            ) from exc
        self._make_private()
        return self

    def _make_private(self) -> None:
        """Nobody else may read or write the home: it holds manifests with [env], the state.

        A home made beforehand (``mkdir`` with umask 022) is tightened to 0700,
        its entries to 0700/0600; what lies below them is then out of reach.
        A traverse-only 0711 (what isolation sets, so instances reach their own
        directories) reads nothing and is kept.
        """
        for path in (self.root, *self.root.iterdir()):
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue  # gone since listed: e.g. SQLite's -wal file as another process closes
            if stat.S_ISLNK(mode):
                continue
            loose = mode & (0o066 if stat.S_ISDIR(mode) else 0o077)
            if not loose:
                continue
            try:
                path.chmod(0o700 if stat.S_ISDIR(mode) else 0o600)
            except OSError as exc:
                raise HomeError(
                    f"KILN_HOME {path} is open to other users (mode {stat.S_IMODE(mode):o}) "
                    f"and kiln cannot make it private: {exc.strerror or exc}",
                    hint=f"as its owner, run 'chmod -R go-rwx {self.root}', or point "
                    "KILN_HOME (or --home) at a directory of your own",
                ) from exc
