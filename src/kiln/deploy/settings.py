"""The knobs a deployment runs with, taken from kiln.toml once."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kiln.config import Config
from kiln.deploy.plan import Knobs


@dataclass(frozen=True)
class Settings:
    size: int = 2
    strategy: str = "rolling"
    max_surge: int = 1
    max_unavailable: int = 0
    keep_warm: float = 300.0
    progress_deadline: float = 600.0
    settle: float = 5.0
    drain: float = 10.0
    grace: float = 30.0
    interval: float = 1.0
    timeout: float = 2.0
    healthy_threshold: int = 2
    canary_instances: int = 1
    canary_percent: float | None = None
    canary_duration: float = 30.0
    max_error_rate: float = 0.01
    max_p99_ratio: float = 1.5
    min_requests: int = 20

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        fleet, health, canary = config.fleet, config.health, config.canary
        return cls(
            size=fleet.size,
            strategy=fleet.strategy,
            max_surge=fleet.max_surge,
            max_unavailable=fleet.max_unavailable,
            keep_warm=fleet.keep_warm,
            progress_deadline=fleet.progress_deadline,
            settle=fleet.settle,
            drain=fleet.drain,
            grace=health.grace,
            interval=health.interval,
            timeout=health.timeout,
            healthy_threshold=health.healthy_threshold,
            canary_instances=canary.instances,
            canary_percent=canary.percent,
            canary_duration=canary.duration,
            max_error_rate=canary.max_error_rate,
            max_p99_ratio=canary.max_p99_ratio,
            min_requests=canary.min_requests,
        )

    @property
    def boot_deadline(self) -> float:
        """How long a new instance may take to pass its checks: the boot gate."""
        return self.grace + self.healthy_threshold * self.interval + self.slack

    @property
    def slack(self) -> float:
        """Room for process start and one slow check beyond the health timings."""
        return self.timeout + 2 * self.interval + 5.0

    @property
    def poll(self) -> float:
        """How often the engine looks at the fleet while waiting."""
        return max(0.05, min(0.5, self.interval / 2))

    def canary_count(self, size: int) -> int:
        wanted = self.canary_instances
        if self.canary_percent is not None:
            wanted = round(size * self.canary_percent / 100)
        return max(1, min(size, wanted))

    def knobs(self, size: int, settle: float | None = None) -> Knobs:
        """The planner's inputs for a fleet of ``size`` (``settle`` overrides [fleet] settle)."""
        return Knobs(
            max_surge=self.max_surge,
            max_unavailable=self.max_unavailable,
            keep_warm=self.keep_warm,
            settle=self.settle if settle is None else settle,
            canary_count=self.canary_count(size),
            canary_seconds=self.canary_duration,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
