"""Serving survives the agent: the balancer is its own process, re-adopted, supervised.

Real agent, real instances, real load through the listener, on kept-alive
connections and on a fresh connection per request (the listener itself).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

from localtest import gone, http_get, serving, wait_for

from kiln.home import Home
from kiln.loadgen import LoadLoop
from kiln.local.agent import read_pid
from kiln.local.client import AgentClient, agent_status, start_agent, stop_agent
from kiln.local.handover import _MODULES
from kiln.local.lblink import BalancerLink
from kiln.local.provider import LocalProvider


def _loops(port: int) -> list[LoadLoop]:
    return [
        LoadLoop("127.0.0.1", port, workers=2, pause=0.002, max_seconds=120, max_errors=None),
        LoadLoop("127.0.0.1", port, workers=2, pause=0.002, max_seconds=120, max_errors=None,
                 fresh=True),
    ]  # fmt: skip


def _answers(port: int) -> bool:
    try:
        return http_get(port)[0] == 200
    except OSError:
        return False


def _fleet_requests(home: Home) -> int:
    text = AgentClient(home).get("/metrics")
    found = re.search(r'^kiln_lb_fleet_requests_total\{fleet="web"\} (\d+)$', text, re.M)
    assert found, text
    return int(found.group(1))


def test_agent_sigkill_and_restart_under_load_fail_no_request(
    provider: LocalProvider, image: str, lb_port: int, local_home: Home
) -> None:
    provider.launch("web", image, 2)
    serving(provider, 2)
    balancer = agent_status(local_home)["balancer_pid"]  # type: ignore[index]
    assert balancer and balancer != read_pid(local_home)
    loops = [loop.start() for loop in _loops(lb_port)]
    try:
        time.sleep(1.0)
        agent = read_pid(local_home)
        assert agent
        os.kill(agent, signal.SIGKILL)
        wait_for(lambda: gone(agent), 60, "the agent to be gone")
        before = sum(loop.sent for loop in loops)
        time.sleep(3.0)  # longer than the 11 s outage was a third of: nobody answers the API
        assert sum(loop.sent for loop in loops) > before + 100  # ...but requests are served

        start_agent(local_home)  # a new agent re-adopts the running balancer
        status = agent_status(local_home)
        assert status and status["balancer_pid"] == balancer
        assert status["fleets"]["web"]["listening"]
        serving(provider, 2)
        time.sleep(1.0)

        stop_agent(local_home)  # a graceful stop leaves it serving too
        time.sleep(1.0)
        assert not gone(balancer)
        start_agent(local_home)
        time.sleep(1.0)
    finally:
        for loop in loops:
            loop.stop()
    sent = sum(loop.sent for loop in loops)
    assert sent > 1000
    assert [e for loop in loops for e in loop.errors] == []
    assert sum(loop.failed for loop in loops) == 0
    assert agent_status(local_home)["balancer_pid"] == balancer  # type: ignore[index]
    # the counters live in the balancer: they count every request, across both agents
    assert _fleet_requests(local_home) >= sent


def test_a_dead_balancer_is_restarted_and_the_fleet_served_again(
    provider: LocalProvider, image: str, lb_port: int, local_home: Home
) -> None:
    provider.launch("web", image, 1)
    serving(provider, 1)
    balancer = agent_status(local_home)["balancer_pid"]  # type: ignore[index]
    os.kill(balancer, signal.SIGKILL)

    def replaced() -> bool:
        status = agent_status(local_home)
        return bool(status and status["balancer_pid"] not in (None, balancer))

    wait_for(replaced, 20, "a new balancer")
    wait_for(lambda: _answers(lb_port), 60, "the new balancer to listen")  # configured next
    with LoadLoop("127.0.0.1", lb_port, workers=1, max_seconds=30) as loop:
        wait_for(lambda: loop.sent >= 20, 20, "requests through the new balancer")
    assert loop.failed == 0, loop.errors


def test_stop_all_stops_the_balancer(
    provider: LocalProvider, image: str, lb_port: int, local_home: Home
) -> None:
    provider.launch("web", image, 1)
    serving(provider, 1)
    balancer = agent_status(local_home)["balancer_pid"]  # type: ignore[index]
    stop_agent(local_home, stop_instances=True)
    wait_for(lambda: gone(balancer), 60, "the balancer to exit")
    assert not (local_home.agent_dir / "lb.sock").exists()


def test_a_balancer_running_other_code_hands_its_sockets_over_under_load(
    provider: LocalProvider, image: str, lb_port: int, local_home: Home
) -> None:
    """What an upgrade of kiln does: the agent finds the balancer running other code.

    Then a deploy replaces every instance. The old balancer no longer learns of
    membership, so the connections it kept (wrk's, a browser's) must come over to
    the successor: before, they stayed, and once the old instances were gone every
    request on them was a 502 (a new user's run: 111,951 of 307,495)."""
    first = provider.launch("web", image, 2)
    serving(provider, 2)
    old = agent_status(local_home)["balancer_pid"]  # type: ignore[index]
    idle = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=10)
    idle.request("GET", "/")
    idle.getresponse().read()  # a kept-alive connection that then sits idle
    loops = [loop.start() for loop in _loops(lb_port)]
    try:
        time.sleep(1.0)
        link = BalancerLink(local_home, dict)
        link.code = "newer code"  # as an upgraded agent would see it

        async def upgrade() -> dict[str, Any]:
            try:
                return await link.ensure()
            finally:
                link.close()

        new = asyncio.run(upgrade())["pid"]
        assert new != old
        # the running agent reconnects to the successor and configures it
        wait_for(lambda: agent_status(local_home)["balancer_pid"] == new, 60, "the agent")  # type: ignore[index]
        # every connection left the old balancer: it exits long before its 90 s limit
        wait_for(lambda: gone(old), 20, "the old balancer to hand its connections over")
        provider.launch("web", image, 2)  # a deploy: new instances, the old ones retired
        serving(provider, 4)
        provider.terminate("web", first)
        wait_for(lambda: len(provider.describe("web").live()) == 2, 60, "the old instances")
        time.sleep(2.0)
    finally:
        for loop in loops:
            loop.stop()
        idle.close()
    assert sum(loop.sent for loop in loops) > 500
    assert [e for loop in loops for e in loop.errors] == []


def test_the_code_fingerprint_covers_every_module_the_balancer_serves_with() -> None:
    """An upgrade that changed only upstream.py (the response side) left the old balancer
    serving: the fingerprint named neither it nor stream, wsclose or challenges."""
    script = "import sys, kiln.local.lbproc; print(' '.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    serving = {m for m in loaded if m.startswith("kiln.local.")} - {"kiln.local.procs"}
    assert serving - set(_MODULES) == set()
