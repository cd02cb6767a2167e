"""[provider.local] isolate: an instance can alter neither the store nor another instance."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from localtest import kill_everything, make_image, serving, write_config

from kiln.config import load_config
from kiln.errors import KilnError
from kiln.home import Home
from kiln.image.store import Store
from kiln.local.provider import LocalProvider

PYTHON = Path("/usr/bin/python3")
PROBE_APP = r"""
import json, os, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/probe":
            target = urllib.parse.parse_qs(url.query)["path"][0]
            try:
                with open(target, "a") as f:
                    f.write("tampered\n")
                result = "written"
            except OSError as exc:
                result = f"denied: {exc.strerror}"
            doc = {"result": result, "uid": os.getuid()}
        else:
            doc = {"ok": True}
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

server = ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler)
server.serve_forever()
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not PYTHON.exists(),
    reason="isolation needs the agent to run as root and a system-wide /usr/bin/python3",
)


def _probe(address: str, target: Path) -> dict[str, object]:
    query = urllib.parse.urlencode({"path": str(target)})
    with urllib.request.urlopen(f"http://{address}/probe?{query}", timeout=5) as response:
        result: dict[str, object] = json.loads(response.read())
    return result


@pytest.fixture
def open_home() -> Iterator[Home]:
    """A KILN_HOME other users may pass through (pytest's tmp dirs are private)."""
    base = Path(tempfile.mkdtemp(prefix="kiln-iso-", dir="/tmp"))
    base.chmod(0o711)
    home = Home(base / "kiln").ensure()
    try:
        yield home
    finally:
        kill_everything(home)
        shutil.rmtree(base, ignore_errors=True)


def test_isolated_instances_cannot_touch_the_store_the_agent_or_each_other(
    open_home: Home, tmp_path: Path, lb_port: int
) -> None:
    local_home = open_home
    config = write_config(tmp_path / "app", lb_port, extra="isolate = true\n")
    provider = LocalProvider(local_home, load_config(config))
    assert provider.settings.isolate
    image = make_image(local_home, run=f"{PYTHON} app.py", files={"app.py": PROBE_APP})
    provider.launch("web", image, 2)
    serving(provider, 2)
    one, two = provider.describe("web").live()
    assert one.address and two.address

    sha = Store(local_home).get(image).manifest.files[0].sha256
    where = Store(local_home).objects.locate(sha)
    store_file = where if isinstance(where, Path) else where.pack  # type: ignore[union-attr]
    other_dir, own_dir = Path(two.details["dir"]), Path(one.details["dir"])
    # both instances' files are hard links into the image's verified tree, read-only:
    # not even the instance's own copy of a shared file can be written
    shared = (own_dir / "app.py").stat()
    assert shared.st_ino == (other_dir / "app.py").stat().st_ino and shared.st_uid == 0
    assert stat.S_IMODE(shared.st_mode) == 0o444
    for target in (
        store_file,
        own_dir / "app.py",
        other_dir / "app.py",
        other_dir / "new-file",
        other_dir.with_name(two.id + ".run") / "new-file",  # its runtime directory
        local_home.agent_dir / "agent.db",
        local_home.state_db,
    ):
        answer = _probe(one.address, target)
        assert str(answer["result"]).startswith("denied"), (target, answer)
    own = _probe(one.address, Path(one.details["dir"]) / "scratch.txt")
    assert own["result"] == "written" and own["uid"] != 0
    assert _probe(one.address, own_dir.with_name(one.id + ".run") / "x")["result"] == "written"
    assert _probe(two.address, other_dir / "x")["uid"] != own["uid"]
    assert Store(local_home).verify(image) == []


def test_isolation_under_a_private_home_says_where_to_put_it(
    local_home: Home, tmp_path: Path, lb_port: int
) -> None:
    config = write_config(tmp_path / "app", lb_port, extra="isolate = true\n")
    provider = LocalProvider(local_home, load_config(config))
    image = make_image(local_home, run=f"{PYTHON} app.py", files={"app.py": PROBE_APP})
    with pytest.raises(KilnError) as info:
        provider.launch("web", image, 1)
    assert "is private to its owner" in str(info.value)
    assert "/var/lib/kiln" in (info.value.hint or "")
    assert provider.describe("web").live() == []
