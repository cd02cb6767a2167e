"""The knobs a deployment runs with, taken from kiln.toml once."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kiln.config import CanarySettings, Config, FleetSettings, HealthSettings
from kiln.deploy.plan import Knobs

# The defaults are kiln.toml's own, declared once in kiln.config: a Settings()
# in a test or the library behaves as an empty [fleet], [health] and [canary].
_FLEET, _HEALTH, _CANARY = FleetSettings(), HealthSettings(), CanarySettings()


@dataclass(frozen=True)
class Settings:
    size: int = _FLEET.size
    strategy: str = _FLEET.strategy
    max_surge: int = _FLEET.max_surge
    max_unavailable: int = _FLEET.max_unavailable
    keep_warm: float = _FLEET.keep_warm
    progress_deadline: float = _FLEET.progress_deadline
    settle: float = _FLEET.settle
    drain: float = _FLEET.drain
    grace: float = _HEALTH.grace
    interval: float = _HEALTH.interval
    timeout: float = _HEALTH.timeout
    healthy_threshold: int = _HEALTH.healthy_threshold
    canary_instances: int = _CANARY.instances
    canary_percent: float | None = _CANARY.percent
    canary_duration: float = _CANARY.duration
    max_error_rate: float = _CANARY.max_error_rate
    max_p99_ratio: float = _CANARY.max_p99_ratio
    p99_slack: float = _CANARY.p99_slack
    min_requests: int = _CANARY.min_requests

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
            p99_slack=canary.p99_slack,
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
