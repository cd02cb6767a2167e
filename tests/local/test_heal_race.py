"""Self-healing never starts an instance its group no longer wants.

Found by a new user: a first deployment whose instances failed their boot
gate was rolled back "to nothing" (its instances terminated, the group at 0),
yet one instance of the broken image went on running until the next deploy.
The agent had decided to replace a failed instance, then awaited (the store's
corruption check, off the loop); the rollback's terminate ran in that gap, and
the replacement was started anyway on the stale decision. Here the terminate
is run at exactly that point, with a real agent, balancer and instance.
"""

from __future__ import annotations

import asyncio
import os
import signal

from localtest import free_port

from kiln.home import Home
from kiln.image.store import Store
from kiln.local.agent import db_path
from kiln.local.model import AgentDB, FleetSettings
from kiln.local.supervisor import Supervisor


def test_a_terminate_during_the_replace_decision_leaves_nothing_running(
    local_home: Home, image: str
) -> None:
    settings = FleetSettings(
        "127.0.0.1",
        free_port(),
        health={"path": "/health", "interval": 0.1, "timeout": 5.0, "healthy_threshold": 1},
        stop_timeout=2.0,
    )

    async def scenario() -> tuple[list[str], dict[str, int], bool]:
        db = AgentDB(db_path(local_home))
        sup = Supervisor(local_home, db, Store(local_home))
        check = sup._corrupt_image
        terminated: list[bool] = []

        async def terminate_meanwhile(fleet: object, image_id: str) -> bool:
            corrupt = await check(fleet, image_id)  # type: ignore[arg-type]
            if not terminated:  # the rollback's terminate lands in the gap
                terminated.append(True)
                await sup.terminate("web", [first])
            return corrupt

        sup._corrupt_image = terminate_meanwhile  # type: ignore[method-assign,assignment]
        tasks = [asyncio.create_task(sup.run()), asyncio.create_task(sup.lb.run())]
        try:
            (first,) = await sup.launch("web", settings, image, 1, True, {})
            for _ in range(1200):
                if sup.instances[first].state == "healthy":
                    break
                await asyncio.sleep(0.05)
            os.kill(sup.instances[first].pid or 0, signal.SIGKILL)  # it dies: heal it
            for _ in range(100):  # 5 s: many ticks after the terminate
                await asyncio.sleep(0.05)
            live = [r.id for r in sup.instances.values() if r.fleet == "web" and r.live]
            return live, dict(sup.fleets["web"].groups), bool(terminated)
        finally:
            for task in tasks:
                task.cancel()
            await sup.shutdown(stop_instances=True)
            db.close()

    live, groups, terminated = asyncio.run(scenario())
    assert terminated, "the replace decision was never reached"
    assert groups == {}
    assert live == [], f"{live} started for a group that wants none"
