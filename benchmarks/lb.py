#!/usr/bin/env python3
"""kiln's load balancer against HAProxy, on the same backends, in one run.

Starts a private agent (own KILN_HOME) serving two instances of a tiny
keep-alive HTTP backend (node when available, else a Python asyncio one),
then measures with wrk:

* direct    wrk -> one instance
* kiln      wrk -> the agent's load balancer -> both instances
* haproxy   wrk -> HAProxy (1 thread, leastconn, keep-alive reuse) -> both instances,
            setting X-Forwarded-For and X-Forwarded-Proto as kiln does (a client's
            own X-Forwarded-For dropped): the instances get the same requests

at full load (throughput, and the CPU time the proxy process - kiln's
balancer, or HAProxy - spends per request, from /proc), and paced for
latency, each connection pausing between requests (5 ms on average):

* moderate  random pauses (exponential, as independent users think): requests
            arrive at random moments, a few at a time
* bursty    a fixed pause: wrk's timers fire on whole milliseconds, and
            connections answered together wait together, so they fall into
            step and the requests of many connections arrive at once

in interleaved rounds whose medians are kept. Prints a table and writes
benchmarks/results/lb.json.

    python benchmarks/lb.py [--duration 5] [--rounds 3] [--connections 64]

Needs wrk and haproxy (scripts/test-deps.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchutil import free_port, refuse_stale_build

from kiln.config import load_config
from kiln.home import Home
from kiln.image.store import FileEntry, Manifest, Store
from kiln.local import lbproc
from kiln.local.client import stop_agent
from kiln.local.compiled import mapped_in
from kiln.local.provider import LocalProvider

RESULTS = Path(__file__).resolve().parent / "results" / "lb.json"
BODY = "x" * 128

NODE_BACKEND = f"""
const http = require('http');
const body = '{BODY}\\n';
const server = http.createServer((req, res) => {{
  res.writeHead(200, {{'Content-Type': 'text/plain', 'Content-Length': body.length}});
  res.end(body);
}});
server.keepAliveTimeout = 60000;
server.listen(+process.env.PORT, process.env.HOST);
"""

PY_BACKEND = f"""
import asyncio, os
BODY = b'{BODY}\\n'
HEAD = b'HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\n'
RESP = HEAD + b'Content-Length: %d\\r\\n\\r\\n%s' % (len(BODY), BODY)
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b'\\r\\n\\r\\n')
            writer.write(RESP)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, os.environ['HOST'], int(os.environ['PORT']))
    await server.serve_forever()
asyncio.run(main())
"""

# Paces each connection: wrk calls delay() before every request (whole milliseconds).
BURSTY_LUA = "function delay() return {delay} end\n"
# The same mean pause, drawn for each request from an exponential distribution,
# with a seed of its own for each of wrk's threads (each runs its own Lua).
MODERATE_LUA = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end
function init(args)
  math.randomseed(os.time() * 1000 + seed)
end
function delay()
  return math.floor(-{delay} * math.log(1 - math.random()) + 0.5)
end
"""


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def backend_image(home: Home) -> tuple[str, str]:
    store = Store(home)
    src = Path(tempfile.mkdtemp(dir=home.tmp))
    if shutil.which("node"):
        kind, name, text, run = (
            "node",
            "backend.js",
            NODE_BACKEND,
            f"{shutil.which('node')} backend.js",
        )
    else:
        kind, name, text, run = "python", "backend.py", PY_BACKEND, f"{sys.executable} backend.py"
    (src / name).write_text(text)
    digest, size = store.put_file(src / name)
    manifest = Manifest(
        app="bench",
        run=run,
        env={},
        python=sys.executable,
        files=(FileEntry(name, 0o644, size, digest),),
    )
    return store.add_image(manifest, {"created": time.time()}).id, kind


