"""A first kiln.toml for an existing app, with every section explained."""

from __future__ import annotations

import re
from pathlib import Path

from kiln.errors import ConfigError

_TEMPLATE = """\
# kiln.toml: how to bake this app into an image and run it as a fleet.
# Reference: docs/config.md (or `kiln config schema` for editors).

[app]
name = "{name}"
# Started once per instance, from the instance's directory, through /bin/sh.
# The app must listen on $HOST:$PORT (kiln sets both).
run = "{run}"
# Run at bake time in a scratch copy of the source; the result is the image.
build = [{build}]
# Left out of the image (gitignore syntax), besides .git and .kilnignore patterns.
exclude = ["__pycache__/", "*.pyc", ".venv/", "node_modules/", ".env"]
# Paths an instance may write at run time; drift detection ignores them.
writable = ["tmp/", "*.log"]

# Baked into the image: changing a value makes a new image.
[env]
# LOG_LEVEL = "info"

# Resolved when an instance starts, never stored: "env:VAR" or "file:/path".
[secrets]
# DATABASE_URL = "env:DATABASE_URL"

[health]
path = "{health}"          # GET must answer 2xx/3xx; remove for a TCP check
interval = "1s"
timeout = "2s"
healthy_threshold = 2
unhealthy_threshold = 3
grace = "30s"              # boot time during which failed checks do not count

[fleet]
size = 2
strategy = "rolling"       # rolling | blue-green | canary
max_surge = 1              # launch before terminate...
max_unavailable = 0        # ...never below the desired healthy capacity
drain = "10s"              # in-flight requests get this long to finish
# max_age = "7d"           # recycle instances older than this
keep_images = 5

[provider.local]
listen = "127.0.0.1:8080"  # the fleet's load balancer
"""


NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def render_config(app_dir: Path, name: str | None = None) -> str:
    """Guess what we can from the directory; leave the rest commented."""
    if name is not None and not NAME.match(name):
        raise ConfigError(
            f"{name!r} cannot be an app name",
            hint="use lowercase letters, digits and dashes, e.g. 'my-app'",
        )
    return _TEMPLATE.format(
        name=name or _slug(app_dir.name),
        run=_guess_run(app_dir),
        build=_guess_build(app_dir),
        health="/health",
    )


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return slug[:63] or "app"


def _guess_run(app_dir: Path) -> str:
    for candidate in ("app.py", "main.py", "server.py", "wsgi.py"):
        if (app_dir / candidate).is_file():
            return f"python3 {candidate}"
    if (app_dir / "package.json").is_file():
        return "node server.js"
    return "python3 -m http.server --bind $HOST $PORT"


def _guess_build(app_dir: Path) -> str:
    if (app_dir / "requirements.txt").is_file():
        return '"python3 -m pip install -q -r requirements.txt --target deps"'
    if (app_dir / "package.json").is_file():
        return '"npm ci --omit=dev"'
    return ""
