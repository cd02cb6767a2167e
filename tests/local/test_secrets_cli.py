"""Secrets never reach the disk; the agent and logs from the command line."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from localtest import Kiln, free_port, gone, http_get, serving, wait_for, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local.client import AgentClient, agent_status, start_agent
from kiln.local.provider import LocalProvider


def test_secrets_reach_instances_but_no_file(
    local_home: Home, image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "tok-" + os.urandom(12).hex()
    password = "pw-" + os.urandom(12).hex()
    secret_file = tmp_path / "secret" / "db_password"
    secret_file.parent.mkdir()
    secret_file.write_text(password + "\n")
    start_agent(local_home)  # before the variable exists: the launch must send its value
    monkeypatch.setenv("KILN_TEST_API_TOKEN", token)
    port = free_port()
    extra = (
        f'\n[secrets]\nAPI_TOKEN = "env:KILN_TEST_API_TOKEN"\nDB_PASSWORD = "file:{secret_file}"\n'
    )
    provider = LocalProvider(local_home, load_config(write_config(tmp_path / "a", port, extra)))
    (instance,) = provider.launch("web", image, 1)
    serving(provider, 1)

    status, doc = http_get(port, "/secret")
    assert status == 200
    assert doc["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert doc["file"] == password

    client = AgentClient(local_home)
    api_output = json.dumps([client.get("/v1/fleets/web"), client.get("/v1/status")])
    api_output += client.get("/metrics") + provider.log_tail(instance, 1000)
    assert token not in api_output and password not in api_output
    leaks = [
        str(path)
        for path in local_home.root.rglob("*")
        if token.encode() in (data := _read(path)) or password.encode() in data
    ]
    assert leaks == []


def _read(path: Path) -> bytes:
    """A file's bytes; nothing for a directory or a file gone since it was listed (SQLite
    removes its -wal and -journal files when a connection closes)."""
    try:
        return path.read_bytes() if path.is_file() else b""
    except FileNotFoundError:
        return b""


def test_agent_commands_and_logs(kiln: Kiln, local_home: Home, image: str, tmp_path: Path) -> None:
    result = kiln("agent", "status", ok=False)
    assert result.exit_code == 3 and "agent not running" in result.stdout

    assert "agent started (pid" in kiln("agent", "start").stdout
    assert "agent already running" in kiln("agent", "start").stdout
    status = json.loads(kiln("agent", "status", "--json").stdout)
    assert status["running"] is True and status["fleets"] == {}

    port = free_port()
    provider = LocalProvider(local_home, load_config(write_config(tmp_path / "a", port)))
    (instance,) = provider.launch("web", image, 1)
    serving(provider, 1)
    wait_for(lambda: "listening on" in provider.log_tail(instance), 60, "the app's first line")
    assert "web" in kiln("agent", "status").stdout
    assert "listening on 127.0.0.1" in kiln("logs", instance[:8]).stdout
    missing = kiln("logs", "i-nope", ok=False)
    assert missing.exit_code != 0 and "no instance 'i-nope'" in missing.stderr

    pid = provider.describe("web").instances[0].details["pid"]
    assert "stopped the agent (instances keep running)" in kiln("agent", "stop").stdout
    assert Path(f"/proc/{pid}").exists()
    kiln("agent", "start")
    assert "stopped the agent and its instances" in kiln("agent", "stop", "--all").stdout
    wait_for(lambda: gone(pid), 60, "instance stopped")
    assert kiln("agent", "stop").stdout.strip() == "agent not running"


def test_agent_run_in_the_foreground_stops_on_sigterm(local_home: Home) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "agent", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        status = wait_for(lambda: agent_status(local_home), 60, "the foreground agent")
        assert status["pid"] == proc.pid
        second = subprocess.run(
            [sys.executable, "-m", "kiln.cli", "agent", "run"], capture_output=True, text=True
        )
        assert second.returncode == 1 and "an agent already runs" in second.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not local_home.agent_socket.exists()
    finally:
        proc.kill()
        proc.wait()
