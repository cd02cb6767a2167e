"""The page served by the local agent: on its socket, and on [provider.local] ui_listen.

A real agent, real deployments, real HTTP (over TCP and over the agent's Unix
socket) and a real headless Chromium; another user of the host is a real
throwaway account made with useradd. Screenshots land in build/ui-artifacts/.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ekit import Load, app_image, free_port, kill_everything, write_app_config
from localtest import wait_for
from uikit import deploy_watched_live
from webdriver import Browser, available

from kiln.home import Home
from kiln.local.agent import read_pid
from kilntest import REPO, Kiln

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "build" / "ui-artifacts"
OTHER_USER = "kilnuitest"


def token_path(home: Home) -> Path:
    return home.agent_dir / "ui.token"  # written down, not imported: kiln.local.uipages' place


class Fleet:
    """A fleet whose kiln.toml names a ui_listen port."""

    def __init__(self, kiln: Kiln, port: int, ui_port: int) -> None:
        self.kiln, self.port, self.ui_port = kiln, port, ui_port

    def page_url(self) -> str:
        """What a user gets from `kiln ui --json`: the agent's address with its token."""
        result = self.kiln("ui", "--json")
        data = json.loads(result.stdout)
        assert data["served_by"] == "agent", data
        url: str = data["url"]
        return url


@pytest.fixture
def fleet(home: Home, tmp_path: Path) -> Iterator[Fleet]:
    port, ui_port = free_port(), free_port()
    config = write_app_config(tmp_path / "app", port, settle="1s")
    with config.open("a") as f:
        f.write(f'ui_listen = "127.0.0.1:{ui_port}"\n')
    try:
        yield Fleet(Kiln(config.parent), port, ui_port)
    finally:
        kill_everything(home)


def _get(url: str, host: str | None = None, cookie: str | None = None) -> tuple[int, str]:
    headers = {"Host": host} if host else {}
    if cookie:
        headers["Cookie"] = cookie
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("agent", timeout=20)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _socket_get(home: Home, path: str) -> tuple[int, str, dict[str, str]]:
    conn = _UnixHTTP(home.agent_socket)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(), dict(response.getheaders())
    finally:
        conn.close()


@pytest.mark.skipif(not available(), reason="chromium and chromedriver: scripts/test-deps.sh")
def test_the_agent_serves_the_page_on_its_socket_and_its_loopback_port_live(
    fleet: Fleet, home: Home, tmp_path: Path
) -> None:
    kiln = fleet.kiln
    kiln("deploy", "--image", app_image(home, "v1"))
    url = fleet.page_url()  # kiln ui printed it and exited: the agent serves the page
    assert url.startswith(f"http://127.0.0.1:{fleet.ui_port}/ui/web/?token=")

    # on the socket: the same page and the same JSON, no token needed (the socket is 0600)
    status, page, headers = _socket_get(home, "/ui/web/")
    assert status == 200 and 'src="static/ui.js"' in page
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, body, _ = _socket_get(home, "/ui/web/api/state")
    state = json.loads(body)
    assert status == 200 and state["status"]["fleet"] == "web", state
    assert len(state["status"]["instances"]) == 2 and state["timeline"]
    assert _socket_get(home, "/ui/nope/api/state")[0] == 404

    with Browser(tmp_path / "chromium") as browser:
        browser.go(url)
        browser.wait_for(
            "return document.querySelectorAll('#instances tbody td.state-healthy').length === 2",
            what="two healthy instances",
        )
        assert "fleet web" in browser.js("return document.querySelector('h1').innerText")
        with Load(fleet.port, workers=2) as load:
            v2 = app_image(home, "v2")
            deploy_watched_live(
                browser,
                lambda: kiln("deploy", "--image", v2),
                ARTIFACTS / "agent-page-running.png",
                what="the running deployment, live over server-sent events",
            )
        assert load.sent > 20 and load.failed == 0, load.errors[:5]

        # the agent killed and started again: the open tab reconnects, its cookie still good
        pid = read_pid(home)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _dead(pid), 30, "the killed agent to be gone")
        browser.wait_for(
            "return document.querySelector('#connection').innerText !== 'live'",
            what="the page noticing the agent is gone",
        )
        kiln("status")  # starts the agent again
        shown = browser.js("return Number(document.body.dataset.version)")
        browser.wait_for(
            f"return document.querySelector('#connection').innerText === 'live' && "
            f"Number(document.body.dataset.version) > {shown}",
            what="the page live again, with updates from the new agent",
        )


@pytest.fixture
def other_user() -> Iterator[str]:
    """A throwaway account: another user of this host, removed afterwards if made here."""
    try:
        pwd.getpwnam(OTHER_USER)
        made = False
    except KeyError:
        command = ["useradd", "--no-create-home", "--shell", "/bin/false", OTHER_USER]
        subprocess.run(command, check=True)
        made = True
    try:
        yield OTHER_USER
    finally:
        if made:
            subprocess.run(["userdel", OTHER_USER], check=False)


