"""``kiln refresh --provider aws``: the running image, re-baked on the newest base, rolled out.

Security fixes reach an immutable fleet as a new machine image, never as an
upgrade on a live server. A refresh bakes the image the fleet runs again:
when the base image's name pattern now resolves to a newer AMI (or the image
is older than ``[fleet] max_image_age`` and ``security_upgrades`` is on), a
new AMI of the *same* image digest is built, boot-tested and deployed through
the normal strategy, gates and rollback (its release, ``img-…@ami-…``,
differs from the running one). Otherwise the AMI is reused and nothing is
deployed. It never ships new code: the checkout must bake the running image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kiln.aws import groups as g
from kiln.aws.ami import TargetFactory, build_ami
from kiln.aws.boottest import Checker
from kiln.aws.deployments import open_deployments
from kiln.aws.images import BASE_TAG, age_of, describe_ami
from kiln.aws.session import Aws
from kiln.aws.targets import Resolver
from kiln.config import AwsSettings, LoadedConfig
from kiln.deploy.engine import Event, EventKind
from kiln.durations import format_duration
from kiln.errors import DeployError, FleetNotFound
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.store import Store
from kiln.platform import Report


def refresh_fleet(
    loaded: LoadedConfig,
    home: Home,
    *,
    reason: str | None = None,
    wait: float | None = None,
    on_event: Callable[[Event], None] | None = None,
    aws: Aws | None = None,
    ssh_target: TargetFactory | None = None,
    checker: Checker | None = None,
    resolve: Resolver | None = None,
) -> Report:
    """Re-bake the running image on the newest base; deploy it if that made a new AMI."""
    emit = on_event or (lambda _e: None)

    def note(message: str) -> None:
        emit(Event(EventKind.INFO, message))

    fleet = open_deployments(home, loaded, on_event=on_event, aws=aws, resolve=resolve)
    name = fleet.fleet
    current = fleet.current_image()
    if current is None:
        raise FleetNotFound(
            f"fleet {name} runs nothing on AWS: nothing to refresh",
            hint="deploy it first: kiln deploy --provider aws",
        )
    image, running_ami = g.split_release(current)
    local = bake(loaded, home)
    if local.image != image:
        raise DeployError(
            f"fleet {name} runs {image}, but this checkout bakes {local.image}: "
            "kiln refresh only re-bakes what runs",
            hint="deploy the new image with 'kiln deploy --provider aws', or refresh from the "
            "commit the fleet runs",
        )
    settings = loaded.config.provider.aws or AwsSettings()
    running = describe_ami(fleet.aws, running_ami) if running_ami else None
    age = age_of(running.created if running else None, time.time())
    max_age = loaded.config.fleet.max_image_age
    due = max_age is not None and age is not None and age > max_age
    fresh = due and settings.security_upgrades
    if fresh:
        note(f"{running_ami} is {format_duration(age or 0)} old: baking a fresh AMI")
    store = Store(home)
    made = build_ami(
        store, store.get(image), loaded.config, aws=fleet.aws, progress=note,
        ssh_target=ssh_target, boot_test=True, checker=checker, fresh=fresh,
    )  # fmt: skip
    release = g.release_id(image, made.ami)
    data: dict[str, Any] = {
        "fleet": name,
        "from": current,
        "to": release,
        "base_ami": made.base_ami,
        "image_age": None if age is None else round(age, 1),
        "max_image_age": max_age,
        "due": due,
        "baked": not made.reused,
    }
    if release == current:
        line = _unchanged(name, made.ami, made.base_ami, age, max_age, due)
        return Report({**data, "deployment": None}, lines=(line,))
    old_base = running.tags.get(BASE_TAG) if running else None
    why = f"base {old_base} → {made.base_ami}" if old_base != made.base_ami else "fresh AMI"
    result = fleet.deploy(release, reason=reason or f"refresh: {why}", wait=wait, only_from=current)
    lines = (f"refresh {name}: {running_ami} → {made.ami} ({why})",)
    return Report({**data, "deployment": result.to_json()}, lines=lines, result=result)


def _unchanged(
    fleet: str, ami: str, base: str | None, age: float | None, max_age: float | None, due: bool
) -> str:
    old = f", {format_duration(age)} old" if age is not None else ""
    line = f"nothing to refresh: {fleet} runs {ami}{old}, baked on the newest base {base}"
    if due and max_age is not None:
        line += (
            f"; it is over [fleet] max_image_age ({format_duration(max_age)}), but "
            "[provider.aws] security_upgrades is off, so a new bake would bring nothing newer"
        )
    return line
