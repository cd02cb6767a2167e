"""What every benchmark script records beside its figures, and how it saves them."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save_and_print(name: str, figures: dict[str, Any]) -> None:
    """benchmarks/results/<name>.json, and the same figures as a table."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key:>{width}}: {value}")


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def refuse_stale_build() -> None:
    """Exit when kiln's in-place compiled build is older than its source: kiln would
    then run the balancer as Python source (kiln.local.compiled), and a run meant to
    measure the compiled form would measure the other one."""
    from kiln.local.compiled import pure_requested, stale_builds

    stale = stale_builds()
    if stale and not pure_requested():
        sys.exit(
            "the compiled build is older than its source ("
            + ", ".join(stale)
            + "): run `make build` first, or set KILN_PURE=1 to measure the source form"
        )
