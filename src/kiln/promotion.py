"""Promotion between environments: ship the code that was healthy where it was tested.

Provider-agnostic: everything here goes through :class:`~kiln.platform.Platform`
(``status``, ``history``, ``code_of``, ``promote_image``), so the same rules hold
for fleets on this host and on AWS. An environment's image differs from another's
only in its env layer; the *code digest* (:attr:`kiln.image.store.Manifest.code_digest`)
is what must match.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln.errors import PromotionRefused
from kiln.image.store import short_code

if TYPE_CHECKING:
    from kiln.platform import Platform

OVERRIDE_NOTE = "override-require"  # how a refused-then-forced deploy reads in the history


@dataclass(frozen=True)
class Serving:
    """The one image an environment serves healthily now."""

    environment: str
    image: str
    code: str


def serving_image(status: dict[str, Any]) -> str | None:
    """The image every in-service instance runs and passes checks with, if there is one.

    None while a deployment is under way, with nothing in service, with two
    images in service, or with any in-service instance failing its checks.
    """
    if status.get("deployment_in_progress") or status.get("lock"):
        return None
    serving = [i for i in status.get("instances", []) if i.get("in_service")]
    images = {i["image"] for i in serving}
    if len(images) != 1 or not all(i.get("healthy") for i in serving):
        return None
    return str(images.pop())


def healthy_now(platform: Platform, environment: str) -> Serving:
    """What ``environment`` serves healthily now, or a refusal saying why there is nothing."""
    status = platform.status()
    image = serving_image(status)
    if image is None:
        raise PromotionRefused(
            f"{environment} ({status.get('fleet')}) serves no single healthy image now: "
            "nothing to promote",
            hint=f"see 'kiln status --env {environment}'; promote once its deployment "
            "has finished and every instance is healthy",
        )
    code = platform.code_of(image)
    if code is None:
        raise PromotionRefused(
            f"{environment} serves {image}, whose code digest is unknown here",
            hint="promote from where that image was baked (its store or its AMI tags)",
        )
    return Serving(environment, image, code)


def healthy_codes(platform: Platform, limit: int = 200) -> set[str]:
    """Code digests an environment has ever served healthily: its succeeded deployments."""
    images: set[str] = set()
    for entry in platform.history(limit, all_fleets=False):
        if entry.get("outcome") == "succeeded" and entry.get("to"):
            images.add(str(entry["to"]))
    current = serving_image(platform.status())
    if current is not None:
        images.add(current)
    return {code for image in images if (code := platform.code_of(image)) is not None}


def check_required(
    target: Platform,
    environment: str,
    image: str,
    required: Platform,
    required_name: str,
    *,
    override: bool,
    code: str | None = None,
) -> str | None:
    """Refuse ``image`` for ``target`` unless its code was healthy in ``required``.

    ``code``: its code digest when known already (a promotion's, whose image may
    not exist yet); else ``target`` is asked. Returns the note to record in the
    history when ``override`` forced it.
    """
    code = code or target.code_of(image)
    if code is not None and code in healthy_codes(required):
        return None
    shown = short_code(code) if code else "unknown code"
    if override:
        return f"{OVERRIDE_NOTE}: {image} ({shown}) never healthy in {required_name}"
    raise PromotionRefused(
        f"{image} ({shown}) was never healthy in {required_name}: "
        f"{environment} requires = {required_name!r}",
        hint=f"deploy it with --env {required_name} first, then 'kiln promote {required_name} "
        f"{environment}'; or pass --override-require (recorded in the history)",
    )


def with_note(reason: str | None, note: str | None) -> str | None:
    """The history's reason, with what kiln adds (a promotion, an override) in front."""
    if note is None:
        return reason
    return f"{note}; {reason}" if reason else note


def environments_status(platforms: dict[str, Platform], now: float | None = None) -> list[Any]:
    """Per environment: its fleet, what it serves, which code, since when."""
    now = time.time() if now is None else now
    rows: list[dict[str, Any]] = []
    for name, platform in platforms.items():
        status = platform.status()
        image = serving_image(status) or status.get("current_image")
        code = platform.code_of(image) if image else None
        deployed = _deployed_at(platform, image)
        rows.append(
            {
                "environment": name,
                "fleet": status.get("fleet"),
                "endpoint": status.get("endpoint"),
                "image": image,
                "code": short_code(code) if code else None,
                "code_digest": code,
                "healthy": serving_image(status) is not None,
                "serving": sum(1 for i in status.get("instances", []) if i.get("in_service")),
                "deployed": deployed,
                "age": None if deployed is None else round(max(0.0, now - deployed), 1),
            }
        )
    return rows


def _deployed_at(platform: Platform, image: str | None) -> float | None:
    """When the image an environment runs was last deployed to it successfully."""
    if image is None:
        return None
    for entry in platform.history(50, all_fleets=False):
        if entry.get("to") == image and entry.get("outcome") == "succeeded":
            finished = entry.get("finished") or entry.get("started")
            return float(finished) if finished is not None else None
    return None
