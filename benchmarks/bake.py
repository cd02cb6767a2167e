"""Bake benchmark: kiln bake against the physical floor, tar | sha256sum.

Generates an app of ~5,000 files / ~100 MB of mixed sizes and measures, in
one run: the floor, a full bake, a no-change re-bake, a one-file-change
re-bake, and peak memory of a bake for a small vs a large file (memory must
not grow with file size). Prints a table and saves benchmarks/results/bake.json.

    .venv/bin/python benchmarks/bake.py [--files 5000] [--mb 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchutil import machine, save_and_print

from kiln.config import load_config
from kiln.home import Home
from kiln.image.bake import bake


def generate_app(root: Path, files: int, total_mb: int, seed: int = 7) -> int:
    """Mostly small files, some medium, a few large: like a real app with assets."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "kiln.toml").write_text('[app]\nname = "bench"\nrun = "python3 app.py"\n')
    budget = total_mb * 1024 * 1024
    large = [budget // 10] * 3  # 30%: three big assets
    sizes = [rng.randint(200, 8_000) for _ in range(int(files * 0.9))]
    remaining = budget - sum(large) - sum(sizes)
    medium_count = files - len(sizes) - len(large)
    sizes += [max(1, remaining // medium_count)] * medium_count + large
    written = 0
    for n, size in enumerate(sizes):
        path = root / f"pkg{n % 37}" / f"mod{n % 11}" / f"file{n}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        written += size
    old = time.time() - 60
    for path in root.rglob("*"):
        os.utime(path, (old, old))  # as a checkout would be: not written this instant
    return written


def timed(fn: Callable[[], object], repeat: int, setup: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tar_floor(root: Path) -> None:
    subprocess.run("tar -cf - . | sha256sum > /dev/null", shell=True, cwd=root, check=True)


def peak_rss_of_bake(app: Path, home: Path) -> int:
    """Peak RSS (KiB) of a real `kiln bake` process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "bake", "--json"],
        cwd=app,
        env={**os.environ, "KILN_HOME": str(home)},
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"bake failed with status {status}")
    return int(usage.ru_maxrss)


def one_big_file_app(root: Path, mb: int) -> Path:
    root.mkdir(parents=True)
    (root / "kiln.toml").write_text('[app]\nname = "big"\nrun = "true"\n')
    with (root / "blob.bin").open("wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(mb):
            f.write(chunk)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    try:
        app = work / "app"
        size = generate_app(app, args.files, args.mb)
        loaded = load_config(app)
        tar_floor(app)  # warm the page cache for everyone

        homes = iter(range(10_000))

        def fresh_home() -> Home:
            return Home(work / f"home{next(homes)}").ensure()

        floor = timed(lambda: tar_floor(app), args.repeat)
        full_times = []
        for _ in range(args.repeat):
            home = fresh_home()
            start = time.perf_counter()
            result = bake(loaded, home)
            full_times.append(time.perf_counter() - start)
        full = statistics.median(full_times)
        nochange = timed(lambda: bake(loaded, home), args.repeat)
        target = next(app.rglob("file1.dat"))

        counter = iter(range(10_000))

        def touch_one() -> None:
            target.write_bytes(f"changed {next(counter)}".encode() * 100)

        onefile = timed(lambda: bake(loaded, home), args.repeat, setup=touch_one)

        small = peak_rss_of_bake(one_big_file_app(work / "small", 20), work / "hs")
        large = peak_rss_of_bake(one_big_file_app(work / "large", 400), work / "hl")

        figures = {
            "files": result.files,
            "bytes": size,
            "tar_sha256sum_s": round(floor, 4),
            "full_bake_s": round(full, 4),
            "nochange_rebake_s": round(nochange, 4),
            "onefile_rebake_s": round(onefile, 4),
            "full_vs_floor": round(full / floor, 3),
            "nochange_vs_full": round(nochange / full, 4),
            "onefile_vs_full": round(onefile / full, 4),
            "peak_rss_kib_20mb_file": small,
            "peak_rss_kib_400mb_file": large,
            "peak_rss_ratio_400_vs_20": round(large / small, 3),
            "goals": {
                "full_vs_floor<=1.5": full / floor <= 1.5,
                "nochange_vs_full<=0.05": nochange / full <= 0.05,
                "onefile_vs_full<=0.10": onefile / full <= 0.10,
                "memory_flat(ratio<=1.2)": large / small <= 1.2,
            },
            **machine(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_and_print("bake", figures)


if __name__ == "__main__":
    main()
