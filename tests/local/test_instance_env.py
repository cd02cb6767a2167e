"""What an instance runs with: the system's environment, its run line as a shell line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from localtest import http_get, make_image, serving, wait_for

from kiln.home import Home
from kiln.local.provider import LocalProvider

# Answers /health; / tells what the instance sees; SIGTERM drains for 0.5 s.
PROBE = r"""
import json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer

def importable(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        doc = {"pid": os.getpid(), "executable": sys.executable, "env": dict(os.environ),
               "boto3": importable("boto3"), "aiohttp": importable("aiohttp"),
               "migrated": os.path.exists("migrated")}
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

server = HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H)

def term(*_):
    def drain():
        time.sleep(0.5)
        with open(os.environ["MARKER"], "a") as f:
            f.write("drained\n")
        server.shutdown()
    threading.Thread(target=drain).start()

signal.signal(signal.SIGTERM, term)
server.serve_forever()
"""


def _launch(provider: LocalProvider, home: Home, run: str, marker: Path) -> dict[str, object]:
    image = make_image(home, run=run, files={"app.py": PROBE}, env={"MARKER": str(marker)})
    provider.launch("web", image, 1)
    serving(provider, 1)
    instance = provider.describe("web").serving()[0]
    status, seen = http_get(provider.settings.listen_port, "/")
    assert status == 200
    seen["instance_pid"] = instance.details["pid"]
    seen["id"] = instance.id
    return seen


@pytest.mark.slow
def test_an_instance_sees_neither_kilns_venv_nor_its_packages(
    provider: LocalProvider, local_home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = Path(sys.prefix)
    site = next(venv.glob("lib/python3*/site-packages"))
    # the worst case: kiln run from an activated venv with PYTHONPATH pointing into it
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("PATH", f"{venv / 'bin'}:{os.environ['PATH']}")
    seen = _launch(provider, local_home, "python3 app.py", tmp_path / "marker")
    env = seen["env"]
    assert isinstance(env, dict)
    assert "VIRTUAL_ENV" not in env and "PYTHONPATH" not in env
    assert str(venv) not in env["PATH"] and env["PATH"].startswith("/usr/local/sbin:")
    assert not str(seen["executable"]).startswith(str(venv))
    assert seen["boto3"] is False and seen["aiohttp"] is False  # kiln's, not the image's
    assert env["MARKER"] == str(tmp_path / "marker")


@pytest.mark.slow
def test_a_run_line_with_and_runs_both_and_sigterm_reaches_the_server(
    provider: LocalProvider, local_home: Home, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    run = 'touch migrated && echo "$MARKER" >/dev/null && python3 app.py'
    seen = _launch(provider, local_home, run, marker)
    assert seen["migrated"] is True
    assert seen["pid"] == seen["instance_pid"]  # exec'd: the server is the instance
    provider.terminate("web", [str(seen["id"])])
    assert marker.read_text() == "drained\n"  # drained before kiln called it stopped
    (gone,) = [i for i in provider.describe("web").instances if i.id == seen["id"]]
    assert gone.exit_status == 0


@pytest.mark.slow
def test_a_line_kiln_cannot_exec_still_drains_the_whole_group(
    provider: LocalProvider, local_home: Home, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    seen = _launch(provider, local_home, "python3 app.py | cat", marker)
    assert seen["pid"] != seen["instance_pid"]  # the shell leads, the server is its child
    provider.terminate("web", [str(seen["id"])])
    assert marker.read_text() == "drained\n"
    wait_for(lambda: not Path(f"/proc/{seen['pid']}").exists(), 60, "the server gone")