_FETCH = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=20) as r:
        print(r.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"),
    reason="needs root and useradd to play another user of this host",
)
def test_another_user_of_the_host_cannot_read_the_page_or_its_token(
    fleet: Fleet, home: Home, other_user: str
) -> None:
    fleet.kiln("deploy", "--image", app_image(home, "v1"))
    url = fleet.page_url()
    base, token = url.split("?token=")
    assert _get(url)[0] == 200
    assert _get(f"{base}api/state")[0] == 403  # the port answers, the page does not
    assert _get(f"{base}api/state?token=wrong")[0] == 403
    assert _get(f"{base}api/state", cookie=f"kiln_ui={token[:-1]}")[0] == 403
    assert _get(f"{base}api/state", cookie=f"kiln_ui={token}")[0] == 200
    assert _get(url, host="evil.example")[0] == 421  # DNS rebinding
    assert _get(f"http://127.0.0.1:{fleet.ui_port}/ui/other/?token={token}")[0] == 404
    assert _get(f"http://127.0.0.1:{fleet.ui_port}/v1/status?token={token}")[0] == 404
    mode = token_path(home).stat().st_mode & 0o777
    assert mode == 0o600, oct(mode)

    as_other = ["runuser", "-u", other_user, "--"]
    # what that user can reach: the port, without the token (a 403) ...
    fetch = [*as_other, "/usr/bin/python3", "-c", _FETCH]
    out = subprocess.run([*fetch, f"{base}api/state"], capture_output=True, text=True)
    assert out.stdout.strip() == "403", out
    # ... never the token file, nor the agent's socket
    read = subprocess.run([*as_other, "cat", str(token_path(home))], capture_output=True, text=True)
    assert read.returncode != 0 and token not in read.stdout
    probe = (
        "import socket, sys; s = socket.socket(socket.AF_UNIX); "
        "s.connect(sys.argv[1]); print('connected')"
    )
    connect = [*as_other, "/usr/bin/python3", "-c", probe, str(home.agent_socket)]
    out = subprocess.run(connect, capture_output=True, text=True)
    assert out.returncode != 0 and "connected" not in out.stdout
    assert "PermissionError" in out.stderr, out.stderr


def test_a_non_loopback_ui_listen_is_refused_by_kiln_and_by_the_agent(
    fleet: Fleet, home: Home
) -> None:
    kiln = fleet.kiln
    kiln("deploy", "--image", app_image(home, "v1"))
    config = kiln.cwd / "kiln.toml"
    config.write_text(config.read_text().replace('ui_listen = "127.0.0.1', 'ui_listen = "0.0.0.0'))
    for args in (("ui",), ("deploy", "--image", app_image(home, "v2"))):
        result = kiln(*args, ok=False)
        assert result.exit_code == 2, result.output
        assert "ui_listen: '0.0.0.0:" in result.stderr and "not a loopback address" in result.stderr
        assert "Traceback" not in result.output
    # a client that skips kiln.toml's check meets the agent's
    settings = {"listen_host": "127.0.0.1", "listen_port": fleet.port, "ui_listen": "0.0.0.0:80"}
    conn = _UnixHTTP(home.agent_socket)
    conn.request("POST", "/v1/fleets/web/settings", body=json.dumps({"settings": settings}))
    response = conn.getresponse()
    error = json.loads(response.read())["error"]
    assert response.status == 400 and error["type"] == "ConfigError", error
    assert "not a loopback address" in error["message"] and error["hint"]
    listening = json.loads(_socket_get(home, "/v1/ui")[1])["listening"]
    assert list(listening) == [f"127.0.0.1:{fleet.ui_port}"]  # still the one it had


