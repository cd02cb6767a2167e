"""Materialize benchmark: an instance directory of a 5,000-file / 100 MB image.

First instance (verify every object into the image's shared tree, then link),
second instance (stat-check the tree, link) and a second instance as a root
agent without isolation gives it (stat-check, copy) against `cp -a` of the
same tree (run last), interleaved in rounds on a fresh home each; medians kept. Goals: the
first <= 1.5x `cp -a`, the second <= 10% of the first. Saves
benchmarks/results/materialize.json.

    .venv/bin/python benchmarks/materialize.py [--files 5000] [--mb 100] [--rounds 3]
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
from pathlib import Path

from benchutil import machine, save_and_print

from kiln.home import Home
from kiln.image.store import FileEntry, Manifest, Store
from kiln.local.trees import ImageTrees


def make_image(home: Home, files: int, total: int, rng: random.Random) -> str:
    """Store an image of ``files`` files adding up to ``total`` bytes (packed, as a bake does)."""
    store = Store(home)
    source = home.tmp / "src"
    entries = []
    size = total // files
    with store.objects.batch():
        for n in range(files):
            path = source / f"pkg{n % 50}" / f"mod{n}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(size))
            digest, length = store.put_file(path)
            entries.append(FileEntry(str(path.relative_to(source)), 0o644, length, digest))
    manifest = Manifest("bench", "true", {}, sys.executable, tuple(entries))
    return store.add_image(manifest, {"created": time.time()}).id


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    """Wall time of ``fn``, starting with no dirty pages (writeback of the previous step
    would otherwise be charged to whichever step runs next)."""
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="kiln-materialize-"))
    rounds = []
    try:
        for r in range(args.rounds):
            home = Home(work / f"home{r}").ensure()
            image = make_image(home, args.files, args.mb << 20, rng)
            trees = ImageTrees(Store(home), home.agent_dir / "trees")
            first = timed(lambda: trees.materialize(image, home.instances / "i-1"))  # noqa: B023
            second = timed(lambda: trees.materialize(image, home.instances / "i-2"))  # noqa: B023
            copied = timed(  # what an instance of a root agent without isolation gets
                lambda: trees.materialize(image, home.instances / "i-3", share=False)  # noqa: B023
            )
            tree = trees.tree(image)
            copy = work / f"cp{r}"
            cp = timed(lambda: subprocess.run(["cp", "-a", str(tree), str(copy)], check=True))  # noqa: B023
            figures = {"first": first, "second": second, "second_copy": copied, "cp_a": cp}
            rounds.append({k: round(v, 3) for k, v in figures.items()})
            shutil.rmtree(home.root)
            shutil.rmtree(copy)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = statistics.median(r["first"] for r in rounds)
    second = statistics.median(r["second"] for r in rounds)
    copied = statistics.median(r["second_copy"] for r in rounds)
    cp = statistics.median(r["cp_a"] for r in rounds)
    save_and_print(
        "materialize",
        {
            **machine(),
            "files": args.files,
            "megabytes": args.mb,
            "first_seconds": first,
            "second_seconds": second,
            "second_copy_seconds": copied,
            "cp_a_seconds": cp,
            "first_vs_cp_a": round(first / cp, 2),
            "second_vs_first": round(second / first, 3),
            "second_copy_vs_first": round(copied / first, 3),
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
