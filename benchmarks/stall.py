"""Stall benchmark: does one fleet's file-tree work slow another fleet's requests?

A private agent runs fleet A (an image of 5,000 files / 100 MB, 6 instances)
and fleet B (one tiny instance). Keep-alive GETs go through B's listener
the whole time; we record B's steady p99, then B's worst request while A
scales 6 -> 3 and while A is deployed (3 instances of a new image launched,
the old 3 terminated). Goal: worst <= B's steady p99 + 100 ms.
Saves benchmarks/results/stall.json.

    .venv/bin/python benchmarks/stall.py [--files 5000] [--mb 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchutil import free_port, machine, save_and_print

from kiln.config import load_config
from kiln.home import Home
from kiln.image.store import FileEntry, Manifest, Store
from kiln.loadgen import LoadLoop
from kiln.local.client import stop_agent
from kiln.local.provider import LocalProvider

APP = r"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


def image(home: Home, app: str, files: int, total: int, salt: str) -> str:
    store = Store(home)
    source = home.tmp / f"src-{salt}"
    contents = {"app.py": APP + f"# {salt}\n"}
    size = total // files if files else 0
    for n in range(files):
        contents[f"lib/pkg{n % 50}/mod{n}.py"] = salt + "#" * size
    entries = []
    with store.objects.batch():
        for name, text in sorted(contents.items()):
            path = source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            digest, length = store.put_file(path)
            entries.append(FileEntry(name, 0o644, length, digest))
    manifest = Manifest(app, f"{sys.executable} app.py", {}, sys.executable, tuple(entries))
    return store.add_image(manifest, {"created": time.time()}).id


def provider(home: Home, work: Path, name: str, port: int) -> LocalProvider:
    directory = work / name
    directory.mkdir()
    (directory / "kiln.toml").write_text(
        f"""
[app]
name = "{name}"
run = "python3 app.py"

[health]
path = "/"
interval = "200ms"
healthy_threshold = 1
grace = "10s"

[fleet]
drain = "2s"

[provider.local]
listen = "127.0.0.1:{port}"
stop_timeout = "2s"
"""
    )
    return LocalProvider(home, load_config(directory / "kiln.toml"))


def wait_serving(p: LocalProvider, fleet: str, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(p.describe(fleet).serving()) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"{fleet}: {n} instances did not come up")
        time.sleep(0.2)


def phase(load: LoadLoop) -> list[float]:
    """Latencies recorded since the last call."""
    with load._lock:
        taken, load.latencies = load.latencies, []
    return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-stall-"))
    home = Home(work / "kiln").ensure()
    os.environ["KILN_HOME"] = str(home.root)
    try:
        a = provider(home, work, "a", free_port())
        b_port = free_port()
        b = provider(home, work, "b", b_port)
        b.launch("b", image(home, "b", 0, 0, "b"), 1)
        wait_serving(b, "b", 1)
        old = image(home, "a", args.files, args.mb << 20, "v1")
        new = image(home, "a", args.files, args.mb << 20, "v2")
        ids = a.launch("a", old, 6)
        wait_serving(a, "a", 6)
        load = LoadLoop("127.0.0.1", b_port, workers=2, pause=0.01, max_errors=None)
        with load:
            time.sleep(5)
            steady = sorted(phase(load))
            a.terminate("a", ids[:3])  # what `kiln scale 3` asks of the agent
            time.sleep(2)
            scale = phase(load)
            fresh = a.launch("a", new, 3)  # a rolling deploy, one batch: launch, then retire
            wait_serving(a, "a", 6)
            a.terminate("a", ids[3:])
            time.sleep(2)
            deploy = phase(load)
        p99 = steady[int(len(steady) * 0.99)]
        figures = {
            **machine(),
            "files": args.files,
            "megabytes": args.mb,
            "requests": load.sent,
            "failed": load.failed,
            "b_steady_p99_ms": round(p99 * 1000, 2),
            "b_worst_during_scale_down_ms": round(max(scale) * 1000, 2),
            "b_worst_during_deploy_ms": round(max(deploy) * 1000, 2),
            "added_scale_down_ms": round((max(scale) - p99) * 1000, 2),
            "added_deploy_ms": round((max(deploy) - p99) * 1000, 2),
            "new_instances": len(fresh),
        }
        save_and_print("stall", figures)
    finally:
        stop_agent(home, stop_instances=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
