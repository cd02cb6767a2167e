"""Faults around a fleet's first deployment, each followed by a `kiln deploy` that works.

Issue 15: a failed first deploy left a phantom `running` record (logged as
exited every 0.2 s) in a fleet the agent had forgotten, and every later
deploy, resume, rollback and agent restart failed with "fleet X has no
instances on this host". Real agent, real processes, the real CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from localtest import APP, free_port, http_get, kill_everything, make_image, wait_for

from kiln.home import Home
from kiln.local.agent import db_path, log_path, read_pid
from kilntest import Kiln

pytestmark = pytest.mark.slow


def config(directory: Path, port: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kiln.toml"
    path.write_text(
        f"""
[app]
name = "web"
run = "python3 app.py"

[health]
path = "/health"
interval = "100ms"
timeout = "1s"
healthy_threshold = 1
unhealthy_threshold = 2
grace = "5s"

[fleet]
size = 2
drain = "2s"
settle = "0s"

[provider.local]
listen = "127.0.0.1:{port}"
stop_timeout = "2s"
"""
    )
    return path


@pytest.fixture
def site(home: Home, tmp_path: Path) -> Iterator[tuple[Kiln, int]]:
    port = free_port()
    cfg = config(tmp_path / "app", port)
    try:
        yield Kiln(cfg.parent), port
    finally:
        kill_everything(home)


def deploy(kiln: Kiln, image: str, ok: bool = True) -> tuple[int, dict[str, Any] | None]:
    result = kiln("deploy", "--image", image, "--json", ok=ok)
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        return result.exit_code, None


def works(kiln: Kiln, home: Home, port: int) -> None:
    """A good image deploys, serves on the fleet's port, and nothing is left over."""
    good = make_image(home, files={"app.py": APP + f"\n# good {os.urandom(4).hex()}\n"})
    code, data = deploy(kiln, good)
    assert code == 0, data
    status = json.loads(kiln("status", "--json").stdout)
    live = [i for i in status["instances"] if i["state"] not in ("failed", "terminated")]
    assert [i["image"] for i in live] == [good, good], status["instances"]
    assert status["serving"] == 2
    assert 0 <= status["image_age"] < 600 and not status["image_due"]  # baked just now
    assert http_get(port)[1]["image"] == good
    text = log_path(home).read_text()
    assert "no instances on this host" not in text and "no fleet web" not in text


def phantom_free(home: Home) -> None:
    """No record claims a process that is gone, and no line repeats tick after tick."""
    lines = log_path(home).read_text().splitlines()
    exited = [line.split(" ", 3)[-1] for line in lines if " exited" in line or "killed" in line]
    assert len(exited) == len(set(exited)), exited


def test_instance_exits_at_start(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    crash = make_image(home, files={"app.py": "import sys\nprint('boom')\nsys.exit(3)\n"})
    code, data = deploy(kiln, crash, ok=False)
    assert code != 0 and data is not None and data["outcome"] == "rolled back", data
    time.sleep(1.0)  # several supervisor ticks: a phantom would be logged again and again
    phantom_free(home)
    works(kiln, home, port)


def test_listener_port_taken(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    image = make_image(home)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = kiln("deploy", "--image", image, ok=False)
        assert result.exit_code != 0
        assert "in use" in result.stderr, result.stderr
    works(kiln, home, port)


def test_materialize_fails_half_way(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    marker = "x = 'original-" + os.urandom(8).hex() + "'\n"
    files = {f"lib/m{i:03}.py": f"# {i}\n" for i in range(200)}
    bad = make_image(home, files={"app.py": APP, **files, "lib/zz_last.py": marker})
    for path in home.store.rglob("*"):  # the last file's object, wherever it is stored
        if path.is_file() and marker.encode() in path.read_bytes():
            path.chmod(0o644)
            path.write_bytes(path.read_bytes().replace(b"original", b"tampered"))
    code, data = deploy(kiln, bad, ok=False)
    assert code != 0 and data is not None, data
    assert data["outcome"] == "rolled back" and "zz_last.py" in data["message"], data
    # nothing half-written is left: no instance directory, no partial image tree
    wait_for(lambda: not _dirs(home.instances) and not _dirs(home.agent_dir / "trees"), 60, "")
    works(kiln, home, port)


def test_agent_killed_mid_launch(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    many = {f"lib/pkg{i % 20}/m{i}.py": "#" * 4096 + "\n" for i in range(1500)}
    image = make_image(home, files={"app.py": APP, **many})
    env = {**os.environ, "KILN_HOME": str(home.root)}
    command = [sys.executable, "-m", "kiln.cli", "deploy", "--image", image, "--json"]
    with subprocess.Popen(command, cwd=kiln.cwd, env=env, stdout=subprocess.PIPE) as deployer:
        wait_for(lambda: _pending(home), 60, "an instance being launched")
        agent = read_pid(home)
        assert agent is not None
        os.kill(agent, signal.SIGKILL)
        deployer.wait(60)
    assert deployer.returncode != 0
    # the next deploy starts a new agent, which finds the half-launched records,
    # then finishes the interrupted deployment: exactly `size` instances, no more
    code, data = deploy(kiln, image)
    assert code == 0, data
    status = json.loads(kiln("status", "--json").stdout)
    live = [i for i in status["instances"] if i["state"] not in ("failed", "terminated")]
    assert len(live) == 2 and status["serving"] == 2, status["instances"]
    phantom_free(home)
    works(kiln, home, port)


def _pending(home: Home) -> bool:
    path = db_path(home)
    if not path.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as conn:
            rows = conn.execute("SELECT data FROM agent_instances").fetchall()
    except sqlite3.OperationalError:  # the agent is still creating its tables
        return False
    return any(json.loads(raw)["pid"] is None for (raw,) in rows)


def _dirs(where: Path) -> list[Path]:
    return [p for p in where.iterdir() if p.is_dir()] if where.exists() else []


def test_destroy_then_a_fresh_deploy_of_the_same_app(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    first = make_image(home)
    assert deploy(kiln, first)[0] == 0
    refused = kiln("destroy", ok=False)  # no terminal, no --yes: nothing happens
    assert refused.exit_code != 0 and "--yes" in refused.stderr
    assert http_get(port)[0] == 200

    destroyed = json.loads(kiln("destroy", "--yes", "--json").stdout)
    assert destroyed["outcome"] == "succeeded" and destroyed["kind"] == "destroy", destroyed
    with socket.socket() as probe:  # the listener is free for anyone
        probe.bind(("127.0.0.1", port))
    status = json.loads(kiln("status", "--json").stdout)
    assert status["serving"] == 0 and status["current_image"] is None
    assert [i for i in status["instances"] if i["state"] not in ("failed", "terminated")] == []
    history = json.loads(kiln("history", "--json").stdout)
    assert [e["kind"] for e in history[:2]] == ["destroy", "deploy"]  # history is kept

    works(kiln, home, port)  # a fresh first deployment of the same app name
    assert json.loads(kiln("status", "--json").stdout)["previous_image"] is None
