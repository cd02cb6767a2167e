"""Self-healing: instances killed under load, unhealthy ones, and the agent itself."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
from pathlib import Path

from localtest import http_get, serving, wait_for

from kiln.home import Home
from kiln.local.agent import read_pid
from kiln.local.provider import LocalProvider
from kiln.providers.protocol import InstanceState


class Load:
    """Keep-alive clients hammering the load balancer, counting what fails."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.ok = 0
        self.failed: list[str] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set():
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    self.failed.append(f"{response.status} {body[:80]!r}")
                else:
                    self.ok += 1
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()


def test_sigkill_under_load_costs_no_request_and_heals(
    provider: LocalProvider, image: str, lb_port: int
) -> None:
    victim, survivor = provider.launch("web", image, 2)
    serving(provider, 2)
    pid = provider.describe("web").instances[0].details["pid"]
    with Load(lb_port) as load:
        time.sleep(0.7)
        os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)

        def healed() -> bool:
            fresh = [i for i in provider.describe("web").serving() if i.id != survivor]
            return bool(fresh) and fresh[0].id != victim

        wait_for(healed, 60, "a healthy replacement in service")
        time.sleep(0.5)
    assert load.failed == [], load.failed[:5]
    assert load.ok > 100
    state = provider.describe("web")
    dead = next(i for i in state.instances if i.id == victim)
    assert dead.state is InstanceState.FAILED and dead.exit_status == -signal.SIGKILL
    assert "SIGKILL" in dead.details["reason"]
    replacement = dead.replaced_by
    assert {i.id for i in state.serving()} == {survivor, replacement}
    assert state.groups == {image: 2}
    # the replacement takes traffic
    assert replacement in {http_get(lb_port)[1]["instance"] for _ in range(6)}
    # the id the engine knows stays meaningful: terminating it ends its replacement
    provider.terminate("web", [victim])
    state = provider.describe("web")
    assert state.groups == {image: 1}
    assert [i.id for i in state.live()] == [survivor]
    assert next(i for i in state.instances if i.id == replacement).state is InstanceState.TERMINATED


def test_unhealthy_instance_is_replaced(provider: LocalProvider, image: str) -> None:
    (first,) = provider.launch("web", image, 1)
    serving(provider, 1)
    inst_dir = Path(provider.describe("web").instances[0].details["dir"])
    (inst_dir / "unhealthy").write_text("")  # its /health now answers 500

    def replaced() -> bool:
        state = provider.describe("web")
        return any(i.id != first for i in state.serving())

    wait_for(replaced, 60, "replacement of the unhealthy instance")
    old = next(i for i in provider.describe("web").instances if i.id == first)
    assert old.state is InstanceState.FAILED
    assert "answered 500" in old.details["reason"]
    assert "unhealthy" in old.details["times"]


def test_agent_sigkill_then_restart_readopts(
    provider: LocalProvider, image: str, lb_port: int, local_home: Home
) -> None:
    ids = provider.launch("web", image, 2)
    serving(provider, 2)
    before = {i.id: i.details["pid"] for i in provider.describe("web").instances}
    agent_pid = read_pid(local_home)
    assert agent_pid
    os.kill(agent_pid, signal.SIGKILL)
    wait_for(lambda: refused(local_home.agent_socket), 60, "the dead agent's socket to refuse")
    for pid in before.values():
        assert Path(f"/proc/{pid}").exists()  # instances outlive the agent

    state = provider.describe("web")  # starts a new agent, which re-adopts
    assert read_pid(local_home) != agent_pid
    assert {i.id: i.details["pid"] for i in state.instances} == before
    assert {i.id for i in state.serving()} == set(ids)
    assert state.groups == {image: 2}
    assert {http_get(lb_port)[1]["instance"] for _ in range(6)} == set(ids)

    # re-adopted instances are not children of the new agent; their death is still seen
    os.kill(before[ids[0]], signal.SIGKILL)
    wait_for(lambda: len(provider.describe("web").serving()) == 2
             and ids[0] not in {i.id for i in provider.describe("web").serving()}, 15,
             "replacement of a re-adopted instance")  # fmt: skip
    live = provider.describe("web").live()
    assert len(live) == 2  # nothing duplicated


def refused(path: Path) -> bool:
    """Connecting is refused: every thread of the killed agent is gone with its fds."""
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return True
    return False
