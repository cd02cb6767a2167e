"""Start-up benchmark: whole `kiln` processes, as a user or a CI job runs them.

Measures, in one run and interleaved so a noisy machine hurts both sides the
same: `python3 -c pass` (the floor), `kiln --version`, `kiln --help`, a first
`kiln bake` of a ~5,000-file / ~100 MB app and a no-change `kiln bake` of it.
Goals (issue 19): --version <= 6x the floor; a no-change bake <= 5 % of the
first bake and <= 0.3 s. Saves benchmarks/results/startup.json.

    .venv/bin/python benchmarks/startup.py [--files 5000] [--mb 100] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import machine, save_and_print

from bake import generate_app

KILN = [sys.executable, "-m", "kiln.cli"]


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-startup-"))
    try:
        app = work / "app"
        generate_app(app, args.files, args.mb)
        env = {**os.environ, "KILN_HOME": str(work / "home")}
        samples: dict[str, list[float]] = {
            "floor": [], "version": [], "help": [], "first_bake": [], "nochange_bake": []
        }  # fmt: skip
        for _ in range(args.repeat):
            shutil.rmtree(work / "home", ignore_errors=True)
            samples["floor"].append(run([sys.executable, "-c", "pass"], app, env))
            samples["version"].append(run([*KILN, "--version"], app, env))
            samples["help"].append(run([*KILN, "--help"], app, env))
            samples["first_bake"].append(run([*KILN, "bake"], app, env))
            samples["nochange_bake"].append(run([*KILN, "bake"], app, env))
        med = {k: statistics.median(v) for k, v in samples.items()}
        figures = {
            **machine(),
            "files": args.files,
            "mb": args.mb,
            "repeat": args.repeat,
            **{f"{k}_s": round(v, 4) for k, v in med.items()},
            "version_vs_floor": round(med["version"] / med["floor"], 2),
            "nochange_vs_first_bake": round(med["nochange_bake"] / med["first_bake"], 3),
            "goal_version_6x_floor": med["version"] <= 6 * med["floor"],
            "goal_nochange_5pct": med["nochange_bake"] <= 0.05 * med["first_bake"],
            "goal_nochange_300ms": med["nochange_bake"] <= 0.3,
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
        save_and_print("startup", figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
