"""Where a fleet's images are baked and its instances run, chosen once per command.

The deploy engine talks to a :class:`~kiln.providers.protocol.Provider` (seven methods
about instances). Everything around a deployment — baking, listing and
pruning images, status, history, drift, recycling — differs between "this
host" and "an AWS account" too. A :class:`Platform` owns those operations for
one provider, so the CLI asks ``open_platform(name, ...)`` once and delegates
(as kamal picks its builder once): no command asks which provider it runs on.
What a platform cannot do is a :class:`Capability` it lacks, refused in one
place (:meth:`PlatformBase.require`) with one message.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kiln.errors import ConfigError, ProviderError

if TYPE_CHECKING:
    from kiln.config import LoadedConfig
    from kiln.deploy.engine import Event
    from kiln.deploy.history import Result
    from kiln.deploy.plan import Plan
    from kiln.home import Home
    from kiln.image.result import BakeProgress


__all__ = [
    "DRIFT_FOUND",
    "PLATFORMS",
    "PLATFORM_NAMES",
    "Capability",
    "Deployer",
    "Narrate",
    "OnEvent",
    "Platform",
    "PlatformBase",
    "Promotion",
    "Report",
    "open_platform",
]

OnEvent = Callable[["Event"], None]
Source = Callable[[], tuple[Path, str | None]]  # kiln.toml's path and the --env it is read for
Narrate = Callable[[str], None]

# name -> (module, class); each class is constructed as Class(home, config loader)
PLATFORMS: dict[str, tuple[str, str]] = {
    "local": ("kiln.local.platform", "LocalPlatform"),
    "aws": ("kiln.aws.platform", "AwsPlatform"),
}
PLATFORM_NAMES = frozenset(PLATFORMS)

DRIFT_FOUND = 6  # exit code of `kiln drift` when anything drifted


class Capability(StrEnum):
    """Things some platforms do and others do not."""

    CANARY = "canary"  # the canary strategy, with its per-instance 5xx/p99 gate
    DRIFT_REPLACE = "drift-replace"  # `kiln drift --replace`
    RECYCLE_DRY_RUN = "recycle-dry-run"  # `kiln recycle --dry-run`
    RESUME = "resume"  # `kiln deploy --resume` from a journal
    RELEASE = "release"  # [app] release: a command run once per deployment, before it acts
    RUN = "run"  # `kiln run`: a one-off command in a fresh directory of an image
    REFRESH = "refresh"  # `kiln refresh`: replace what runs outdated host files or base image
    DESTROY = "destroy"  # `kiln destroy`: stop every instance, forget the fleet, keep history
    PACKAGES = "packages"  # `kiln image packages`: the OS packages a machine image holds
    PROMOTE = "promote"  # `kiln promote`: another environment's image, same code, no bake
    HEALTH_HOST = "health-host"  # [health] host: a Host header on every health check


@dataclass(frozen=True)
class Promotion:
    """What promoting an image into an environment would do, found without changing it.

    ``image``: the image the environment would deploy (its identity, even when it
    does not exist there yet). ``actions``: each ``{"action", "text", ...}``, in
    order. ``ready``: that image exists where the environment deploys, so a
    deployment plan can be made against it now.
    """

    image: str
    actions: tuple[dict[str, Any], ...] = ()
    ready: bool = True


@dataclass(frozen=True)
class Report:
    """What an operation found or did: JSON for scripts, lines and a table for people.

    The library stays free of any terminal library: the CLI prints ``lines``,
    then ``rows`` under ``columns``, then ``footer``, and exits with
    ``exit_code``. A deployment the operation ran is in ``result``.
    """

    data: Any
    lines: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    footer: tuple[str, ...] = ()
    empty: str = ""  # said instead of the table when there are no rows
    exit_code: int = 0
    result: Result | None = field(default=None)

    def to_json(self) -> Any:
        return self.data


class Deployer(Protocol):
    """What ``kiln deploy|rollback|scale`` drive: the engine, or an engine kept in AWS."""

    fleet: str

    def plan(self, image: str, strategy: str | None = None) -> Plan: ...

    def deploy(
        self,
        image: str,
        *,
        strategy: str | None = None,
        reason: str | None = None,
        wait: float | None = None,
    ) -> Result: ...

    def rollback(
        self, to: str | None = None, *, reason: str | None = None, wait: float | None = None
    ) -> Result: ...

    def scale(self, size: int, *, wait: float | None = None) -> Result: ...

    def resume(self, *, wait: float | None = None) -> Result | None: ...


class Platform(Protocol):
    """Every operation a command can ask of where the fleet lives."""

    name: str
    capabilities: frozenset[Capability]

    def require(self, capability: Capability, what: str, hint: str | None = None) -> None: ...

    def bake(
        self, progress: BakeProgress, narrate: Narrate, *, boot_test: bool | None = None
    ) -> Report:
        """``boot_test``: boot the result once and health-check it (AMIs only)."""
        ...

    def images(self, app: str | None) -> Report: ...

    def code_of(self, image: str) -> str | None:
        """The code digest of ``image`` (its digest minus the env layer); None if unknown."""
        ...

    def promote_image(self, image: str, source: Platform, narrate: Narrate) -> str:
        """This environment's image with the code ``source`` serves as ``image``; no bake."""
        ...

    def plan_promotion(self, image: str, source: Platform) -> Promotion:
        """What ``promote_image`` would do (``kiln promote --dry-run``): nothing shared,
        copied or launched."""
        ...

    def prune(self, keep: int, app: str | None, *, dry_run: bool) -> Report: ...

    def deployer(
        self, on_event: OnEvent | None = None, *, allow_unverified: bool = False
    ) -> Deployer:
        """``allow_unverified``: deploy images no boot test has passed (AMIs only)."""
        ...

    def run(
        self,
        image: str | None,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        narrate: Narrate | None = None,
    ) -> int:
        """``argv`` once in a fresh directory of ``image`` (default: the current one),
        with ``env`` over the instance's environment.

        ``narrate`` hears about a slow start (an instance launched for it)."""
        ...

    def status(self) -> dict[str, Any]: ...

    def history(self, limit: int, *, all_fleets: bool) -> list[dict[str, Any]]: ...

    def drift(self, *, replace: bool, reason: str | None, on_event: OnEvent | None) -> Report: ...

    def refresh(
        self, *, reason: str | None, wait: float | None, on_event: OnEvent | None
    ) -> Report:
        """Bring the fleet onto patched system files: locally, replace the instances that run
        host files replaced since they started; on AWS, re-bake on the newest base and deploy."""
        ...

    def packages(self, ref: str, match: str | None) -> Report:
        """The OS packages the machine image of ``ref`` was built with (names containing
        ``match``)."""
        ...

    def timeline(self, limit: int) -> list[dict[str, Any]]:
        """Deployments, newest first, each with its steps and their times where known."""
        ...

    def counters(self) -> dict[str, tuple[int, int]]:
        """Per instance: requests and errors so far, from the load balancer (may be empty)."""
        ...

    def traffic(self, since: float) -> list[list[float]] | None:
        """Stored ``[at, seconds, requests, errors]`` buckets of the fleet since ``since``,
        oldest first; None where nothing is stored (the page then samples ``counters``)."""
        ...

    def served_page(self) -> str | None:
        """The URL (with its token) where something long-lived already serves this fleet's
        page (the local agent, with ``ui_listen``), or None: ``kiln ui`` serves it itself."""
        ...

    def destroy(
        self, *, reason: str | None, wait: float | None, on_event: OnEvent | None
    ) -> Report:
        """Drain and stop every instance, free the listener, forget the fleet; keep history."""
        ...

    def recycle(
        self,
        max_age: float,
        *,
        dry_run: bool,
        reason: str | None,
        wait: float | None,
        on_event: OnEvent | None,
    ) -> Report: ...


