"""Deployments on the real local provider: real processes, real HTTP, real load.

Zero failed requests while rolling, flipping blue-green, and rolling back bad
images; status and history tell the truth afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ekit import (
    APP,
    Capacity,
    Load,
    app_image,
    free_port,
    http_get,
    kill_everything,
    write_app_config,
)

from kiln.home import Home
from kilntest import Kiln

pytestmark = pytest.mark.slow
CLI = (sys.executable, "-m", "kiln.cli")


@pytest.fixture
def site(home: Home, tmp_path: Path) -> Iterator[tuple[Kiln, int]]:
    port = free_port()
    config = write_app_config(tmp_path / "app", port)
    try:
        yield Kiln(config.parent), port
    finally:
        kill_everything(home)


def _deploy(kiln: Kiln, image: str, *args: str, ok: bool = True) -> dict[str, Any]:
    result = kiln("deploy", "--image", image, "--json", *args, ok=ok)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_rollouts_and_rollbacks_under_load(site: tuple[Kiln, int], home: Home) -> None:
    kiln, port = site
    v1, v2 = app_image(home, "v1"), app_image(home, "v2")
    assert _deploy(kiln, v1)["outcome"] == "succeeded"

    with Load(port) as load, Capacity(home, kiln.cwd / "kiln.toml") as capacity:
        load.phase = "rolling"
        rolled = _deploy(kiln, v2)
        assert rolled["outcome"] == "succeeded", rolled
        load.phase = "canary"
        canary = _deploy(kiln, v1, "--strategy", "canary", ok=False)
        assert canary["outcome"] == "succeeded", (canary.get("message"), canary.get("figures"))
        assert canary["figures"]["canary"]["canary_requests"] >= 5
        assert canary["figures"]["canary"]["canary_errors"] == 0
        load.phase = "blue-green"
        flipped = _deploy(kiln, v2, "--strategy", "blue-green")
        assert flipped["outcome"] == "succeeded", flipped
        for variant, gate in (
            ("exits-at-start", "boot"),
            ("never-healthy", "boot"),
            ("crashes-later", "stability"),
        ):
            load.phase = variant
            # never healthy: it fails once its grace is out, so this deploy gets a short one
            with _grace(kiln.cwd / "kiln.toml", "1s" if variant == "never-healthy" else None):
                bad = _deploy(kiln, app_image(home, variant), ok=False)
            assert (bad["outcome"], bad["gate"]) == ("rolled back", gate), bad
            assert bad["instance"]
        load.phase = "rollback"
        back = json.loads(kiln("rollback", "--json").stdout)
        assert back["outcome"] == "succeeded" and back["to"] == v1
    assert load.sent > 200
    assert load.failed == 0, load.errors[:5]
    assert capacity.minimum >= 2, "the fleet went below its desired healthy capacity"

    status = json.loads(kiln("status", "--json").stdout)
    assert status["current_image"] == v1 and status["serving"] == 2
    live = [i for i in status["instances"] if i["state"] in ("healthy", "running", "pending")]
    assert {i["image"] for i in live if i["in_service"]} == {v1}
    history = json.loads(kiln("history", "--json").stdout)
    outcomes = [h["outcome"] for h in history]
    assert outcomes == ["succeeded"] + ["rolled back"] * 3 + ["succeeded"] * 4
    assert history[5]["strategy"] == "canary" and history[5]["figures"]["canary"]
    assert "failed at start: exited with status 3" in history[3]["message"]
    assert "boom: missing DATABASE_URL" in history[3]["figures"]["log_tail"]
    assert "unhealthy" in history[2]["message"]  # seen failing its checks, or killed for it


@contextlib.contextmanager
def _grace(config: Path, grace: str | None) -> Iterator[None]:
    """The app's health grace is ``grace`` meanwhile (None: left as it is)."""
    before = config.read_text()
    if grace is not None:
        config.write_text(re.sub(r'(?m)^grace = ".*"$', f'grace = "{grace}"', before))
    try:
        yield
    finally:
        config.write_text(before)


def _journal_reached(conn: sqlite3.Connection, since: float, step: int) -> bool:
    """Has a deployment started after ``since`` begun its ``step``? One connection kept
    open for every look: opening one each time (2 ms apart, on a loaded CI host) made
    the kill late enough to miss a step that takes a millisecond (a switch)."""
    try:
        row = conn.execute(
            "SELECT 1 FROM deploy_journal j JOIN deploy_deployments d ON d.id = j.deployment "
            "WHERE d.started >= ? AND j.phase = 'forward' AND j.event = 'begin' "
            "AND j.step = ?",
            (since, step),
        ).fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None


