"""Talking to the agent: HTTP over its Unix socket, starting it when needed."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from kiln import errors
from kiln.errors import AgentError, KilnError
from kiln.home import Home
from kiln.local.agent import check_socket_owner, log_path, read_pid
from kiln.local.codeid import kiln_code
from kiln.local.procs import log_tail, start_time

START_TIMEOUT = 30.0
# All the agent takes from the environment of the command that starts it: never
# a secret, never the caller's other variables (any same-user process can read
# /proc/<agent>/environ). Secrets reach the agent over its socket instead.
AGENT_ENV = (
    *("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"),
    "KILN_PURE",  # the balancer runs its hot path as Python source (kiln.local.compiled)
)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("agent", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentNotRunning(AgentError):
    """Nobody answers on the socket (a stale socket file counts as nobody)."""


class AgentClient:
    """JSON calls to the agent; with ``autostart``, an agent that is gone is started again."""

    def __init__(self, home: Home, *, autostart: bool = False) -> None:
        self.home = home
        self.autostart = autostart

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 300.0) -> Any:
        try:
            return self._request(method, path, body, timeout)
        except AgentNotRunning:
            if not self.autostart:
                raise
        start_agent(self.home)  # nothing was sent: a retry cannot do anything twice
        return self._request(method, path, body, timeout)

    def _request(self, method: str, path: str, body: Any, timeout: float) -> Any:
        check_socket_owner(self.home.agent_socket)
        conn = _UnixConnection(str(self.home.agent_socket), timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            try:
                conn.request(method, path, body=payload, headers=headers)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise AgentNotRunning(f"no agent answers on {self.home.agent_socket}") from exc
            response = conn.getresponse()
            raw = response.read()
        except (ConnectionResetError, BrokenPipeError) as exc:
            if method != "GET":  # it may have acted: never retried behind the caller's back
                raise AgentError(f"the agent did not answer {method} {path}: {exc}") from exc
            # an agent killed a moment ago: its last thread still held the socket
            raise AgentNotRunning(f"the agent on {self.home.agent_socket} was stopping") from exc
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise AgentError(f"the agent did not answer {method} {path}: {exc}") from exc
        finally:
            conn.close()
        if path == "/metrics":
            return raw.decode()
        try:
            data = json.loads(raw) if raw else None
        except ValueError as exc:
            raise AgentError(
                f"the agent answered {method} {path} with HTTP {response.status} and no JSON",
                hint="see the agent's log (KILN_HOME/agent/agent.log)",
            ) from exc
        if response.status >= 400:
            raise _error(data)
        return data

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Any:
        return self.request("POST", path, body, **kw)


def _error(data: Any) -> KilnError:
    info = data.get("error", {}) if isinstance(data, dict) else {}
    cls = getattr(errors, str(info.get("type")), AgentError)
    if not (isinstance(cls, type) and issubclass(cls, KilnError)):
        cls = AgentError
    return cls(str(info.get("message", "the agent refused")), hint=info.get("hint"))


def agent_status(home: Home) -> dict[str, Any] | None:
    """The running agent's status, or None when none answers."""
    try:
        status: dict[str, Any] = AgentClient(home).get("/v1/status", timeout=5.0)
    except AgentNotRunning:
        return None
    return status


def start_agent(home: Home) -> tuple[dict[str, Any], bool]:
    """(status, started): idempotent; a running agent of this kiln's code is left alone.

    An agent running other code (started before an upgrade) is restarted: it
    would refuse, or misread, what this kiln sends it. Its instances and the
    balancer keep serving and are re-adopted, as after `kiln agent stop`.
    """
    status = agent_status(home)
    if status is not None:
        if status.get("code") == kiln_code():
            return status, False
        stop_agent(home)
        status = agent_status(home)  # a service manager may have started the new one
        if status is not None and status.get("code") == kiln_code():
            return status, True
    check_socket_owner(home.agent_socket)
    home.ensure()
    cmd = [sys.executable, "-m", "kiln.local.agent", "--home", str(home.root), "--daemon"]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=START_TIMEOUT, env=agent_env(home)
        )
    except subprocess.TimeoutExpired as exc:
        raise AgentError(
            f"the agent did not start within {START_TIMEOUT:g}s",
            hint=f"see {log_path(home)}",
        ) from exc
    if done.returncode != 0:
        message, _, hint = done.stderr.strip().partition("\nhint: ")
        if "already runs" in message:  # lost a race with another starter: fine
            status = agent_status(home)
            if status is not None:
                return status, False
        tail = log_tail(log_path(home), 10) if not message else ""
        raise AgentError(message or f"the agent failed to start:\n{tail}", hint=hint or None)
    status = agent_status(home)
    if status is None:
        raise AgentError("the agent started but does not answer", hint=f"see {log_path(home)}")
    return status, True


def agent_env(home: Home) -> dict[str, str]:
    """The agent's whole environment: a few basics, where kiln's code is, its home."""
    env = {k: os.environ[k] for k in AGENT_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    if "PYTHONPATH" in os.environ:  # kiln run from a checkout: the agent imports it the same way
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env["KILN_HOME"] = str(home.root)
    return env


def ensure_agent(home: Home) -> AgentClient:
    start_agent(home)
    return AgentClient(home, autostart=True)


def stop_agent(home: Home, *, stop_instances: bool = False, timeout: float = 120.0) -> int | None:
    """Ask the agent to stop and wait for it; returns its pid, None if none ran."""
    status = agent_status(home)
    if status is None:
        return None
    pid = int(status["pid"])
    AgentClient(home).post("/v1/shutdown", {"stop_instances": stop_instances})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return pid
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    raise AgentError(f"the agent (pid {pid}) did not stop within {timeout:g}s; killed it")


def _pid_alive(pid: int) -> bool:
    return start_time(pid) is not None


__all__ = ["AgentClient", "AgentNotRunning", "agent_status", "ensure_agent", "read_pid"]
