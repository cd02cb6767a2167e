#!/usr/bin/env python3
"""kiln's TLS termination against HAProxy's, same certificate, same backends; and what
an agent ``kill -9`` under load costs.

Starts a private agent serving two instances of lb.py's tiny keep-alive backend
behind a TLS listener (a certificate made here by openssl), and HAProxy
terminating TLS with the same certificate in front of the same instances,
then measures with wrk:

* TLS throughput   kept-alive connections: requests/s once the handshakes are done
* TLS handshakes   ``Connection: close`` on every request, so each request is a
                   new TCP connection and a full handshake: requests/s = handshakes/s

in interleaved rounds whose medians are kept. Last, a second (plain HTTP)
fleet takes a steady load (kiln.loadgen, kept-alive and fresh connections)
while the agent is SIGKILLed and started again; every failed request counts.
Writes benchmarks/results/lb_tls.json.

    python benchmarks/lb_tls.py [--duration 5] [--rounds 2]

Needs wrk, haproxy and openssl (scripts/test-deps.sh installs them).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchutil import machine, refuse_stale_build, save_and_print
from lb import backend_image, cpu_times, free_port, median, wait_port, wrk_figures

from kiln.config import load_config
from kiln.home import Home
from kiln.loadgen import LoadLoop
from kiln.local import lbproc
from kiln.local.agent import read_pid
from kiln.local.client import start_agent, stop_agent
from kiln.local.compiled import mapped_in
from kiln.local.provider import LocalProvider

CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for bench.example: (cert, key)."""
    cert, key = directory / "bench.pem", directory / "bench.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=bench.example", "-addext", "subjectAltName=DNS:bench.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def fleet_config(directory: Path, name: str, port: int, extra: str = "") -> Path:
    directory.mkdir(parents=True)
    path = directory / "kiln.toml"
    path.write_text(
        f"""
[app]
name = "{name}"
run = "true"
[health]
path = "/"
interval = "1s"
healthy_threshold = 1
[provider.local]
listen = "127.0.0.1:{port}"
{extra}
"""
    )
    return path


def serve(provider: LocalProvider, fleet: str, image: str, count: int) -> list[str]:
    provider.launch(fleet, image, count)
    deadline = time.monotonic() + 30
    while len(provider.describe(fleet).serving()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{fleet}: backends did not become healthy")
        time.sleep(0.1)
    return [i.address or "" for i in provider.describe(fleet).serving()]


@contextmanager
def haproxy_tls(
    addresses: list[str], cert: Path, key: Path, workdir: Path, pids: list[int]
) -> Iterator[int]:
    port = free_port()
    combined = workdir / "haproxy.pem"  # HAProxy wants the chain and the key in one file
    combined.write_text(cert.read_text() + key.read_text())
    servers = "\n".join(f"  server s{n} {a} maxconn 1000" for n, a in enumerate(addresses))
    config = workdir / "haproxy.cfg"
    config.write_text(
        f"""
global
  nbthread 1
  maxconn 4000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port} ssl crt {combined} alpn http/1.1
  http-request set-header X-Forwarded-Proto https
  default_backend be
backend be
  balance leastconn
{servers}
"""
    )
    proc = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=subprocess.DEVNULL)
    pids.append(proc.pid)
    try:
        try:
            wait_port(port)
        except RuntimeError:
            proc.kill()
            raise RuntimeError(f"haproxy did not start (exit {proc.wait()})") from None
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def https_wrk(
    port: int, connections: int, duration: int, close: bool, proxy_pid: int
) -> dict[str, Any]:
    """wrk against https://127.0.0.1:port; with ``close`` every request is a new handshake.

    wrk starts a full handshake for every connection (it keeps no session to resume).
    """
    cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{duration}s", "--latency"]
    script = None
    if close:
        fd, name = tempfile.mkstemp(suffix=".lua")
        os.close(fd)
        script = Path(name)
        script.write_text(CLOSE_LUA)
        cmd += ["-s", str(script)]
    cmd.append(f"https://127.0.0.1:{port}/")
    user_before, sys_before = cpu_times(proxy_pid)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    finally:
        if script is not None:
            script.unlink()
    user, system = cpu_times(proxy_pid)
    return wrk_figures(out, user - user_before, system - sys_before)


