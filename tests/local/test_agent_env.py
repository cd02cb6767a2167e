"""Secrets stay out of the agent's environment (issue 14.3).

Any process of the agent's user (every instance, without isolate) can read
/proc/<agent>/environ: the agent must not inherit the environment of the
command that started it. Secrets reach it over its 0600 socket, and a
restarted agent takes them back from the running instances.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import threading
from pathlib import Path

import pytest
from localtest import free_port, gone, http_get, serving, wait_for, write_config

from kiln.config import load_config
from kiln.errors import AgentError, ProviderError
from kiln.home import Home
from kiln.local.client import AgentClient, agent_status, start_agent
from kiln.local.provider import LocalProvider


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode().partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


@pytest.mark.slow
def test_the_agent_holds_no_secret_and_none_of_the_callers_variables(
    local_home: Home, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok-" + os.urandom(12).hex()
    unrelated = "unrelated-" + os.urandom(8).hex()
    monkeypatch.setenv("KILN_TEST_API_TOKEN", token)
    monkeypatch.setenv("KILN_TEST_UNRELATED", unrelated)
    port = free_port()
    extra = '\n[secrets]\nAPI_TOKEN = "env:KILN_TEST_API_TOKEN"\n'
    provider = LocalProvider(local_home, load_config(write_config(tmp_path / "a", port, extra)))
    provider.launch("web", image, 1)  # starts the agent from this environment
    serving(provider, 1)
    expected = hashlib.sha256(token.encode()).hexdigest()
    assert http_get(port, "/secret")[1]["sha256"] == expected

    agent = int(agent_status(local_home)["pid"])  # type: ignore[index]
    env = _environ(agent)
    assert token not in "\0".join(f"{k}={v}" for k, v in env.items())
    assert "KILN_TEST_API_TOKEN" not in env and "KILN_TEST_UNRELATED" not in env
    assert unrelated not in Path(f"/proc/{agent}/environ").read_text(errors="replace")
    assert env["KILN_HOME"] == str(local_home.root)
    assert set(env) <= {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ"} | {
        "TMPDIR",
        "PYTHONPATH",
        "KILN_HOME",
        "KILN_PURE",
    }

    # A restarted agent has lost the values it held in memory; the running
    # instance still carries them, so self-healing keeps the secret.
    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: gone(agent), 60, "the agent to die")
    monkeypatch.delenv("KILN_TEST_API_TOKEN")
    start_agent(local_home)
    (old,) = provider.describe("web").live()
    os.killpg(int(old.details["pid"]), signal.SIGKILL)
    wait_for(
        lambda: [i for i in provider.describe("web").serving() if i.id != old.id],
        30,
        "a replacement serving",
    )
    assert http_get(port, "/secret")[1]["sha256"] == expected


def test_a_missing_secret_fails_in_the_command_before_the_agent_is_asked(
    local_home: Home, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KILN_TEST_NOT_SET", raising=False)
    extra = '\n[secrets]\nAPI_TOKEN = "env:KILN_TEST_NOT_SET"\n'
    config = load_config(write_config(tmp_path / "a", free_port(), extra))
    with pytest.raises(ProviderError, match="environment variable KILN_TEST_NOT_SET is not set"):
        LocalProvider(local_home, config).launch("web", image, 1)
    assert agent_status(local_home) is None  # nothing was started, nothing changed


def test_an_agent_dying_under_a_status_call_counts_as_not_running(local_home: Home) -> None:
    """A SIGKILLed agent's last thread can hold its socket a moment after the process
    shows as a zombie: a connection then is accepted and reset. Not an error for a
    status probe (a new agent is started); a POST is never silently retried."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(local_home.agent_socket))
    server.listen()

    def reset_all() -> None:
        for _ in range(2):
            conn, _addr = server.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=reset_all, daemon=True)
    thread.start()
    try:
        assert agent_status(local_home) is None
        with pytest.raises(AgentError, match="did not answer POST"):
            AgentClient(local_home).post("/v1/shutdown", {})
    finally:
        thread.join(5)
        server.close()
        local_home.agent_socket.unlink(missing_ok=True)