def _raw(port: int, head: str) -> tuple[int, str]:
    """One request as bytes on the wire, so Host and the request target are ours to choose."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.decode(errors="replace").partition("\r\n")
    return int(status_line.split()[1]), rest


AGENT_MARKS = ("timeline", "uptime_seconds", "kiln_instances", "<title>kiln", "listening", "data: ")


def test_the_fleets_public_listener_never_reaches_the_agent_or_its_page(
    fleet: Fleet, home: Home
) -> None:
    fleet.kiln("deploy", "--image", app_image(home, "v1"))
    url = fleet.page_url()
    token = url.split("?token=")[1]
    assert _get(url)[0] == 200  # the page is served: on its own port
    assert _socket_get(home, "/ui/web/api/state")[0] == 200  # and on the agent's socket

    ui = f"127.0.0.1:{fleet.ui_port}"
    paths = [
        "/ui/web/",
        f"/ui/web/?token={token}",
        f"/ui/web/api/state?token={token}",
        f"/ui/web/events?token={token}",
        "/v1/status",
        "/v1/ui",
        "/v1/fleets/web/series",
        "/metrics",
    ]
    targets = [*paths, f"http://{ui}/ui/web/api/state?token={token}", "http://agent/v1/ui"]
    hosts = [f"127.0.0.1:{fleet.port}", ui, f"localhost:{fleet.ui_port}", "agent", "localhost"]
    seen: dict[str, Any] = {}
    for target in targets:
        for host in hosts:
            head = (
                f"GET {target} HTTP/1.1\r\nHost: {host}\r\nCookie: kiln_ui={token}\r\n"
                "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            status, rest = _raw(fleet.port, head)
            seen[f"{target} Host:{host}"] = status
            assert not any(mark in rest for mark in AGENT_MARKS), (target, host, rest[:300])
            # the app answered (it echoes its instance), or the balancer refused the request
            assert (status == 200 and '"instance"' in rest) or status in (400, 404, 421), (
                target,
                host,
                status,
                rest[:300],
            )
    assert any(s == 200 for s in seen.values()), seen


def test_the_token_is_private_kept_across_restarts_and_replaced_when_loose(home: Home) -> None:
    from kiln.local.uipages import ensure_token

    home.agent_dir.mkdir(mode=0o700, exist_ok=True)
    token = ensure_token(home)
    assert len(token) >= 32 and token_path(home).stat().st_mode & 0o777 == 0o600
    assert ensure_token(home) == token  # an open tab's cookie survives an agent restart
    token_path(home).chmod(0o644)  # someone else may have read it: never trusted again
    fresh = ensure_token(home)
    assert fresh != token and token_path(home).stat().st_mode & 0o777 == 0o600


def test_pages_start_when_asked_stop_when_idle_and_listen_where_fleets_say(home: Home) -> None:
    import asyncio
    import time

    from aiohttp import web

    from kiln.local.model import FleetSettings
    from kiln.local.uipages import IDLE, FleetPages

    home.ensure()
    home.agent_dir.mkdir(mode=0o700, exist_ok=True)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    free, taken, v6 = free_port(), busy.getsockname()[1], free_port()
    fleets = {
        "web": FleetSettings("127.0.0.1", 1, ui_listen=f"127.0.0.1:{free}"),
        "api": FleetSettings("127.0.0.1", 2, ui_listen=f"127.0.0.1:{taken}"),
        "six": FleetSettings("127.0.0.1", 3, ui_listen=f"[::1]:{v6}"),
    }

    async def scenario() -> None:
        pages = FleetPages(home, lambda: fleets)
        with pytest.raises(web.HTTPNotFound):
            pages.collector("nope")
        collector = pages.collector("web")
        assert pages.collector("web") is collector  # one per fleet
        await collector.first()  # no agent here: the page shows why, it does not fail
        assert collector.snapshot.data["errors"], collector.snapshot.data
        # it read in the pages' own threads, never in those the agent launches instances in
        assert any(t.name.startswith("kiln-page") for t in threading.enumerate())
        await pages.tick()
        described = pages.describe()["listening"]
        assert list(described[f"127.0.0.1:{free}"]["urls"]) == ["web"]
        assert "Address already in use" in described[f"127.0.0.1:{taken}"]["error"]
        six = described[f"[::1]:{v6}"]["urls"]["six"]  # IPv6 loopback: brackets, Host and all
        assert six.startswith(f"http://[::1]:{v6}/ui/six/?token=")
        status, body = await asyncio.to_thread(_get, six.replace("/?", "/api/state?"))
        assert status == 200 and json.loads(body)["app"] == "six", body
        assert (await asyncio.to_thread(_get, six, f"[::1]:{free}"))[0] == 421
        collector.watching, collector.asked = 1, time.monotonic() - IDLE - 1
        await pages.tick()
        assert "web" in pages.collectors  # a page is open: it keeps reading
        collector.watching = 0
        await pages.tick()
        assert "web" not in pages.collectors and collector.closed  # nobody looks: it stops
        del fleets["web"]
        await pages.tick()  # no fleet names the address any more: the port is free again
        with socket.socket() as again:
            again.bind(("127.0.0.1", free))
        await pages.close()

    try:
        asyncio.run(scenario())
    finally:
        busy.close()


def test_kiln_ui_says_why_the_agent_does_not_serve_the_page_and_a_restart_keeps_it(
    fleet: Fleet, home: Home
) -> None:
    kiln = fleet.kiln
    result = kiln("ui", ok=False)  # ui_listen is set, but nothing was deployed with it yet
    assert result.exit_code == 1 and "does not serve fleet web's page" in result.stderr
    assert "next 'kiln deploy'" in result.stderr and "Traceback" not in result.output

    with socket.socket() as busy:  # another program holds the port: the deploy still works
        busy.bind(("127.0.0.1", fleet.ui_port))
        busy.listen()
        kiln("deploy", "--image", app_image(home, "v1"))
        result = kiln("ui", ok=False)
        assert result.exit_code == 1, result.output
        assert "cannot serve fleet web's page" in result.stderr
        assert "Address already in use" in result.stderr
    url = fleet.page_url()  # the port is free again: the agent takes it within a second
    assert _get(url)[0] == 200

    # an agent killed and started again serves the same address, token and all
    pid = read_pid(home)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _dead(pid), 30, "the killed agent to be gone")
    assert json.loads(kiln("status", "--json").stdout)["fleet"] == "web"  # starts the agent
    assert fleet.page_url() == url
    status, body = _get(url.replace("/?token=", "/api/state?token="))
    assert status == 200 and json.loads(body)["status"]["fleet"] == "web"


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet: either way its lock and listeners are closed."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