@contextmanager
def kiln_fleet(
    workdir: Path,
    instances: int,
    pure: bool = False,
    image_of: Callable[[Home], tuple[str, str]] | None = None,
) -> Iterator[tuple[int, list[str], str, int]]:
    """An agent with a fleet of ``instances``: (lb port, instance addresses, backend kind,
    the balancer's pid). ``pure``: its balancer runs the Python source (KILN_PURE=1).
    ``image_of``: (image, kind) of the backend, stored in the home (else ``backend_image``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = Home(workdir / "kiln").ensure()
    os.environ["KILN_HOME"] = str(home.root)
    port = free_port()
    app = workdir / "app"
    app.mkdir()
    (app / "kiln.toml").write_text(
        f"""
[app]
name = "bench"
run = "true"
[health]
path = "/"
interval = "1s"
healthy_threshold = 1
[provider.local]
listen = "127.0.0.1:{port}"
"""
    )
    provider = LocalProvider(home, load_config(app / "kiln.toml"))
    image, kind = (image_of or backend_image)(home)
    try:
        if pure:  # the agent passes it on to the balancer it starts now
            os.environ["KILN_PURE"] = "1"
        try:
            provider.launch("bench", image, instances)
        finally:
            os.environ.pop("KILN_PURE", None)
        deadline = time.monotonic() + 20
        while len(provider.describe("bench").serving()) < instances:
            if time.monotonic() > deadline:
                raise RuntimeError("backends did not become healthy")
            time.sleep(0.1)
        addresses = [i.address or "" for i in provider.describe("bench").serving()]
        balancer = lbproc.read_pid(home)
        if balancer is None:
            raise RuntimeError("no balancer process")
        yield port, addresses, kind, balancer
    finally:
        stop_agent(home, stop_instances=True)


@contextmanager
def haproxy(addresses: list[str]) -> Iterator[tuple[int, int]]:
    port = free_port()
    servers = "\n".join(f"  server s{n} {a} maxconn 1000" for n, a in enumerate(addresses))
    config = f"""
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  http-request del-header X-Forwarded-For
  http-request set-header X-Forwarded-Proto http
  default_backend be
backend be
  balance leastconn
{servers}
"""
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write(config)
    proc = subprocess.Popen(["haproxy", "-f", f.name, "-db"], stdout=subprocess.DEVNULL)
    try:
        try:
            wait_port(port)
        except RuntimeError:
            proc.kill()
            raise RuntimeError(f"haproxy did not start (exit {proc.wait()})") from None
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        Path(f.name).unlink()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int | None) -> tuple[float, float]:
    """User and system CPU time of a process (its threads included) so far: the user
    part is the proxy's own code, the system part mostly the kernel's socket work."""
    if pid is None:
        return 0.0, 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def wakeups(pid: int | None) -> int:
    """How often a process (its threads included) has gone to sleep and been woken so far."""
    if pid is None:
        return 0
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        total += int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return total


def wrk(
    port: int,
    connections: int,
    duration: int,
    pace: str | None = None,
    proxy_pid: int | None = None,
) -> dict[str, Any]:
    """One wrk run, ``pace`` the Lua script pausing connections if any; with
    ``proxy_pid``, also that process's CPU time and wake-ups per request."""
    cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--latency"]
    script = None
    if pace is not None:
        fd, name = tempfile.mkstemp(suffix=".lua")
        script = Path(name)
        os.close(fd)
        script.write_text(pace)
        cmd += ["-s", str(script)]
    cmd.append(f"http://127.0.0.1:{port}/")
    user_before, sys_before = cpu_times(proxy_pid)
    woken_before = wakeups(proxy_pid)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        user, system = cpu_times(proxy_pid)
        woken = wakeups(proxy_pid) - woken_before
    finally:
        if script is not None:
            script.unlink()
    if proxy_pid is None:
        return wrk_figures(out)
    return wrk_figures(out, user - user_before, system - sys_before, woken)


