"""A first kiln.toml for an existing app, with every section explained."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kiln.config import BuildStep
from kiln.detect import Detected, detect
from kiln.errors import ConfigError

_TEMPLATE = """\
# kiln.toml: how to bake this app into an image and run it as a fleet.
# Reference: docs/config.md (or `kiln config schema` for editors).
# `kiln init` detected: {kind}.{notes}

[app]
name = "{name}"
# Started once per instance, from the instance's directory, through /bin/sh
# (a shell line: '&&' and $VARS work; its last command is exec'd).
# The app must listen on $HOST:$PORT (kiln sets both).{run_from}
run = {run}
# Run at bake time in a scratch copy of the source; the result is the image.
# A {{ run, inputs, outputs }} step is reused while its inputs are unchanged.
build = {build}
{release}# Source files left out of the image (gitignore syntax), besides .git and
# .kilnignore patterns. What the build makes is always kept.
exclude = [{exclude}]
# Paths an instance may write at run time; drift detection ignores them.
writable = [{writable}]

# Baked into the image: changing a value makes a new image.
[env]
{env}
# Resolved when an instance starts, never stored: "env:VAR" or "file:/path".
[secrets]
# DATABASE_URL = "env:DATABASE_URL"

[health]
{health}
{health_host}
interval = "1s"
timeout = "2s"
healthy_threshold = 2
unhealthy_threshold = 3
grace = "{grace}"              # boot time during which failed checks do not count

[fleet]
size = 2
strategy = "rolling"       # rolling | blue-green | canary
max_surge = 1              # launch before terminate...
max_unavailable = 0        # ...never below the desired healthy capacity
drain = "10s"              # in-flight requests get this long to finish
# max_age = "7d"           # recycle instances older than this
keep_images = 5
{sticky}

[provider.local]
listen = "127.0.0.1:8080"  # the fleet's load balancer
"""


NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def render_config(app_dir: Path, name: str | None = None, found: Detected | None = None) -> str:
    """A kiln.toml that deploys what ``detect`` found, every section explained."""
    if name is not None and not NAME.match(name):
        raise ConfigError(
            f"{name!r} cannot be an app name",
            hint="use lowercase letters, digits and dashes, e.g. 'my-app'",
        )
    found = found or detect(app_dir)
    if found.health_path:
        health = f'path = "{found.health_path}"          # GET must answer 2xx/3xx'
    else:
        health = '# path = "/health"       # unset: a TCP connect check (no health route found)'
    release = (
        "# Run once per deployment in the new image, before any new instance takes traffic.\n"
        + (f"release = {_toml(found.release)}\n" if found.release else '# release = "..."\n')
    )
    notes = "".join(f"\n# warning: {warning}" for warning in found.warnings)
    notes += "".join(f"\n# note: {note}" for note in found.notes)
    if found.sticky:
        sticky = '# each client stays on one instance (its session lives there)\nsticky = "cookie"'
    else:
        sticky = '# sticky = "cookie"       # for in-process sessions (Socket.IO, SockJS)'
    env = "".join(f"{key} = {_toml(value)}\n" for key, value in found.env.items())
    return _TEMPLATE.format(
        kind=found.kind,
        notes=notes,
        name=name or _slug(app_dir.name),
        run=_toml(found.run),
        run_from=_from_procfile(found),
        build=_build(found.build),
        release=release,
        exclude=", ".join(_toml(p) for p in found.exclude),
        writable=", ".join(_toml(p) for p in found.writable),
        env=env or '# LOG_LEVEL = "info"\n',
        health=health,
        health_host=_health_host(found),
        grace=found.grace,
        sticky=sticky,
    )


def _from_procfile(found: Detected) -> str:
    """A comment on where the run line came from, when it is not kiln's guess."""
    if found.run_source != "Procfile":
        return ""
    return "\n# From the Procfile's web process (kiln init reads it; this file is what deploys)."


def _build(steps: list[str | BuildStep]) -> str:
    """One step a line; a cached step as an inline table (TOML keeps those on one line)."""
    if not steps:
        return "[]"
    lines = []
    for step in steps:
        if isinstance(step, str):
            lines.append(f"    {_toml(step)},")
        else:
            lines.append(
                f"    {{ run = {_toml(step.run)}, inputs = {json.dumps(step.inputs)}, "
                f"outputs = {json.dumps(step.outputs)} }},"
            )
    return "[\n" + "\n".join(lines) + "\n]"


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return slug[:63] or "app"


def _health_host(found: Detected) -> str:
    """[health] host: set when detection found the name the app answers, else a hint."""
    if found.health_host:
        host = _toml(found.health_host)
        return f"host = {host}   # the Host checks send: the app answers its names only"
    return '# host = "www.example.com"  # the Host checks send, for an app answering its names only'
