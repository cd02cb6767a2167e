"""The load balancer with real instances: routing, headers, streaming, draining."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
from pathlib import Path

from localtest import http_get, in_flight, serving, wait_for, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local.client import AgentClient
from kiln.local.provider import LocalProvider
from kiln.providers.protocol import InstanceState


def test_launch_routes_to_every_healthy_instance(
    provider: LocalProvider, image: str, lb_port: int, local_home: Home
) -> None:
    ids = provider.launch("web", image, 2)
    assert serving(provider, 2)
    state = provider.describe("web")
    assert state.endpoint == f"http://127.0.0.1:{lb_port}"
    assert state.groups == {image: 2}
    for inst in state.instances:
        assert inst.image == image and inst.in_service and inst.state is InstanceState.HEALTHY
        assert isinstance(inst.details["pid"], int) and inst.address
        assert {"pending", "running", "healthy"} <= set(inst.details["times"])

    seen = set()
    for _ in range(6):
        status, doc = http_get(lb_port)
        assert status == 200
        assert doc["xff"] == "127.0.0.1" and doc["proto"] == "http"
        assert doc["greeting"] == "hello" and doc["image"] == image
        seen.add(doc["instance"])
    assert seen == set(ids)

    stats = provider.stats("web")
    assert sum(s.requests for s in stats.values()) == 6
    assert all(s.errors == 0 and s.p99_seconds is not None for s in stats.values())

    metrics = AgentClient(local_home).get("/metrics")
    assert 'kiln_instances{fleet="web",state="healthy"} 2' in metrics
    assert 'kiln_lb_fleet_requests_total{fleet="web"} 6' in metrics
    assert f'kiln_lb_instance_request_duration_seconds_bucket{{fleet="web",instance="{ids[0]}"' in (
        metrics
    )
    assert oct(local_home.agent_socket.stat().st_mode & 0o777) == "0o600"


def test_bodies_stream_both_ways(provider: LocalProvider, image: str, lb_port: int) -> None:
    provider.launch("web", image, 1)
    serving(provider, 1)
    body = os.urandom(3 * 1024 * 1024)  # above the replay limit: streamed, not held
    conn = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=10)
    conn.request("POST", "/upload", body=body, headers={"X-Forwarded-For": "10.0.0.9"})
    doc = json.loads(conn.getresponse().read())
    assert doc["size"] == len(body) and doc["sha256"] == hashlib.sha256(body).hexdigest()
    # the same keep-alive client connection goes on working
    conn.request("GET", "/", headers={"X-Forwarded-For": "10.0.0.9"})
    # (no trusted_proxies: a client's own X-Forwarded-For is replaced, never extended)
    assert json.loads(conn.getresponse().read())["xff"] == "127.0.0.1"
    # a chunked upload of unknown length: streamed through, framing intact
    pieces = [os.urandom(n) for n in (1, 70_000, 3000)]
    conn.request("POST", "/chunked", body=iter(pieces), encode_chunked=True)
    doc = json.loads(conn.getresponse().read())
    whole = b"".join(pieces)
    assert doc["size"] == len(whole) and doc["sha256"] == hashlib.sha256(whole).hexdigest()
    conn.close()


def test_membership_changes_and_503(provider: LocalProvider, image: str, lb_port: int) -> None:
    blue = provider.launch("web", image, 1)
    green = provider.launch("web", image, 1, in_service=False)
    serving(provider, 1)
    wait_for(lambda: provider.describe("web").live()[1].healthy, 60, "green healthy")
    assert {http_get(lb_port)[1]["instance"] for _ in range(4)} == set(blue)

    provider.set_in_service("web", add=green, remove=blue)
    assert {http_get(lb_port)[1]["instance"] for _ in range(4)} == set(green)

    provider.set_in_service("web", add=[], remove=green)
    status, doc = http_get(lb_port)
    assert status == 503 and "no healthy instance" in doc["text"]


def test_terminate_drains_in_flight_requests(
    provider: LocalProvider, image: str, lb_port: int, local_home: Home
) -> None:
    ids = provider.launch("web", image, 1)
    serving(provider, 1)
    results: list[int] = []
    slow = threading.Thread(
        target=lambda: results.append(http_get(lb_port, "/slow?s=2", timeout=60)[0])
    )
    slow.start()
    # in flight once the balancer has sent it (a 0.3 s sleep was too short under load)
    wait_for(lambda: in_flight(local_home, ids[0]), 60, "the slow request in flight")
    started = time.monotonic()
    provider.terminate("web", ids)
    took = time.monotonic() - started
    slow.join(60)
    assert results == [200]  # it finished, not cut off
    assert 0.5 < took < 4.5  # waited for it, not for the whole drain time
    state = provider.describe("web")
    assert state.groups == {}
    (inst,) = state.instances
    assert inst.state is InstanceState.TERMINATED and not inst.in_service
    assert "draining" in inst.details["times"]
    assert not any(i.live for i in state.instances)


def test_drain_is_capped_by_fleet_drain(
    local_home: Home, image: str, tmp_path: Path, lb_port: int
) -> None:
    config = (
        write_config(tmp_path / "short", lb_port)
        .read_text()
        .replace('drain = "5s"', 'drain = "400ms"')
    )
    (tmp_path / "short" / "kiln.toml").write_text(config)
    provider = LocalProvider(local_home, load_config(tmp_path / "short" / "kiln.toml"))
    ids = provider.launch("web", image, 1)
    serving(provider, 1)
    results: list[object] = []

    def slow() -> None:
        try:
            results.append(http_get(lb_port, "/slow?s=30", timeout=60)[0])
        except OSError as exc:  # cut off: the instance was stopped after the drain time
            results.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    wait_for(lambda: in_flight(local_home, ids[0]), 60, "the slow request in flight")
    started = time.monotonic()
    provider.terminate("web", ids)
    # the drain time, then SIGTERM: not the 30 s request (10 s: room for a busy machine)
    assert time.monotonic() - started < 10.0
    thread.join(60)
    assert results and results[0] != 200