def wrk_figures(
    out: str, user: float | None = None, system: float | None = None, woken: int | None = None
) -> dict[str, Any]:
    """wrk's --latency report as figures; ``user`` and ``system`` (CPU seconds of the
    proxy) become CPU per request, ``woken`` (its wake-ups) wake-ups per request: the
    fewer, the more requests each wake-up found waiting."""
    cpu = None if user is None or system is None else user + system
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        latency[pct] = round(float(m.group(1)) * _UNITS[m.group(2)], 3) if m else None
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    found = re.search(r"(\d+) requests in", out)
    total = int(found.group(1)) if found else 0
    return {
        "requests_per_second": round(float(rps.group(1)), 1) if rps else 0.0,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "proxy_cpu_us_per_request": _per_request(cpu, total),
        "proxy_user_us_per_request": _per_request(user, total),
        "proxy_sys_us_per_request": _per_request(system, total),
        "proxy_wakeups_per_request": (
            round(woken / total, 2) if woken is not None and total else None
        ),
    }


def _per_request(seconds: float | None, requests: int) -> float | None:
    return round(seconds / requests * 1e6, 1) if seconds is not None and requests else None


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (and every round, for the record)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = sorted(r[key] for r in runs if r[key] is not None)
        out[key] = values[len(values) // 2] if values else None
    out["rounds"] = runs
    return out


def paired(
    runs: dict[str, list[dict[str, Any]]], key: str, name: str = "kiln", base: str = "haproxy"
) -> dict[str, Any]:
    """``name``/``base`` of ``key`` within each round, and their median.

    Beside the ratio of the two medians (the judged figure, as since the goals
    were set): the two measurements of one round ran seconds apart, so their
    ratio cancels most of what a noisy host does to both, where the medians
    may come from different rounds.
    """
    ratios = sorted(
        round(a[key] / b[key], 3)
        for a, b in zip(runs[name], runs[base], strict=True)
        if a[key] and b[key]
    )
    return {"median": ratios[len(ratios) // 2] if ratios else None, "rounds": ratios}


def _pure_summary(full: dict[str, Any], paced: dict[str, Any]) -> dict[str, Any]:
    """The Python-source balancer's figures beside the compiled one's (--pure-too)."""
    if "kiln_pure" not in full:
        return {}
    pure, kiln, ha = full["kiln_pure"], full["kiln"], full["haproxy"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    return {
        "kiln_pure_cpu_us_per_request": pure["proxy_cpu_us_per_request"],
        "kiln_pure_vs_haproxy_cpu_per_request": ratio(
            pure["proxy_cpu_us_per_request"], ha["proxy_cpu_us_per_request"]
        ),
        "kiln_pure_vs_haproxy_throughput": ratio(
            pure["requests_per_second"], ha["requests_per_second"]
        ),
        "kiln_compiled_vs_pure_cpu_per_request": ratio(
            kiln["proxy_cpu_us_per_request"], pure["proxy_cpu_us_per_request"]
        ),
        "kiln_pure_added_p99_ms_vs_direct_moderate": round(
            (paced["kiln_pure"]["p99_ms"] or 0) - (paced["direct"]["p99_ms"] or 0), 3
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians kept")
    parser.add_argument("--connections", type=int, default=64, help="connections at full load")
    parser.add_argument("--paced-connections", type=int, default=16)
    parser.add_argument(
        "--paced-delay-ms", type=float, default=5.0, help="mean pause between requests, paced"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--pure-too",
        action="store_true",
        help="also run a balancer on the Python source (KILN_PURE=1), in the same rounds",
    )
    args = parser.parse_args()
    refuse_stale_build()
    for tool in ("wrk", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/test-deps.sh (or apt-get install {tool})")

    load_before = os.getloadavg()[0]  # other work on the machine: the figures depend on it
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-bench-")))
        kiln_port, addresses, kind, kiln_pid = stack.enter_context(kiln_fleet(workdir, 2))
        ha_port, ha_pid = stack.enter_context(haproxy(addresses))
        pids: dict[str, int | None] = {"direct": None, "kiln": kiln_pid, "haproxy": ha_pid}
        compiled = mapped_in(kiln_pid)  # the form of kiln's hot path measured (KILN_PURE=1: none)
        direct_port = int(addresses[0].rsplit(":", 1)[1])
        targets = {"direct": direct_port, "kiln": kiln_port, "haproxy": ha_port}
        if args.pure_too:
            pure_port, _, _, pure_pid = stack.enter_context(kiln_fleet(workdir / "pure", 2, True))
            if mapped_in(pure_pid):
                sys.exit("the KILN_PURE=1 balancer runs compiled modules: is the agent older?")
            targets["kiln_pure"], pids["kiln_pure"] = pure_port, pure_pid
        for port in targets.values():  # warm up connections, caches, the JIT of node
            wrk(port, 8, 1)
        full_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        paced_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        bursty_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        moderate_lua = MODERATE_LUA.format(delay=args.paced_delay_ms)
        bursty_lua = BURSTY_LUA.format(delay=args.paced_delay_ms)
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hurts all alike
            for name, port in targets.items():
                full_runs[name].append(
                    wrk(port, args.connections, args.duration, proxy_pid=pids[name])
                )
            for name, port in targets.items():
                paced_runs[name].append(
                    wrk(port, args.paced_connections, args.duration, moderate_lua, pids[name])
                )
            for name, port in targets.items():
                bursty_runs[name].append(
                    wrk(port, args.paced_connections, args.duration, bursty_lua, pids[name])
                )
        full = {name: median(runs) for name, runs in full_runs.items()}
        paced = {name: median(runs) for name, runs in paced_runs.items()}
        bursty = {name: median(runs) for name, runs in bursty_runs.items()}

    ratio = full["kiln"]["requests_per_second"] / full["haproxy"]["requests_per_second"]
    kiln_cpu = full["kiln"]["proxy_cpu_us_per_request"]
    ha_cpu = full["haproxy"]["proxy_cpu_us_per_request"]
    cpu_ratio = kiln_cpu / ha_cpu if kiln_cpu and ha_cpu else None
    added_p99 = (paced["kiln"]["p99_ms"] or 0) - (paced["direct"]["p99_ms"] or 0)
    added_vs_haproxy = (paced["kiln"]["p99_ms"] or 0) - (paced["haproxy"]["p99_ms"] or 0)

    def added(load: dict[str, Any], name: str, base: str = "direct") -> float:
        return round((load[name]["p99_ms"] or 0) - (load[base]["p99_ms"] or 0), 3)

    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
        "backend": {"kind": kind, "instances": 2, "body_bytes": len(BODY) + 1},
        "compiled": compiled,  # kiln's modules the balancer ran compiled; [] is pure Python
        "load": {
            "rounds": args.rounds,
            "full": {"tool": "wrk -t2", "connections": args.connections, "seconds": args.duration},
            "moderate": {
                "tool": "wrk -t2 with a delay() script: exponential pauses, seeded per thread",
                "connections": args.paced_connections,
                "mean_pause_ms": args.paced_delay_ms,
                "seconds": args.duration,
            },
            "bursty": {
                "tool": "wrk -t2 with a delay() script: the same pause every time",
                "connections": args.paced_connections,
                "pause_ms": args.paced_delay_ms,
                "seconds": args.duration,
            },
        },
        "full_load": full,
        "moderate_load": paced,
        "bursty_load": bursty,
        "summary": {
            "kiln_vs_haproxy_throughput": round(ratio, 3),
            "kiln_cpu_us_per_request": kiln_cpu,
            "haproxy_cpu_us_per_request": ha_cpu,
            "kiln_vs_haproxy_cpu_per_request": round(cpu_ratio, 2) if cpu_ratio else None,
            "kiln_added_p99_ms_vs_direct_moderate": round(added_p99, 3),
            "kiln_added_p99_ms_vs_haproxy_moderate": round(added_vs_haproxy, 3),
            "haproxy_added_p99_ms_vs_direct_moderate": added(paced, "haproxy"),
            "kiln_added_p99_ms_vs_direct_bursty": added(bursty, "kiln"),
            "haproxy_added_p99_ms_vs_direct_bursty": added(bursty, "haproxy"),
            "kiln_added_p99_ms_vs_haproxy_bursty": added(bursty, "kiln", "haproxy"),
            **_pure_summary(full, paced),
            "per_round_kiln_vs_haproxy_throughput": paired(full_runs, "requests_per_second"),
            "per_round_kiln_vs_haproxy_cpu_per_request": paired(
                full_runs, "proxy_cpu_us_per_request"
            ),
            "goal_throughput_met": ratio >= 0.9,
            "goal_cpu_met": cpu_ratio is not None and cpu_ratio <= 1.5,
            "goal_added_p99_met": added_p99 <= 1.0,
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{'':10}{'full load req/s':>16}{'p50 ms':>9}{'p99 ms':>9}   |"
        f"{'moderate req/s':>15}{'p50 ms':>9}{'p99 ms':>9}   |"
        f"{'bursty req/s':>13}{'p50 ms':>9}{'p99 ms':>9}"
    )
    for name in full:
        f, p, b = full[name], paced[name], bursty[name]
        print(
            f"{name:10}{f['requests_per_second']:>16}{f['p50_ms']:>9}{f['p99_ms']:>9}   |"
            f"{p['requests_per_second']:>15}{p['p50_ms']:>9}{p['p99_ms']:>9}   |"
            f"{b['requests_per_second']:>13}{b['p50_ms']:>9}{b['p99_ms']:>9}"
        )
    s = report["summary"]
    print(
        f"proxy CPU per request at full load: kiln {kiln_cpu} us, haproxy {ha_cpu} us: "
        f"{s['kiln_vs_haproxy_cpu_per_request']}x (goal <= 1.5x)"
    )
    print(
        f"kiln/haproxy throughput: {s['kiln_vs_haproxy_throughput']:.2f}x (goal >= 0.9x); "
        f"kiln added p99 at moderate load: {s['kiln_added_p99_ms_vs_direct_moderate']:.2f} ms "
        f"vs direct (goal <= 1 ms), {s['kiln_added_p99_ms_vs_haproxy_moderate']:+.2f} ms vs haproxy"
        f" (haproxy adds {s['haproxy_added_p99_ms_vs_direct_moderate']:.2f} ms)"
    )
    print(
        "bursty load (connections in step): kiln adds"
        f" {s['kiln_added_p99_ms_vs_direct_bursty']:.2f} ms p99,"
        f" haproxy {s['haproxy_added_p99_ms_vs_direct_bursty']:.2f} ms;"
        " wake-ups per request, moderate/bursty:"
        f" kiln {paced['kiln']['proxy_wakeups_per_request']}/"
        f"{bursty['kiln']['proxy_wakeups_per_request']},"
        f" haproxy {paced['haproxy']['proxy_wakeups_per_request']}/"
        f"{bursty['haproxy']['proxy_wakeups_per_request']}"
    )
    each_tp = s["per_round_kiln_vs_haproxy_throughput"]
    each_cpu = s["per_round_kiln_vs_haproxy_cpu_per_request"]
    print(
        f"within each round (not the judged figure): throughput {each_tp['median']}x"
        f" (rounds {min(each_tp['rounds'], default=None)}-{max(each_tp['rounds'], default=None)}),"
        f" CPU per request {each_cpu['median']}x"
        f" (rounds {min(each_cpu['rounds'], default=None)}-{max(each_cpu['rounds'], default=None)})"
    )
    for name in ("kiln", "kiln_pure", "haproxy"):
        if name in full:
            f = full[name]
            print(
                f"  {name}: {f['proxy_user_us_per_request']} us user + "
                f"{f['proxy_sys_us_per_request']} us system per request at full load"
            )
    if "kiln_pure" in full:
        print(
            f"kiln's balancer as Python source: {s['kiln_pure_cpu_us_per_request']} us, "
            f"{s['kiln_pure_vs_haproxy_cpu_per_request']}x haproxy; compiled/source CPU: "
            f"{s['kiln_compiled_vs_pure_cpu_per_request']}x"
        )
    form = "unknown" if compiled is None else ", ".join(compiled) or "none (pure Python)"
    print(f"kiln's balancer ran these modules compiled: {form}")
    loads = report["machine"]["load_average"]
    print(f"load average {loads[0]} before, {loads[1]} after; saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
