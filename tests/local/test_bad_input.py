"""Each user mistake gets one clear message and leaves running instances alone."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest
from localtest import free_port, http_get, make_image, serving, wait_for, write_config

from kiln.config import load_config
from kiln.errors import AgentError, CorruptObject, ImageNotFound, ProviderError
from kiln.home import Home
from kiln.local.agent import pid_path
from kiln.local.client import agent_status, start_agent
from kiln.local.provider import LocalProvider
from kiln.providers.protocol import InstanceState


def test_nonexistent_image(provider: LocalProvider) -> None:
    with pytest.raises(ImageNotFound, match="no image img-000000000000"):
        provider.launch("web", "img-000000000000", 1)
    assert not provider.image_exists("img-000000000000")


def test_corrupted_image_fails_cleanly_and_spares_the_fleet(
    provider: LocalProvider, image: str, local_home: Home, lb_port: int
) -> None:
    (good,) = provider.launch("web", image, 1)
    serving(provider, 1)
    marker = "x = 'original-" + os.urandom(8).hex() + "'\n"
    bad = make_image(local_home, files={"app.py": "print('other')\n", "lib/util.py": marker})
    tamper(local_home.store, marker.encode(), marker.replace("original", "tampered").encode())

    with pytest.raises(CorruptObject, match=r"lib/util\.py"):
        provider.launch("web", bad, 2)
    state = provider.describe("web")
    assert state.groups == {image: 1}
    assert [i.id for i in state.live()] == [good]
    assert http_get(lb_port)[1]["instance"] == good


CRASH = "import sys; print('boom: DATABASE_URL is not set'); sys.exit(3)"


def test_app_that_exits_at_once_is_failed_with_its_log(
    provider: LocalProvider, local_home: Home
) -> None:
    crash = make_image(
        local_home,
        run=f'{sys.executable} -c "{CRASH}"',
        files={"README": "crashes\n"},
    )
    (first,) = provider.launch("web", crash, 1)

    def failed() -> bool:
        inst = next(i for i in provider.describe("web").instances if i.id == first)
        return inst.state is InstanceState.FAILED

    wait_for(failed, 60, "the crashing instance to fail")
    inst = next(i for i in provider.describe("web").instances if i.id == first)
    assert inst.exit_status == 3 and inst.details["reason"] == "exited with status 3"
    assert "boom: DATABASE_URL is not set" in provider.log_tail(first)
    time.sleep(2.0)
    # replaced from the same image, but with backoff: no tight crash loop
    assert 2 <= len(provider.describe("web").instances) <= 4


def test_listen_address_in_use(
    provider: LocalProvider, image: str, local_home: Home, tmp_path: Path, lb_port: int
) -> None:
    provider.launch("web", image, 1)
    serving(provider, 1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        other = LocalProvider(
            local_home, load_config(write_config(tmp_path / "other", taken, name="api"))
        )
        with pytest.raises(ProviderError, match=f"127.0.0.1:{taken} is already in use"):
            other.launch("api", image, 1)
    assert other.describe("api").instances == ()
    assert len(provider.describe("web").serving()) == 1
    assert http_get(lb_port)[0] == 200


def test_stale_pid_file_and_socket_are_ignored(local_home: Home) -> None:
    local_home.agent_dir.mkdir(exist_ok=True)
    pid_path(local_home).write_text("1\n")  # a live process, but not an agent
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(local_home.agent_socket))  # a socket file nobody serves
    stale.close()
    assert agent_status(local_home) is None
    status, started = start_agent(local_home)
    assert started and status["pid"] != 1
    again, started_again = start_agent(local_home)
    assert not started_again and again["pid"] == status["pid"]


def test_socket_owned_by_someone_else(local_home: Home) -> None:
    foreign = socket.socket(socket.AF_UNIX)
    foreign.bind(str(local_home.agent_socket))
    foreign.close()
    local_home.agent_socket.chmod(0o600)
    os.chown(local_home.agent_socket, 65534, 65534)
    with pytest.raises(AgentError, match="belongs to uid 65534, not to you"):
        start_agent(local_home)
    assert local_home.agent_socket.exists()  # not ours to remove


def test_missing_secret_starts_nothing(
    local_home: Home, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KILN_TEST_NOPE", raising=False)
    port = free_port()
    extra = '\n[secrets]\nAPI_TOKEN = "env:KILN_TEST_NOPE"\n'
    p = LocalProvider(local_home, load_config(write_config(tmp_path / "s", port, extra)))
    with pytest.raises(
        ProviderError, match="secret API_TOKEN: environment variable KILN_TEST_NOPE"
    ):
        p.launch("web", image, 1)
    assert p.describe("web").instances == ()


def tamper(root: Path, old: bytes, new: bytes) -> None:
    """Change stored content in place, wherever the store keeps it (loose or packed)."""
    for path in root.rglob("*"):
        if path.is_file() and old in path.read_bytes():
            path.chmod(0o644)
            path.write_bytes(path.read_bytes().replace(old, new))
            return
    raise AssertionError("content not found in the store")
