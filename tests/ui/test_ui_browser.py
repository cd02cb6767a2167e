"""`kiln ui` in a real headless Chromium, against a real agent and real deployments.

Screenshots land in build/ui-artifacts/ (kept by CI as artifacts, ignored by git).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2ekit import Load, app_image, free_port, kill_everything, write_app_config
from uikit import deploy_watched_live, served_ui
from webdriver import Browser, available

from kiln.home import Home
from kilntest import REPO, Kiln

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not available(), reason="chromium and chromedriver: scripts/test-deps.sh"),
]
ARTIFACTS = REPO / "build" / "ui-artifacts"


@pytest.fixture
def fleet(home: Home, tmp_path: Path) -> Iterator[tuple[Kiln, int]]:
    port = free_port()
    config = write_app_config(tmp_path / "app", port, settle="1s")
    try:
        yield Kiln(config.parent), port
    finally:
        kill_everything(home)


@pytest.fixture
def ui(fleet: tuple[Kiln, int]) -> Iterator[str]:
    """`kiln ui` as a user starts it: a real process; yields the address it printed."""
    kiln, _ = fleet
    with served_ui(kiln.cwd) as url:
        yield url


def _get(url: str, host: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_page_shows_the_fleet_live_and_a_rolled_back_deployment(
    fleet: tuple[Kiln, int], ui: str, home: Home, tmp_path: Path
) -> None:
    kiln, port = fleet
    kiln("deploy", "--image", app_image(home, "v1"))
    with Browser(tmp_path / "chromium") as browser:
        browser.go(ui)
        browser.wait_for(
            "return document.querySelectorAll('#instances tbody td.state-healthy').length === 2",
            what="two healthy instances",
        )
        assert "fleet web" in browser.js("return document.querySelector('h1').innerText")
        assert browser.js("return document.querySelectorAll('#deployments > li').length") == 1

        # a deployment under load appears on the timeline while it runs, then succeeds
        with Load(port, workers=2) as load:
            v2 = app_image(home, "v2")
            deploy_watched_live(
                browser,
                lambda: kiln("deploy", "--image", v2),
                ARTIFACTS / "deployment-running.png",
                what="the running deployment with a step under way",
            )
            browser.wait_for(
                "return document.querySelector('#traffic-desc').innerText.includes('requests/s')",
                what="the traffic sparkline",
            )
        assert load.sent > 20 and load.failed == 0, load.errors[:5]
        assert "no errors" in browser.js("return document.querySelector('#traffic-desc').innerText")

        # a rolled-back deployment shows the gate that tripped and the failing log tail
        bad = kiln("deploy", "--image", app_image(home, "exits-at-start"), ok=False)
        assert bad.exit_code != 0
        browser.wait_for(
            "return document.querySelector('#deployments > li[data-outcome=rolled-back] .gate')",
            what="the rolled-back deployment's gate",
        )
        text = browser.js(
            "return document.querySelector('#deployments > li[data-outcome=rolled-back]').innerText"
        )
        assert "gate tripped" in text and "boom: missing DATABASE_URL" in text
        browser.wait_for(  # images are re-read every 10 s
            "return document.querySelectorAll('#images tbody tr').length >= 3",
            what="the three images",
        )
        browser.screenshot(ARTIFACTS / "rolled-back.png")


def test_the_page_is_not_reachable_without_its_token_or_from_the_fleet_listener(
    fleet: tuple[Kiln, int], ui: str, home: Home
) -> None:
    kiln, port = fleet
    kiln("deploy", "--image", app_image(home, "v1"))
    base = ui.split("/?", 1)[0]
    assert _get(ui)[0] == 200
    assert _get(f"{base}/api/state")[0] == 403  # no token, no cookie
    assert _get(f"{base}/api/state?token=wrong")[0] == 403
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host
    assert _get(ui, host="evil.example")[0] == 421
    # the fleet's public listener serves the app, never the page or its data
    status, body = _get(f"http://127.0.0.1:{port}/api/state")
    assert status == 200 and '"instance"' in body and "timeline" not in body
