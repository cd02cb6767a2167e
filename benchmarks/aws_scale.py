#!/usr/bin/env python3
"""Server-group rollouts at scale on a moto server: AWS calls and time vs fleet size.

For each fleet size (default 50, 100, 200) on a fresh app behind its own ALB
target group: a first deployment, then a rolling deployment v1 -> v2 in four
batches (max_surge = size / 4), then a blue-green deployment v2 -> v1 (one
launch, one switch, old group detached and terminated). Every AWS request
kiln makes is counted from botocore's events (one request per page: pagination
is always on, and moto returns at most 100 reservations a page). Every
instance address resolves to one real local HTTP process, so kiln's own probe
runs against all of them. Writes benchmarks/results/aws_scale.json.

    python benchmarks/aws_scale.py [--sizes 50,100,200]

Linear growth is the claim: calls per instance and seconds per instance stay
flat as the fleet grows (per-instance terminate calls and per-page describes
dominate; nothing is quadratic).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from aws.awsservers import moto_server, reset_moto  # noqa: E402
from aws_deploy.awsworld import app_process, build_world  # noqa: E402
from kiln.aws.deployments import AwsDeployments  # noqa: E402
from kiln.aws.session import Aws, connect  # noqa: E402
from kiln.config import AwsSettings  # noqa: E402
from kiln.deploy.settings import Settings  # noqa: E402
from kiln.home import Home  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "aws_scale.json"
REGION = "eu-west-1"


def _aws(url: str) -> Aws:
    return connect(
        AwsSettings(region=REGION, endpoint_url=url),
        access_key_id="AKIABENCHMARK0000000",
        secret_access_key="benchmark",
    )


def run_size(url: str, size: int, app_address: str, scratch: Path) -> dict[str, Any]:
    reset_moto(url)
    admin, deploy = _aws(url), _aws(url)
    base = admin.ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    world = build_world(admin, deploy, base, delay=0)
    for image in ("img-scale0000001", "img-scale0000002"):
        world.ami(image)
        world.addresses[image] = app_address
    calls: Counter[str] = Counter()
    deploy.session.events.register("before-call", lambda model, **_: calls.update([model.name]))
    loaded = world.config(
        scratch / f"app{size}",
        size=size,
        interval="1s",
        timeout="2s",
        grace="10s",
        extra_fleet=f"max_surge = {max(1, size // 4)}\n",
    )
    home = Home.resolve(scratch / "home").ensure()
    provider = world.provider(home, loaded)
    fleet = AwsDeployments(provider, Settings.from_config(loaded.config), world.app)
    row: dict[str, Any] = {"size": size}
    for label, image, strategy in (
        ("first", "img-scale0000001", "rolling"),
        ("rolling", "img-scale0000002", "rolling"),
        ("blue_green", "img-scale0000001", "blue-green"),
    ):
        calls.clear()
        started = time.monotonic()
        result = fleet.deploy(image, strategy=strategy)
        seconds = time.monotonic() - started
        if not result.ok:
            raise SystemExit(f"{label} at size {size} failed: {result.message}")
        total = sum(calls.values())
        row[label] = {
            "seconds": round(seconds, 1),
            "aws_calls": total,
            "calls_per_instance": round(total / size, 2),
            "seconds_per_instance": round(seconds / size, 3),
            "by_operation": dict(calls.most_common()),
        }
        print(f"size {size:4d} {label:10s} {seconds:7.1f}s {total:6d} calls", flush=True)
    serving = world.targets()
    assert len(serving) == size, len(serving)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,200")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="kiln-aws-scale-") as tmp:
        scratch = Path(tmp)
        os.environ["KILN_HOME"] = str(scratch / "home")
        with moto_server(scratch / "moto.log") as url, app_process(200) as address:
            rows = [run_size(url, size, address, scratch) for size in sizes]
    out = {
        "benchmark": "aws_scale",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "setup": "moto server on 127.0.0.1 (no IAM), 4 rolling batches, health interval 1s, "
        "healthy_threshold 2, deregistration delay 0s; one local app answers every probe",
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
