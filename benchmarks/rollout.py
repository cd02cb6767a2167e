#!/usr/bin/env python3
"""Rollouts under real load on the local provider: rolling, blue-green, rollback.

Starts a private agent (own KILN_HOME), deploys a 4-instance fleet of a small
stdlib HTTP app, and runs a paced load generator (a separate process, so it
does not share the deployer's GIL) through each rollout. For each of

* rolling      v1 -> v2, max_surge 1 (four batches)
* blue-green   v2 -> v1 (one batch, one switch)
* rollback     v1 -> v2 from the warm standby (one switch)
* bad image    v1 -> an image that exits at start, rolled back automatically

it reports requests sent, failed requests, p99 during the rollout against
p99 at steady state, and the duration against its theoretical minimum: per
batch, the measured time from launch to healthy (app start + healthy_threshold
x interval) plus the drain the batch needed (requests here finish in
milliseconds, so ~0). Writes benchmarks/results/rollout.json.

    python benchmarks/rollout.py [--size 4] [--rate 200] [--settle 0]

``--settle`` is [fleet] settle (default 5s in kiln.toml): each batch stays
healthy that long before what it replaces goes. It is a deliberate wait, so
the minimum counts it too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchutil import free_port

from kiln.config import load_config
from kiln.deploy import Engine, Event, Settings, StateDb
from kiln.home import Home
from kiln.image.store import FileEntry, Manifest, Store
from kiln.local.client import stop_agent
from kiln.local.provider import LocalProvider

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"

APP = r"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = ('{"instance": "%s"}' % os.environ["KILN_INSTANCE_ID"]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""
BAD_APP = "import sys\nprint('cannot connect to the database', flush=True)\nsys.exit(3)\n"


# load generator (runs as a subprocess: python rollout.py --loadgen PORT RATE OUT STOP)


def loadgen(port: int, rate: float, out: Path, stop: Path, workers: int = 8) -> None:
    """Paced keep-alive GETs; one line per request: start time, latency, ok."""
    lines: list[str] = []
    lock = threading.Lock()
    interval = workers / rate

    def worker(offset: float) -> None:
        conn: http.client.HTTPConnection | None = None
        next_at = time.time() + offset
        while not stop.exists():
            time.sleep(max(0.0, next_at - time.time()))
            next_at += interval
            started = time.time()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                lines.append(f"{started:.6f} {time.time() - started:.6f} {int(ok)}")

    threads = [
        threading.Thread(target=worker, args=(i * interval / workers,), daemon=True)
        for i in range(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.write_text("\n".join(lines) + "\n")


class Load:
    """The load generator process and its measurements."""

    def __init__(self, port: int, rate: float, workdir: Path) -> None:
        self.out, self.stop = workdir / "load.txt", workdir / "load.stop"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--loadgen",
                str(port),
                str(rate),
                str(self.out),
                str(self.stop),
            ]
        )
        self.samples: list[tuple[float, float, bool]] = []

    def finish(self) -> None:
        self.stop.write_text("")
        self.proc.wait(30)
        for line in self.out.read_text().split("\n"):
            if line:
                t, latency, ok = line.split()
                self.samples.append((float(t), float(latency), ok == "1"))

    def window(self, start: float, end: float) -> dict[str, Any]:
        inside = [s for s in self.samples if start <= s[0] < end]
        latencies = sorted(s[1] for s in inside)
        p99 = latencies[int(len(latencies) * 0.99)] if latencies else None
        return {
            "requests": len(inside),
            "failed": sum(1 for s in inside if not s[2]),
            "p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        }


# the fleet


def make_image(home: Home, text: str, tag: str) -> str:
    store = Store(home)
    source = home.tmp / f"src-{tag}"
    source.mkdir(parents=True, exist_ok=True)
    path = source / "app.py"
    path.write_text(text + f"\n# {tag}\n")
    digest, size = store.put_file(path)
    manifest = Manifest(
        app="bench",
        run=f"{sys.executable} app.py",
        env={},
        python=sys.executable,
        files=(FileEntry("app.py", 0o644, size, digest),),
    )
    return store.add_image(manifest, {"created": time.time()}).id


def write_config(directory: Path, port: int, size: int, settle: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "kiln.toml"
    path.write_text(
        f"""
[app]
name = "bench"
run = "python3 app.py"

[health]
path = "/"
interval = "200ms"
timeout = "1s"
healthy_threshold = 2
grace = "5s"

[fleet]
size = {size}
drain = "5s"
settle = {settle}
keep_warm = "5m"

