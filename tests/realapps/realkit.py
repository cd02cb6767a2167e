"""Real third-party apps through kiln: init, deploy on the first try, roll under load, roll back.

Packages come from PyPI and npm at test time; their caches are shared across
tests and runs (KILN_REALAPPS_CACHE, default /tmp/kiln-realapps-cache), so
only the first run downloads. The only edits made to what `kiln init` writes
are those a reader makes on review: a free listen port, quicker health
checks and settle, and [secrets] the app needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kiln.loadgen import LoadLoop
from kilntest import Kiln

CACHE = Path(os.environ.get("KILN_REALAPPS_CACHE", "/tmp/kiln-realapps-cache"))
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def review(app: Path, port: int, extra: str = "") -> None:
    """What a reader changes after `kiln init`: a free port, quick checks, secrets."""
    path = app / "kiln.toml"
    text = path.read_text()
    for old, new in (
        ('listen = "127.0.0.1:8080"', f'listen = "127.0.0.1:{port}"'),
        ('interval = "1s"', 'interval = "250ms"'),
        ('drain = "10s"', 'drain = "3s"\nsettle = "1s"'),
    ):
        assert old in text, f"kiln init no longer writes {old!r}"
        text = text.replace(old, new)
    path.write_text(text + extra)


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def deploy(kiln: Kiln) -> dict[str, Any]:
    result = kiln("deploy", "--json", ok=False)
    assert result.exit_code == 0, f"deploy failed:\n{result.stdout}\n{result.stderr}"
    doc: dict[str, Any] = json.loads(result.stdout)
    assert doc["outcome"] == "succeeded", doc
    return doc


def first_try(
    app: Path,
    path: str,
    change: Callable[[], None],
    check: Callable[[bytes], bool],
    configure: Callable[[Path], None] | None = None,
) -> tuple[Kiln, int]:
    """init → deploy serves → code change rolled out under load, 0 failed → rollback.

    ``configure`` makes the app's own review edits (the [secrets] it needs).
    """
    kiln = Kiln(app)
    port = free_port()
    init = kiln("init")
    assert "detected:" in init.stdout
    review(app, port)
    if configure is not None:
        configure(app)
    first = deploy(kiln)
    status, body = get(port, path)
    assert status == 200 and check(body), (status, body[:300])
    change()
    with LoadLoop("127.0.0.1", port, path=path, workers=2, pause=0.01, max_seconds=240) as load:
        second = deploy(kiln)
    assert second["to"] != first["to"]
    assert load.sent > 20 and load.failed == 0, load.errors
    back = json.loads(kiln("rollback", "--json").stdout)
    assert back["outcome"] == "succeeded" and back["to"] == first["to"]
    assert get(port, path)[0] == 200
    return kiln, port


def pip_tools(*packages: str) -> Path:
    """Packages installed once into the shared cache, for tools run at test time."""
    target = CACHE / "tools"
    marker = target / (".done-" + "-".join(p.replace("/", "_") for p in packages))
    if not marker.exists():
        subprocess.run(
            [SYSTEM_PYTHON, "-m", "pip", "install", "-q", "--target", str(target), *packages],
            check=True,
            timeout=600,
            env={**os.environ, "PIP_CACHE_DIR": str(CACHE / "pip")},
        )
        marker.touch()
    return target


def npm_tools(*packages: str) -> Path:
    """npm packages installed once into the shared cache, for clients run at test time
    (node finds them with NODE_PATH set to the returned node_modules)."""
    target = CACHE / "node-tools" / "-".join(p.replace("/", "_") for p in packages)
    marker = target / ".done"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        (target / "package.json").write_text('{"private": true}\n')
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", *packages],
            cwd=target,
            check=True,
            timeout=600,
            env={**os.environ, "npm_config_cache": str(CACHE / "npm")},
        )
        marker.touch()
    return target / "node_modules"


__all__ = [
    "CACHE",
    "LoadLoop",
    "deploy",
    "first_try",
    "get",
    "npm_tools",
    "pip_tools",
    "review",
    "sys",
]
