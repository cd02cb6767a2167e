"""Who deploys, and what a finished operation reports."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.deploy.journal import DeploymentKind, Outcome, Who

# CI systems and the variable that holds the commit being built.
COMMIT_VARS = (
    "GITHUB_SHA",
    "CI_COMMIT_SHA",
    "BUILDKITE_COMMIT",
    "CIRCLE_SHA1",
    "BITBUCKET_COMMIT",
    "GIT_COMMIT",
)


def who_am_i(env: Mapping[str, str] | None = None) -> Who:
    """user@host, plus the CI commit when the environment names one."""
    env = os.environ if env is None else env
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = env.get("USER", "unknown")
    commit = next((env[v] for v in COMMIT_VARS if env.get(v)), None)
    return Who(user=user, host=socket.gethostname(), commit=commit)


USER_GATE = "user"  # the gate of a rollback the user asked for


@dataclass(frozen=True)
class Result:
    """The outcome of one engine operation, for people and for ``--json``."""

    fleet: str
    outcome: Outcome
    deployment: str | None = None
    kind: DeploymentKind = DeploymentKind.DEPLOY
    strategy: str | None = None
    from_image: str | None = None
    to_image: str | None = None
    duration: float | None = None
    message: str | None = None
    gate: str | None = None
    instance: str | None = None
    log: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    resumed: Result | None = None

    @property
    def ok(self) -> bool:
        """Done as asked: succeeded, nothing to do, or rolled back because the user asked
        (`kiln rollback` of an unfinished deployment: exit 0, not a tripped gate's 4)."""
        done = self.outcome in (Outcome.SUCCEEDED, Outcome.UNCHANGED) or (
            self.outcome is Outcome.ROLLED_BACK and self.gate == USER_GATE
        )
        return done and (self.resumed is None or self.resumed.outcome is not Outcome.FAILED)

    def to_json(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "deployment": self.deployment,
            "kind": self.kind,
            "outcome": self.outcome,
            "ok": self.ok,
            "strategy": self.strategy,
            "from": self.from_image,
            "to": self.to_image,
            "duration": self.duration,
            "message": self.message,
            "gate": self.gate,
            "instance": self.instance,
            "log": self.log,
            "warnings": list(self.figures.get("warnings", [])),  # what served, but not rightly
            "figures": self.figures,
            "resumed": self.resumed.to_json() if self.resumed else None,
        }
