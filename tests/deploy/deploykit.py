"""A simulated world for engine tests: fake provider, fake clock, real SQLite.

A module of its own (not conftest) so its name cannot clash with other test
directories' conftest modules.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from kiln.deploy import Engine, Event, Settings, StateDb
from kiln.deploy.journal import Journal, Who
from kiln.providers.fake import Behavior, FakeClock, FakeProvider

FLEET = "shop"
OLD, NEW, BAD = "img-0000000000aa", "img-0000000000bb", "img-0000000000cc"

FAST = Settings(
    size=2,
    grace=5.0,
    interval=1.0,
    timeout=1.0,
    healthy_threshold=2,
    settle=2.0,
    keep_warm=60.0,
    canary_duration=10.0,
    progress_deadline=300.0,
)


def dead_pid() -> int:
    """The pid of a process that has exited: a deployer killed with -9."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@dataclass
class World:
    db: StateDb
    clock: FakeClock = field(default_factory=FakeClock)
    settings: Settings = FAST
    events: list[Event] = field(default_factory=list)
    provider: FakeProvider = field(init=False)

    def __post_init__(self) -> None:
        self.provider = FakeProvider(self.clock)
        for image in (OLD, NEW):
            self.provider.add_image(image)

    def engine(self, *, pid: int | None = None, **changes: Any) -> Engine:
        settings = replace(self.settings, **changes) if changes else self.settings
        return Engine(
            self.provider,
            self.db,
            settings,
            FLEET,
            clock=self.clock,
            who=Who("alice", "ci-runner-1", "abc123"),
            pid=pid,
            on_event=self.events.append,
        )

    def running(self) -> Counter[str]:
        """Live instances per image."""
        return Counter(i.image for i in self.provider.describe(FLEET).live())

    def serving(self) -> Counter[str]:
        return Counter(i.image for i in self.provider.describe(FLEET).serving())

    def journal(self) -> Journal:
        return Journal(self.db)

    def min_capacity_after(self, t: float) -> int:
        return min(n for at, _f, n in self.provider.capacity if at >= t)

    def assert_settled(self, image: str | None, size: int) -> None:
        """No orphans: only ``image`` runs (plus a recorded warm standby), groups agree."""
        state = self.provider.describe(FLEET)
        rec = self.db.fleet(FLEET)
        warm = set(rec.warm_ids) if rec else set()
        live = state.live()
        assert {i.image for i in live if i.id not in warm} <= ({image} if image else set())
        assert all(self.provider.image_exists(i.image) for i in live)
        serving = [i for i in state.serving() if i.image == image]
        assert len(serving) == (size if image else 0)
        expected_groups = Counter(i.image for i in live)
        assert dict(state.groups) == dict(expected_groups)
        assert self.journal().unfinished(FLEET) is None


__all__ = [
    "BAD",
    "FAST",
    "FLEET",
    "NEW",
    "OLD",
    "Behavior",
    "FakeClock",
    "FakeProvider",
    "World",
    "dead_pid",
]