def agent_kill_under_load(home: Home, port: int, seconds: float) -> dict[str, Any]:
    """Steady load through the listener while the agent is SIGKILLed, then started again."""
    loops = [
        LoadLoop("127.0.0.1", port, workers=2, pause=0.002, max_seconds=120, max_errors=None),
        LoadLoop("127.0.0.1", port, workers=2, pause=0.002, max_seconds=120, max_errors=None,
                 fresh=True),
    ]  # fmt: skip
    for loop in loops:
        loop.start()
    try:
        time.sleep(seconds / 3)
        pid = read_pid(home)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(seconds / 3)
        start_agent(home)
        restarted_after = time.monotonic() - killed_at
        time.sleep(seconds / 3)
    finally:
        for loop in loops:
            loop.stop()
    return {
        "requests": sum(loop.sent for loop in loops),
        "failed": sum(loop.failed for loop in loops),
        "errors": sorted({e for loop in loops for e in loop.errors})[:5],
        "agent_down_seconds": round(restarted_after, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians kept")
    parser.add_argument("--connections", type=int, default=64, help="kept-alive connections")
    parser.add_argument("--handshake-connections", type=int, default=16)
    parser.add_argument("--kill-seconds", type=float, default=9.0)
    args = parser.parse_args()
    refuse_stale_build()

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-bench-")))
        home = Home(workdir / "kiln").ensure()
        os.environ["KILN_HOME"] = str(home.root)
        stack.callback(stop_agent, home, stop_instances=True)
        cert, key = certificate(workdir)
        tls_port, plain_port = free_port(), free_port()
        tls = fleet_config(workdir / "tls", "bench", tls_port,
                           f'tls_cert = "{cert}"\ntls_key = "{key}"')  # fmt: skip
        plain = fleet_config(workdir / "plain", "plain", plain_port)
        image, kind = backend_image(home)
        addresses = serve(LocalProvider(home, load_config(tls)), "bench", image, 2)
        ha_pids: list[int] = []
        ha_port = stack.enter_context(haproxy_tls(addresses, cert, key, workdir, ha_pids))
        targets = {"kiln": tls_port, "haproxy": ha_port}
        balancer = lbproc.read_pid(home)
        assert balancer is not None
        pids = {"kiln": balancer, "haproxy": ha_pids[0]}
        compiled = mapped_in(balancer)  # the form of kiln's hot path measured ([]: pure Python)
        for name, port in targets.items():
            https_wrk(port, 8, 1, False, pids[name])  # warm up
        throughput: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        handshakes: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(args.rounds):  # interleaved, so a noisy neighbour hurts both alike
            for name, port in targets.items():
                throughput[name].append(
                    https_wrk(port, args.connections, args.duration, False, pids[name])
                )
            for name, port in targets.items():
                handshakes[name].append(
                    https_wrk(port, args.handshake_connections, args.duration, True, pids[name])
                )
        serve(LocalProvider(home, load_config(plain)), "plain", image, 2)
        kill = agent_kill_under_load(home, plain_port, args.kill_seconds)

    tp = {name: median(runs) for name, runs in throughput.items()}
    hs = {name: median(runs) for name, runs in handshakes.items()}
    rps = "requests_per_second"
    figures = {
        **machine(),
        "load_average_1m": round(os.getloadavg()[0], 1),  # the neighbours' share of the cores
        "backend": kind,
        "compiled": compiled,  # kiln's modules the balancer ran compiled
        "tls_keepalive_connections": args.connections,
        "tls_throughput_kiln_rps": tp["kiln"][rps],
        "tls_throughput_haproxy_rps": tp["haproxy"][rps],
        "tls_throughput_ratio": round(tp["kiln"][rps] / tp["haproxy"][rps], 3),
        "tls_cpu_us_per_request_kiln": tp["kiln"]["proxy_cpu_us_per_request"],
        "tls_cpu_us_per_request_haproxy": tp["haproxy"]["proxy_cpu_us_per_request"],
        "tls_p99_ms_kiln": tp["kiln"]["p99_ms"],
        "tls_p99_ms_haproxy": tp["haproxy"]["p99_ms"],
        "handshake_connections": args.handshake_connections,
        "tls_handshakes_per_s_kiln": hs["kiln"][rps],
        "tls_handshakes_per_s_haproxy": hs["haproxy"][rps],
        "tls_handshake_ratio": round(hs["kiln"][rps] / hs["haproxy"][rps], 3),
        "tls_cpu_us_per_handshake_kiln": hs["kiln"]["proxy_cpu_us_per_request"],
        "tls_cpu_us_per_handshake_haproxy": hs["haproxy"]["proxy_cpu_us_per_request"],
        "errors_kiln": tp["kiln"]["socket_errors"] + tp["kiln"]["non_2xx"],
        "agent_kill": kill,
        "rounds": {"throughput": throughput, "handshakes": handshakes},
    }
    save_and_print("lb_tls", figures)
    return 0 if kill["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