[provider.local]
listen = "127.0.0.1:{port}"
stop_timeout = "2s"
"""
    )
    return path


def calibrate(provider: LocalProvider, image: str) -> float:
    """Seconds from launch to healthy for one instance: app start + threshold x interval."""
    fleet = "calibrate"
    started = time.time()
    ids = provider.launch(fleet, image, 1, in_service=False)
    while not any(i.healthy for i in provider.describe(fleet).instances if i.id in ids):
        time.sleep(0.01)
    took = time.time() - started
    provider.terminate(fleet, ids)
    return took


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kiln-rollout-"))
    home = Home(work / "home").ensure()
    port = free_port()
    loaded = load_config(write_config(work / "app", port, args.size, args.settle))
    provider = LocalProvider(home, loaded)
    settings = Settings.from_config(loaded.config)
    v1, v2 = make_image(home, APP, "v1"), make_image(home, APP, "v2")
    bad = make_image(home, BAD_APP, "bad")
    steps: list[str] = []

    def narrate(event: Event) -> None:
        if event.kind in ("step", "trip", "warning"):
            steps.append(event.message)

    db = StateDb(home.state_db)
    engine = Engine(provider, db, settings, "bench", on_event=narrate)
    try:
        boot = sum(calibrate(provider, v1) for _ in range(3)) / 3
        first = engine.deploy(v1)
        assert first.ok, first
        load = Load(port, args.rate, work)
        time.sleep(args.steady)
        marks: list[tuple[str, float, float, int, str]] = []
        scenarios = [
            ("rolling", v2, "rolling", args.size),  # batches of max_surge=1
            ("blue-green", v1, "blue-green", 1),
            ("rollback (warm)", None, None, 0),  # minimum: one health check
            ("bad image, auto rollback", bad, "rolling", -1),  # no minimum: it fails fast
        ]
        for name, image, strategy, batches in scenarios:
            t0 = time.time()
            result = engine.deploy(image, strategy=strategy) if image else engine.rollback()
            marks.append((name, t0, time.time(), batches, result.outcome))
            time.sleep(1.0)
        time.sleep(args.steady)
        load.finish()
    finally:
        stop_agent(home, stop_instances=True, timeout=60)
        db.close()
    steady = load.window(load.samples[0][0], marks[0][1]) if load.samples else {}
    rows = []
    for name, start, end, batches, outcome in marks:
        during = load.window(start, end)
        minimum = batches * (boot + args.settle) if batches > 0 else None
        if batches == 0:
            minimum = settings.interval
        rows.append(
            {
                "scenario": name,
                "outcome": outcome,
                "duration_s": round(end - start, 2),
                "minimum_s": round(minimum, 2) if minimum else None,
                "ratio": round((end - start) / minimum, 2) if minimum else None,
                **during,
                "p99_vs_steady": (
                    round(during["p99_ms"] / steady["p99_ms"], 2)
                    if during.get("p99_ms") and steady.get("p99_ms")
                    else None
                ),
            }
        )
    return {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus",
        "python": platform.python_version(),
        "size": args.size,
        "rate_rps": args.rate,
        "settle_s": args.settle,
        "boot_s": round(boot, 3),
        "steady": steady,
        "total": {
            "requests": len(load.samples),
            "failed": sum(1 for s in load.samples if not s[2]),
        },
        "rollouts": rows,
    }


def print_table(data: dict[str, Any]) -> None:
    print(
        f"size {data['size']}, {data['rate_rps']} req/s, boot (start + checks) "
        f"{data['boot_s']}s, settle {data['settle_s']}s, "
        f"steady p99 {data['steady'].get('p99_ms')}ms"
    )
    print(
        f"{'scenario':28} {'outcome':12} {'dur s':>6} {'min s':>6} {'ratio':>5} "
        f"{'reqs':>6} {'failed':>6} {'p99 ms':>7} {'xsteady':>7}"
    )
    for r in data["rollouts"]:
        print(
            f"{r['scenario']:28} {r['outcome']:12} {r['duration_s']:6} {r['minimum_s'] or '-':>6} "
            f"{r['ratio'] if r['ratio'] is not None else '-':>5} {r['requests']:6} "
            f"{r['failed']:6} {r['p99_ms']:7} {r['p99_vs_steady']:7}"
        )
    print(f"total: {data['total']['requests']} requests, {data['total']['failed']} failed")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        port, rate, out, stop = sys.argv[2:6]
        loadgen(int(port), float(rate), Path(out), Path(stop))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--settle", type=float, default=0.0, help="[fleet] settle, seconds")
    parser.add_argument("--steady", type=float, default=4.0, help="steady-state seconds")
    parser.add_argument("--no-write", action="store_true", help="do not write results")
    args = parser.parse_args()
    data = run(args)
    print_table(data)
    if not args.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
