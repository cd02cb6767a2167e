"""Large downloads through kiln's load balancer, against the same download straight
from the instance, in one run.

A private agent serves one instance of a Python backend that answers every GET
with a body of --mb MiB (Content-Length, written 1 MiB at a time). curl fetches
it, in interleaved rounds, straight from the instance and through the balancer;
the medians and their ratio are kept. Then --slow clients download at 20 MB/s
each, and the balancer's resident memory is read while they do: a slow client
must cost the balancer a bounded buffer, not whatever the instance could send.

Before the fix in kiln.local.stream (send_soon sends what it holds once it
passes HOLD_LIMIT), a 1 GiB download took 4 s through the balancer against
0.4 s straight, the balancer held up to 4.6 MB per turn of its loop for one
stream, and four slow clients grew it by 44 MB. Saves
benchmarks/results/download.json.

    .venv/bin/python benchmarks/download.py [--mb 1024] [--rounds 3] [--slow 4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchutil import machine, save_and_print
from lb import kiln_fleet

from kiln.home import Home
from kiln.image.store import FileEntry, Manifest, Store

BACKEND = r"""
import os, socket, threading
size = int(os.environ["BODY_BYTES"])
chunk = b"x" * (1 << 20)

def serve(conn):
    f = conn.makefile("rb")
    while True:
        line = f.readline()
        if not line:
            return
        while f.readline() not in (b"\r\n", b""):
            pass
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        left = size
        while left:
            n = min(left, len(chunk))
            conn.sendall(chunk[:n])
            left -= n

server = socket.create_server((os.environ["HOST"], int(os.environ["PORT"])))
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def _image(home: Home, size: int) -> str:
    store = Store(home)
    source = Path(tempfile.mkdtemp(dir=home.tmp)) / "backend.py"
    source.write_text(BACKEND)
    digest, length = store.put_file(source)
    manifest = Manifest(
        app="download",
        run=f"{sys.executable} backend.py",
        env={"BODY_BYTES": str(size)},
        python=sys.executable,
        files=(FileEntry("backend.py", 0o644, length, digest),),
    )
    return store.add_image(manifest, {"created": time.time()}).id


def _fetch(url: str, rate: str | None = None) -> float:
    """Seconds for one whole download (curl, body thrown away)."""
    started = time.monotonic()
    limit = ["--limit-rate", rate] if rate else []
    subprocess.run(["curl", "-sf", "-o", "/dev/null", *limit, url], check=True)
    return time.monotonic() - started


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="body size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow", type=int, default=4, help="clients reading at 20 MB/s")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-download-"))
    with kiln_fleet(work, 1, image_of=lambda home: (_image(home, args.mb << 20), "python")) as (
        listen,
        (address,),
        _kind,
        balancer,
    ):
        direct_url, kiln_url = f"http://{address}/", f"http://127.0.0.1:{listen}/"
        _fetch(kiln_url)  # warm: the instance connection, the allocator
        direct, through = [], []
        for _ in range(args.rounds):
            direct.append(_fetch(direct_url))
            through.append(_fetch(kiln_url))
        idle = _rss_mb(balancer)
        slow = [
            threading.Thread(target=_fetch, args=(kiln_url, "20M"), daemon=True)
            for _ in range(args.slow)
        ]
        for thread in slow:
            thread.start()
        time.sleep(3.0)
        busy = _rss_mb(balancer)
        for thread in slow:
            thread.join()
    d, k = statistics.median(direct), statistics.median(through)
    save_and_print(
        "download",
        {
            **machine(),
            "body_mib": args.mb,
            "rounds": args.rounds,
            "direct_seconds": round(d, 3),
            "kiln_seconds": round(k, 3),
            "kiln_mib_per_second": round(args.mb / k, 1),
            "kiln_vs_direct_time": round(k / d, 2),
            "balancer_rss_mb_idle": round(idle, 1),
            "slow_clients": args.slow,
            "balancer_rss_mb_with_slow_clients": round(busy, 1),
            "rss_mb_per_slow_client": round((busy - idle) / max(args.slow, 1), 2),
        },
    )


if __name__ == "__main__":
    main()
