"""An isolated instance's uid is its boundary: nothing it started survives it, and
no later instance ever gets that uid (issue 14.2).

The attack: an instance starts a ``setsid`` child, which leaves its process
group, so stopping the group misses it. When the next instance got the same
uid, that child read the newcomer's secrets and wrote into its directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from localtest import free_port, kill_everything, make_image, serving, wait_for, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local import uids
from kiln.local.provider import LocalProvider

PYTHON = Path("/usr/bin/python3")
ESCAPING_APP = r"""
import os, subprocess, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The escapee: its own session and process group, forking a grandchild too.
LOOP = "import os, time\nos.fork()\nwhile True: time.sleep(0.2)"
child = subprocess.Popen([sys.executable, "-c", LOOP], start_new_session=True)
print("escapee", child.pid, flush=True)

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

server = ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler)
server.serve_forever()
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not PYTHON.exists(),
    reason="isolation needs the agent to run as root and a system-wide /usr/bin/python3",
)


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


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _session_of(pid: int) -> int:
    return os.getsid(pid)


@pytest.mark.slow
def test_what_an_instance_started_dies_with_it_and_its_uid_is_never_reused(
    open_home: Home, tmp_path: Path
) -> None:
    image = make_image(open_home, run=f"{PYTHON} app.py", files={"app.py": ESCAPING_APP})
    first = LocalProvider(
        open_home,
        load_config(write_config(tmp_path / "a", free_port(), "isolate = true\n", name="web")),
    )
    first.launch("web", image, 1)
    serving(first, 1)
    (inst,) = first.describe("web").live()
    pid = int(inst.details["pid"])
    uid = _uid_of(pid)
    assert uids.FIRST <= uid < uids.LAST

    def escaped() -> list[int]:
        return [p for p in uids.processes_of(uid) if _session_of(p) != pid]

    wait_for(lambda: len(escaped()) >= 2, 60, "the escapee and its child")

    first.terminate("web", [inst.id])
    wait_for(lambda: not uids.processes_of(uid), 60, f"every process of uid {uid} to be killed")

    second = LocalProvider(
        open_home,
        load_config(write_config(tmp_path / "b", free_port(), "isolate = true\n", name="shop")),
    )
    second.launch("shop", image, 1)
    serving(second, 1, fleet="shop")
    (other,) = second.describe("shop").live()
    new_uid = _uid_of(int(other.details["pid"]))
    assert new_uid != uid, "a finished instance's uid was handed to the next instance"
    assert int((open_home.agent_dir / "last-uid").read_text()) == new_uid


# Far above what any agent on this machine hands out while these tests run.
TEST_UIDS = uids.LAST - 10_000


def test_a_uid_that_owns_a_process_is_never_handed_out(tmp_path: Path) -> None:
    pool = uids.UidPool(tmp_path / "last-uid")
    (tmp_path / "last-uid").write_text(f"{TEST_UIDS}\n")
    squatter_uid = TEST_UIDS + 1
    squatter = subprocess.Popen(
        ["sleep", "60"], user=squatter_uid, group=squatter_uid, extra_groups=[]
    )
    try:
        wait_for(lambda: squatter.pid in uids.processes_of(squatter_uid), 60, "the squatter")
        taken = pool.take(known=[], dirs=tmp_path / "none")
        assert taken == TEST_UIDS + 2  # past the last one handed out, and past the squatter
        assert pool.take(known=[TEST_UIDS + 3], dirs=tmp_path / "none") == TEST_UIDS + 4
        assert uids.kill_all(squatter_uid) == []
        assert squatter.wait(5) < 0
    finally:
        squatter.kill()
        squatter.wait()


def test_kill_all_catches_a_process_that_keeps_forking() -> None:
    uid = TEST_UIDS + 77
    storm = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "while True:\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(0.5)\n"
        "        os._exit(0)\n"
        "    time.sleep(0.005)\n"
    )
    proc = subprocess.Popen(
        [str(PYTHON), "-c", storm], user=uid, group=uid, extra_groups=[], start_new_session=True
    )
    try:
        wait_for(lambda: len(uids.processes_of(uid)) > 10, 60, "a fork storm")
        assert uids.kill_all(uid) == []
        assert uids.processes_of(uid) == []
    finally:
        proc.kill()
        proc.wait()
