"""Drift benchmark: 10 instances of a 1,000-file image, clean and with one tampered file.

Measures `kiln.image.drift.scan` over all instances with the stat baseline (what
`kiln drift` does) and without it (hashing every file), in one run.
Prints a table and saves benchmarks/results/drift.json.

    .venv/bin/python benchmarks/drift.py [--instances 10] [--files 1000]
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchutil import machine, save_and_print

from kiln.config import load_config
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.drift import baseline_path, record_baseline, scan
from kiln.image.store import Store


def median_time(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(3)
    work = Path(tempfile.mkdtemp(prefix="kiln-drift-"))
    try:
        app = work / "app"
        for n in range(args.files):
            path = app / f"pkg{n % 20}" / f"mod{n}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(rng.randint(500, 20_000)))
        (app / "kiln.toml").write_text('[app]\nname = "bench"\nrun = "true"\n')
        home = Home(work / "home").ensure()
        image = bake(load_config(app), home)
        store = Store(home)
        manifest = store.get(image.image).manifest
        dirs = []
        for n in range(args.instances):
            dest = work / "instances" / f"i-{n}"
            store.materialize(image.image, dest)
            record_baseline(dest)
            dirs.append(dest)

        def scan_all() -> int:
            return sum(len(scan(d, manifest)) for d in dirs)

        clean = median_time(scan_all)
        assert scan_all() == 0
        victim = dirs[3] / "pkg5" / "mod5.py"
        data = bytearray(victim.read_bytes())
        data[0] ^= 0xFF
        victim.write_bytes(bytes(data))
        tampered = median_time(scan_all)
        assert scan_all() == 1
        for d in dirs:
            baseline_path(d).unlink()
        full_hash = median_time(scan_all)
        figures = {
            "instances": args.instances,
            "files_per_image": len(manifest.files),
            "bytes_per_image": manifest.size,
            "clean_scan_s": round(clean, 4),
            "one_tampered_scan_s": round(tampered, 4),
            "hash_everything_scan_s": round(full_hash, 4),
            "baseline_speedup": round(full_hash / clean, 1),
            "per_instance_clean_ms": round(clean / args.instances * 1000, 2),
            **machine(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_and_print("drift", figures)


if __name__ == "__main__":
    main()
