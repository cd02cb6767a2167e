"""Each instance has a runtime directory of its own (XDG_RUNTIME_DIR, PM2_HOME).

Instances of one agent share its user and HOME. A tool that keeps per-process
state in HOME shares it across instances too: two pm2-runtime instances on
one ~/.pm2 stop each other's apps (tests/realapps/test_pm2.py runs the real
one). Here, with a small app that reports what it was given.
"""

from __future__ import annotations

import json
import os
import stat
import urllib.request
from pathlib import Path

from localtest import make_image, serving, wait_for

from kiln.home import Home
from kiln.local.provider import LocalProvider

REPORTER = r"""
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

run = os.environ.get("XDG_RUNTIME_DIR", "")
if run:
    with open(os.path.join(run, "app.pid"), "w") as f:  # what a daemon does with it
        f.write(str(os.getpid()))

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        names = ("XDG_RUNTIME_DIR", "PM2_HOME", "HOME")
        data = json.dumps({name: os.environ.get(name) for name in names}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


def _report(address: str) -> dict[str, str | None]:
    with urllib.request.urlopen(f"http://{address}/", timeout=10) as response:
        report: dict[str, str | None] = json.loads(response.read())
    return report


def test_each_instance_has_its_own_runtime_directory_gone_with_it(
    local_home: Home, provider: LocalProvider
) -> None:
    image = make_image(local_home, files={"app.py": REPORTER})
    provider.launch("web", image, 2)
    serving(provider, 2)
    one, two = provider.describe("web").live()
    assert one.address and two.address
    reports = [_report(one.address), _report(two.address)]
    runs = [Path(str(report["XDG_RUNTIME_DIR"])) for report in reports]
    assert runs[0] != runs[1]
    for instance, report, run in zip((one, two), reports, runs, strict=True):
        assert run == Path(instance.details["dir"]).with_name(instance.id + ".run")
        assert report["PM2_HOME"] == str(run)
        assert report["HOME"] == os.environ.get("HOME")  # HOME stays the agent's
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        assert (run / "app.pid").read_text().isdigit()
    provider.terminate("web", [one.id])
    wait_for(lambda: not runs[0].exists(), 30, "the terminated instance's runtime directory")
    assert runs[1].exists()


def test_the_images_own_setting_wins(local_home: Home, provider: LocalProvider) -> None:
    image = make_image(local_home, files={"app.py": REPORTER}, env={"PM2_HOME": "/srv/pm2"})
    provider.launch("web", image, 1)
    serving(provider, 1)
    (one,) = provider.describe("web").live()
    assert one.address
    report = _report(one.address)
    assert report["PM2_HOME"] == "/srv/pm2"
    assert report["XDG_RUNTIME_DIR"] == str(Path(one.details["dir"]).with_name(one.id + ".run"))
