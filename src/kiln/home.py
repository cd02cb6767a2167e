"""Where kiln keeps its state: one directory, ``KILN_HOME``."""

from __future__ import annotations

import os
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
        return self