class PlatformBase:
    """What every platform shares: its home, its config (read when first needed)."""

    name = ""
    capabilities: frozenset[Capability] = frozenset()

    def __init__(
        self,
        home: Home,
        config: Callable[[], LoadedConfig],
        *,
        has_config: bool = True,
        source: Source | None = None,
    ) -> None:
        self.home = home
        self._config = config
        self.has_config = has_config  # False: no kiln.toml here; image commands use defaults
        self.source = source  # which kiln.toml and --env, known without validating it

    @property
    def loaded(self) -> LoadedConfig:
        return self._config()

    def traffic(self, since: float) -> list[list[float]] | None:
        return None

    def served_page(self) -> str | None:
        return None

    def require(self, capability: Capability, what: str, hint: str | None = None) -> None:
        """The one place an unsupported feature is refused; ``hint``: what to do instead."""
        if capability not in self.capabilities:
            others = [n for n in PLATFORMS if n != self.name]
            elsewhere = f"it works with --provider {' or '.join(others)}" if others else None
            raise ConfigError(
                f"{what} is not available with --provider {self.name}", hint=hint or elsewhere
            )


def image_ages(
    image_age: float | None, base_age: float | None, max_image_age: float | None
) -> dict[str, Any]:
    """What ``kiln status`` shows of its image's age on every platform, and its warning."""
    from kiln.durations import format_duration

    data: dict[str, Any] = {
        "image_age": None if image_age is None else round(image_age, 1),
        "base_age": None if base_age is None else round(base_age, 1),
        "max_image_age": max_image_age,
        "image_due": bool(max_image_age and image_age is not None and image_age > max_image_age),
    }
    if data["image_due"] and image_age is not None and max_image_age is not None:
        data["warnings"] = [
            f"the image is {format_duration(image_age)} old, over [fleet] max_image_age "
            f"({format_duration(max_image_age)}): 'kiln refresh' is due"
        ]
    return data


def open_platform(
    name: str,
    home: Home,
    config: Callable[[], LoadedConfig],
    *,
    has_config: bool = True,
    source: Source | None = None,
) -> Platform:
    """The platform called ``name``; its module (and boto3 or aiohttp) loads only now."""
    try:
        module_name, class_name = PLATFORMS[name]
    except KeyError:
        raise ProviderError(
            f"unknown provider {name!r}", hint=f"use one of: {', '.join(PLATFORMS)}"
        ) from None
    module = importlib.import_module(module_name)
    platform: Platform = getattr(module, class_name)(
        home, config, has_config=has_config, source=source
    )
    return platform
