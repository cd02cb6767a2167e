"""Traffic the agent keeps: a deployment nobody watched still shows what it served.

The unit tests pin the arithmetic (counter deltas, resets, which buckets belong
to a deployment); the end-to-end test runs a real agent and a real rolling
deployment under load with no page open, then opens ``kiln ui`` and reads the
deployment's traffic from the page's own JSON.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import Load, app_image, free_port, kill_everything, write_app_config
from localtest import wait_for
from uikit import served_ui

from kiln.config import load_config
from kiln.home import Home
from kiln.local.provider import LocalProvider
from kiln.local.series import Sampler
from kiln.ui.server import Sample, _traffic_during
from kilntest import Kiln


def test_the_sampler_turns_counter_totals_into_deltas_and_survives_resets() -> None:
    sampler = Sampler()
    assert sampler.sample("web", 100.0, {"i-1": {"requests": 10, "errors_5xx": 1}}) is None
    bucket = sampler.sample(
        "web",
        105.0,
        {"i-1": {"requests": 25, "errors_5xx": 1, "failures": 2}, "i-2": {"requests": 4}},
    )
    assert bucket is not None
    assert (bucket.at, bucket.seconds, bucket.requests, bucket.errors) == (105.0, 5.0, 19, 2)
    # the balancer restarted: i-1 counts from zero again, never a negative
    bucket = sampler.sample("web", 110.0, {"i-1": {"requests": 3}, "i-2": {"requests": 4}})
    assert bucket is not None and (bucket.requests, bucket.errors) == (3, 0)


def test_a_deployment_gets_the_traffic_of_the_buckets_that_overlap_it() -> None:
    samples = [Sample(at, 5.0, 50, 1 if at == 115.0 else 0) for at in (105.0, 110.0, 115.0, 120.0)]
    during = _traffic_during({"started": 107.0, "finished": 112.0}, samples, now=130.0)
    assert during == {"requests": 100, "errors": 1, "covered": True}
    running = _traffic_during({"started": 111.0, "finished": None}, samples, now=130.0)
    assert running == {"requests": 100, "errors": 1, "covered": True}
    older = _traffic_during({"started": 90.0, "finished": 104.0}, samples, now=130.0)
    assert older == {"requests": 50, "errors": 0, "covered": False}
    assert _traffic_during({"started": 200.0, "finished": 210.0}, samples, now=230.0) is None


@pytest.fixture
def fleet(home: Home, tmp_path: Path) -> Iterator[tuple[Kiln, int]]:
    port = free_port()
    config = write_app_config(tmp_path / "app", port, settle="1s")
    try:
        yield Kiln(config.parent), port
    finally:
        kill_everything(home)


@pytest.mark.slow
def test_a_deployment_nobody_watched_shows_its_traffic_when_the_page_opens(
    fleet: tuple[Kiln, int], home: Home
) -> None:
    kiln, port = fleet
    provider = LocalProvider(home, load_config(kiln.cwd / "kiln.toml"))

    def bucket_after(moment: float) -> None:
        """Wait for the agent to store a bucket ending after ``moment`` (every 5 s, or
        later on a busy machine: a sleep of 6 s missed it)."""
        wait_for(
            lambda: any(row[0] > moment for row in provider.traffic("web", moment - 60)),
            120,
            "the agent's next traffic bucket",
        )

    kiln("deploy", "--image", app_image(home, "v1"))
    bucket_after(time.time())  # sampled twice: later buckets have deltas
    with Load(port, workers=2) as load:
        kiln("deploy", "--image", app_image(home, "v2"))
        deployed = time.time()
        bucket_after(deployed)  # one more bucket after the deployment ends
    assert load.sent > 20 and load.failed == 0, load.errors[:5]
    bucket_after(time.time())  # the last bucket with load in it is written

    opened = time.time()
    with served_ui(kiln.cwd) as url:
        base, token = url.split("/?token=")
        state: dict = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            request = urllib.request.Request(f"{base}/api/state?token={token}")
            with urllib.request.urlopen(request, timeout=10) as response:
                state = json.loads(response.read())
            if state.get("timeline"):
                break
            time.sleep(1)

    deploys = [d for d in state["timeline"] if d["to"] and d["outcome"] == "succeeded"]
    latest = deploys[0]  # newest first: the one that ran under load
    traffic = latest["traffic"]
    assert traffic is not None and traffic["covered"], traffic
    assert traffic["errors"] == 0
    # the buckets overlapping the deployment hold most of what the load sent during it
    assert 0 < traffic["requests"] <= load.sent + 50, (traffic, load.sent)
    assert traffic["requests"] >= load.sent // 3, (traffic, load.sent)
    # the sparkline starts before the deployment ended, so before the page opened:
    # the agent kept it (a deployment can take less than one 5 s bucket, so no more)
    assert state["series"] and state["series"][0][0] < deployed < opened
