"""The agent's idle sweep never takes the listener of a fleet whose first launch is under way.

Found under load: the sweep (every 5 s, for fleets left with no group and no
instance) ran while a first launch waited for the balancer process to start
(seconds on a busy machine), found the new fleet empty, marked it idle and
told the balancer to exit. The launch then went on: two healthy instances,
'serving', and no listener (connection refused; `kiln agent status` showed no
balancer). Here the sweep is run at exactly that point of the launch, with a
real agent, balancer and instance in this process.
"""

from __future__ import annotations

import asyncio
from typing import Any

from localtest import free_port, http_get

from kiln.home import Home
from kiln.image.store import Store
from kiln.local.agent import db_path
from kiln.local.model import AgentDB, FleetSettings
from kiln.local.supervisor import Supervisor


def test_a_sweep_during_the_first_launch_leaves_the_fleet_listening(
    local_home: Home, image: str
) -> None:
    port = free_port()
    settings = FleetSettings(
        "127.0.0.1",
        port,
        health={"path": "/health", "interval": 0.1, "timeout": 5.0, "healthy_threshold": 1},
        stop_timeout=2.0,
    )

    async def scenario() -> tuple[bool, int]:
        db = AgentDB(db_path(local_home))
        sup = Supervisor(local_home, db, Store(local_home))
        listen = sup._serving

        async def listen_then_sweep(fleet: Any) -> None:
            await listen(fleet)  # the balancer is started and listens for the new fleet
            for each in list(sup.fleets.values()):  # the sweep of Supervisor._tick
                await sup._idle_if_empty(each)

        sup._serving = listen_then_sweep  # type: ignore[method-assign]
        tasks = [asyncio.create_task(sup.run()), asyncio.create_task(sup.lb.run())]  # as the agent
        try:
            ids = await sup.launch("web", settings, image, 1, True, {})
            for _ in range(1200):
                if sup.instances[ids[0]].state == "healthy":
                    break
                await asyncio.sleep(0.05)
            idle = sup.fleets["web"].idle
            try:
                status = (await asyncio.to_thread(http_get, port, "/", 30))[0]
            except ConnectionRefusedError:
                status = 0  # nothing listens
            return idle, status
        finally:
            for task in tasks:
                task.cancel()
            await sup.shutdown(stop_instances=True)
            db.close()

    idle, status = asyncio.run(scenario())
    assert not idle
    assert status == 200
