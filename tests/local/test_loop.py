"""Nothing blocks the agent's event loop: every fleet's load balancer runs on it.

Real agents, real instances, real HTTP through a second fleet's listener
while the first one does the file-tree and database work that used to run
on the agent's loop (issue 15: scaling one fleet down froze every other
fleet's load balancer for seconds), and the agent itself answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from localtest import free_port, make_image, many_files, serving, wait_for, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.image.store import Store
from kiln.loadgen import LoadLoop
from kiln.local.agent import db_path
from kiln.local.client import AgentClient
from kiln.local.model import AgentDB, FleetSettings
from kiln.local.provider import LocalProvider
from kiln.local.supervisor import Supervisor
from kiln.local.watchdog import LoopWatchdog

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def through(port: int) -> Iterator[LoadLoop]:
    """Keep-alive GETs through a fleet's listener, every latency kept."""
    load = LoadLoop("127.0.0.1", port, workers=2, pause=0.01, max_errors=None, max_seconds=300)
    with load:
        yield load


def second_fleet(home: Home, tmp_path: Path) -> tuple[LocalProvider, int]:
    port = free_port()
    config = write_config(tmp_path / "b", port, name="b")
    return LocalProvider(home, load_config(config)), port


def test_scaling_a_many_file_fleet_down_never_stalls_another_fleet(
    provider: LocalProvider, local_home: Home, tmp_path: Path
) -> None:
    big = make_image(local_home, files=many_files(3000), packed=True)
    other, b_port = second_fleet(local_home, tmp_path)
    other.launch("b", make_image(local_home, app="b"), 1)
    serving(other, 1, "b")
    ids = provider.launch("web", big, 6)
    wait_for(lambda: len(provider.describe("web").serving()) == 6, 120, "6 instances of A")

    with through(b_port) as load:
        time.sleep(0.5)
        provider.terminate("web", ids[:3])  # what `kiln scale 3` asks of the agent
        time.sleep(1.5)  # the directories are removed after the processes stop
    assert load.failed == 0, load.errors[:5]
    assert load.sent > 50
    worst = max(load.latencies)
    assert worst < 1.0, f"a request through fleet b took {worst:.3f}s while fleet A scaled down"
    assert len(provider.describe("web").live()) == 3


def test_a_locked_agent_database_stalls_no_fleet(
    provider: LocalProvider, image: str, local_home: Home, tmp_path: Path
) -> None:
    # Someone holds the agent's database (a backup, `sqlite3 agent.db` left open):
    # the agent's writes wait for it on their own thread, the load balancers go on.
    other, b_port = second_fleet(local_home, tmp_path)
    other.launch("b", make_image(local_home, app="b"), 1)
    serving(other, 1, "b")
    holder = sqlite3.connect(db_path(local_home), isolation_level=None, timeout=10)
    launched: list[Any] = []
    with through(b_port) as load, AgentPing(local_home) as agent:
        time.sleep(0.3)
        holder.execute("BEGIN EXCLUSIVE")
        launcher = threading.Thread(
            target=lambda: launched.append(_try(lambda: provider.launch("web", image, 1)))
        )
        launcher.start()
        time.sleep(3.0)
        holder.execute("COMMIT")
        launcher.join(60)
        time.sleep(0.3)
    holder.close()
    assert load.failed == 0, load.errors[:5]
    worst = max(load.latencies)
    assert worst < 1.0, f"a request through fleet b took {worst:.3f}s while agent.db was locked"
    assert agent.worst < 1.0, (
        f"the agent took {agent.worst:.3f}s to answer while agent.db was locked"
    )
    assert isinstance(launched[0], list), launched  # the launch waited, then succeeded
    serving(provider, 1)


class AgentPing:
    """Asks the agent for its status every 50 ms, keeping the slowest answer."""

    def __init__(self, home: Home) -> None:
        self.client = AgentClient(home)
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AgentPing:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            started = time.monotonic()
            self.client.get("/v1/status", timeout=30)
            self.worst = max(self.worst, time.monotonic() - started)


def _try(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return exc


def test_loop_lag_is_on_metrics(provider: LocalProvider, image: str) -> None:
    provider.launch("web", image, 1)
    serving(provider, 1)
    text = AgentClient(provider.home).get("/metrics")
    assert 'kiln_agent_loop_lag_seconds_bucket{le="0.05"}' in text
    assert "kiln_agent_loop_lag_max_seconds " in text
    assert "kiln_agent_loop_stalls_total " in text


def test_watchdog_reports_a_blocked_loop(caplog: pytest.LogCaptureFixture) -> None:
    watchdog = LoopWatchdog(interval=0.02)

    async def scenario() -> None:
        task = asyncio.create_task(watchdog.run())
        await asyncio.sleep(0.1)
        time.sleep(0.3)  # what a synchronous rmtree on the loop does
        await asyncio.sleep(0.1)
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="kiln.agent"):
        asyncio.run(scenario())
    assert 0.25 < watchdog.worst < 1.0
    assert watchdog.stalls >= 1
    assert any("event loop stalled" in r.getMessage() for r in caplog.records)
    # a loaded machine may stall the loop once more on its own: the count is what was seen
    assert f"kiln_agent_loop_stalls_total {watchdog.stalls}" in watchdog.metrics()


def test_slow_directory_removal_happens_off_the_loop(
    local_home: Home, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that takes its time removing a tree (the issue saw 7 s): the agent
    # must not wait for it on the loop. The agent runs in this process here so
    # the slowness can be injected at the file-system edge.
    real_rmtree = shutil.rmtree

    def slow_rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(local_home.instances) in str(path):
            time.sleep(1.0)
        real_rmtree(path, *args, **kwargs)

    port = free_port()
    settings = FleetSettings(
        "127.0.0.1",
        port,
        health={"path": "/health", "interval": 0.1, "timeout": 1.0, "healthy_threshold": 1},
        stop_timeout=2.0,
    )

    async def scenario() -> float:
        db = AgentDB(db_path(local_home))
        sup = Supervisor(local_home, db, Store(local_home))
        watchdog = LoopWatchdog(interval=0.02)
        watching = asyncio.create_task(watchdog.run())
        try:
            ids = await sup.launch("web", settings, image, 1, True, {})
            for _ in range(200):
                if sup.instances[ids[0]].state == "healthy":
                    break
                await asyncio.sleep(0.05)
            monkeypatch.setattr(shutil, "rmtree", slow_rmtree)
            watchdog.worst = 0.0
            await sup.terminate("web", ids)
            await asyncio.sleep(1.5)
            assert not Path(sup.instances[ids[0]].dir).exists()
            return watchdog.worst
        finally:
            watching.cancel()
            await sup.shutdown(stop_instances=True)
            db.close()

    worst = asyncio.run(scenario())
    assert worst < 0.5, f"the loop stalled {worst:.2f}s while an instance directory was removed"