@pytest.mark.parametrize("strategy", ["rolling", "blue-green"])
def test_kill_9_at_every_step_under_load(site: tuple[Kiln, int], home: Home, strategy: str) -> None:
    """SIGKILL the deployer as each step begins; 'kiln deploy --resume' finishes it.

    Every step of every plan shape: rolling's four; blue-green's launch, switch
    and retire (with keep_warm 0 no warm standby is left, so each plan is the
    long one), then its switch and retire back to a warm standby (keep_warm on:
    the retired fleet stays warm for the next deployment). It once killed
    blue-green at its first launch and then at a warm retire only.
    """
    kiln, port = site
    config = kiln.cwd / "kiln.toml"
    config.write_text(config.read_text().replace('settle = "1.5s"', "settle = 0"))
    images = [app_image(home, "v1"), app_image(home, "v2")]
    assert _deploy(kiln, images[0])["outcome"] == "succeeded"
    kills = (  # (keep_warm, step to kill at, the plan's steps)
        [("1m", n, 4) for n in range(4)]
        if strategy == "rolling"
        else [("0s", n, 3) for n in range(3)] + [("10m", 2, 3), ("10m", 0, 2), ("10m", 1, 2)]
    )
    env = {**os.environ, "KILN_HOME": str(home.root)}
    missed = 0
    journal = contextlib.closing(sqlite3.connect(home.state_db, timeout=5, isolation_level=None))
    with Load(port) as load, Capacity(home, config) as capacity, journal as conn:
        for kill_at, (keep_warm, step, length) in enumerate(kills):
            config.write_text(
                re.sub(r'(?m)^keep_warm = ".*"$', f'keep_warm = "{keep_warm}"', config.read_text())
            )
            target = images[(kill_at + 1) % 2]
            plan = kiln("deploy", "--image", target, "--strategy", strategy, "--dry-run", "--json")
            assert len(json.loads(plan.stdout)["steps"]) == length, plan.stdout
            load.phase = f"{strategy} killed at step {step}"
            since = time.time()
            output = kiln.cwd / f"deploy-{kill_at}.out"
            with output.open("wb") as out:
                proc = subprocess.Popen(
                    [*CLI, "deploy", "--image", target, "--strategy", strategy, "--json"],
                    cwd=kiln.cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                # a ceiling, not a wait: the kill comes as soon as the step begins
                deadline = time.monotonic() + 300
                while not _journal_reached(conn, since, step):
                    ended = proc.poll()
                    assert ended is None, (
                        f"deploy ended ({ended}) before step {step}:\n"
                        + (output.read_text()[-3000:])
                    )
                    assert time.monotonic() < deadline, f"step {step} not begun in 300 s"
                    time.sleep(0.002)
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
                proc.wait()
            if proc.returncode == 0:  # it finished between our look and the kill
                missed += 1
                continue
            resumed = json.loads(kiln("deploy", "--resume", "--json").stdout)
            if resumed["outcome"] == "none":  # the kill came after its last write
                missed += 1
                continue
            assert resumed["outcome"] == "succeeded" and resumed["to"] == target, resumed
            status = json.loads(kiln("status", "--json").stdout)
            warm = set((status["warm_standby"] or {}).get("instances", []))
            live = [
                i for i in status["instances"] if i["state"] in ("pending", "running", "healthy")
            ]
            assert {i["image"] for i in live if i["id"] not in warm} == {target}, status
            assert status["serving"] == 2 and status["deployment_in_progress"] is None
            assert status["lock"] is None
    assert load.failed == 0, load.errors[:5]
    assert capacity.minimum >= 2, "the fleet went below its desired healthy capacity"
    # a kill that came after the deployment's last write tests nothing, and a switch or
    # a warm retire is over within a millisecond or two of its begin: on a loaded host
    # (load 8) two such of blue-green's six were missed once; most must land
    assert missed <= len(kills) // 3, f"{missed} of {len(kills)} kills came too late"
    history = json.loads(kiln("history", "--json").stdout)
    assert [h["outcome"] for h in history] == ["succeeded"] * (len(kills) + 1)


def test_deploy_bakes_first_and_an_unchanged_app_is_a_no_op(
    site: tuple[Kiln, int], home: Home
) -> None:
    kiln, port = site
    (kiln.cwd / "app.py").write_text(APP)
    first = json.loads(kiln("deploy", "--json").stdout)
    assert first["outcome"] == "succeeded" and first["to"].startswith("img-")
    status, body = http_get(port)
    assert status == 200 and body["image"] == first["to"]
    again = json.loads(kiln("deploy", "--json").stdout)
    assert again["outcome"] == "unchanged" and again["to"] == first["to"]
    (kiln.cwd / "app.py").write_text(APP + "\n# a change is a new image\n")
    changed = json.loads(kiln("deploy", "--json").stdout)
    assert changed["outcome"] == "succeeded" and changed["from"] == first["to"]
    assert changed["to"] != first["to"]
    for size in (3, 1):
        assert json.loads(kiln("scale", str(size), "--json").stdout)["outcome"] == "succeeded"
        status = json.loads(kiln("status", "--json").stdout)
        assert status["serving"] == size and status["desired_size"] == size


def test_sigterm_stops_safely_and_says_how_to_finish(site: tuple[Kiln, int], home: Home) -> None:
    """A cancelled CI job (SIGTERM) is a Ctrl-C: journaled stop, lock released, next steps."""
    kiln, port = site
    v1, v2 = app_image(home, "v1"), app_image(home, "v2")
    assert _deploy(kiln, v1)["outcome"] == "succeeded"
    env = {**os.environ, "KILN_HOME": str(home.root)}
    since = time.time()
    journal = contextlib.closing(sqlite3.connect(home.state_db, timeout=5, isolation_level=None))
    with Load(port) as load, journal as conn:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln.cli", "deploy", "--image", v2],
            cwd=kiln.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 300  # a ceiling: the signal comes once step 0 begins
            while not _journal_reached(conn, since, 0):
                assert proc.poll() is None, "the deploy ended before step 0"
                assert time.monotonic() < deadline, "step 0 not begun in 300 s"
                time.sleep(0.01)
            time.sleep(0.3)  # inside the first batch's wait
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 130, err
        assert "kiln deploy --resume" in err and "stopped at step 1 of" in err
        status = json.loads(kiln("status", "--json").stdout)
        assert status["deployment_in_progress"]["outcome"] == "interrupted"
        assert status["lock"] is None and status["serving"] >= 2
        resumed = json.loads(kiln("deploy", "--resume", "--json").stdout)
        assert resumed["outcome"] == "succeeded" and resumed["to"] == v2
    assert load.failed == 0, load.errors[:5]
