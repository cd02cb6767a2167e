#!/usr/bin/env python3
"""A bake that copies its AMI to other regions: AWS calls and time, 0 vs 1 vs 3 copy regions.

On a moto server (tests/aws/motopatched.py: a copy stays ``pending`` for
``--copy-seconds``, as AWS's take minutes) with the loopback SSH server as the
builder, an encrypted AMI (``kms_key_id`` an alias present in every region)
shared with one account: for each number of copy regions, a first bake, then
at once the lookup a deploy in the source region starts with (the image's
available AMI there, ``AwsProvider.image_exists``), noting that the copies are
still pending then; then, once the copies are available, the bake that
finishes them (shares them; nothing else to do). Every AWS request is counted
from botocore's events, by operation and region. Writes
benchmarks/results/aws_copies.json.

    python benchmarks/aws_copies.py [--copy-seconds 20]

The claim: the bake's time does not grow with the copies (each is one
DescribeImages, one DescribeKey and one CopyImage, not a wait), and the
source region's deploy can start while every copy is still pending.
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
sys.path.insert(0, str(ROOT / "tests" / "aws"))

from awskit import SOURCE_AMI, write_app  # noqa: E402
from awsservers import SshServer, moto_server, reset_moto  # noqa: E402

from kiln.aws.ami import bake_ami  # noqa: E402
from kiln.aws.builder import Builder  # noqa: E402
from kiln.aws.provider import AwsProvider  # noqa: E402
from kiln.aws.session import Aws, connect  # noqa: E402
from kiln.aws.ssh import SshTarget  # noqa: E402
from kiln.config import AwsSettings  # noqa: E402
from kiln.home import Home  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "aws_copies.json"
REGION = "eu-west-1"
COPY_REGIONS = ("us-east-1", "us-west-2", "ap-southeast-2")


def _aws(url: str) -> Aws:
    return connect(
        AwsSettings(region=REGION, endpoint_url=url),
        access_key_id="AKIABENCHMARK0000000",
        secret_access_key="benchmark",
    )


def _prepare(admin: Aws) -> None:
    """In every region: a base image of one name, and a KMS key under one alias."""
    for region in (REGION, *COPY_REGIONS):
        there = admin.in_region(region)
        source = there.ec2.run_instances(ImageId=SOURCE_AMI, MinCount=1, MaxCount=1)
        there.ec2.create_image(
            InstanceId=source["Instances"][0]["InstanceId"], Name="debian-12-amd64-20260101-1234"
        )
        key = there.client("kms").create_key()["KeyMetadata"]["KeyId"]
        there.client("kms").create_alias(AliasName="alias/kiln-ami", TargetKeyId=key)


def run(url: str, copies: int, ssh: SshServer, scratch: Path, wait: float) -> dict[str, Any]:
    reset_moto(url)
    admin = _aws(url)
    _prepare(admin)
    aws = _aws(url)
    calls: Counter[str] = Counter()

    def count(model: Any, context: Any = None, **_kwargs: Any) -> None:
        calls.update([model.name])

    aws.session.events.register("before-call", count)
    regions = list(COPY_REGIONS[:copies])
    root = scratch / f"root{copies}"
    root.mkdir()

    def target(builder: Builder) -> SshTarget:
        ssh.authorize(builder.key)
        return SshTarget(
            host="127.0.0.1",
            port=ssh.port,
            username="admin",
            key=builder.key,
            sudo=False,
            root=str(root),
        )

    extra = (
        'base_image = "debian-12-amd64-*"\nbase_image_owner = "self"\n'
        'kms_key_id = "alias/kiln-ami"\nshare_with_accounts = ["111122223333"]\n'
        f"copy_to_regions = {regions!r}\n"
    )
    loaded = write_app(scratch / f"app{copies}", extra=extra)
    home = Home.resolve(scratch / f"home{copies}").ensure()
    started = time.monotonic()
    baked = bake_ami(loaded, home, aws=aws, ssh_target=target)
    bake_seconds = time.monotonic() - started
    bake_calls = dict(calls)
    # what a deploy in the source region looks up first: the image's available AMI there
    provider = AwsProvider(home, loaded, aws=aws)
    lookup_started = time.monotonic()
    ready = provider.image_exists(baked.image)
    lookup_seconds = time.monotonic() - lookup_started
    states = [c.state for c in baked.copies]
    pending_then = [
        aws.in_region(c.region).ec2.describe_images(ImageIds=[c.ami or ""])["Images"][0]["State"]
        for c in baked.copies
    ]
    time.sleep(wait)
    calls.clear()
    started = time.monotonic()
    finished = bake_ami(loaded, home, aws=aws)
    finish_seconds = time.monotonic() - started
    row = {
        "copy_regions": copies,
        "bake": {
            "seconds": round(bake_seconds, 2),
            "aws_calls": sum(bake_calls.values()),
            "by_operation": dict(sorted(bake_calls.items())),
            "copies": states,
        },
        "source_deploy_can_start": {
            "after_bake_seconds": round(lookup_seconds, 3),
            "ami_available": ready,
            "copies_then": pending_then,
        },
        "finishing_bake": {
            "seconds": round(finish_seconds, 2),
            "aws_calls": sum(calls.values()),
            "by_operation": dict(sorted(calls.items())),
            "copies": [c.state for c in finished.copies],
        },
    }
    print(
        f"{copies} copy region(s): bake {bake_seconds:.2f}s {sum(bake_calls.values())} calls, "
        f"copies {states}, then {pending_then}; finishing bake {finish_seconds:.2f}s "
        f"{sum(calls.values())} calls",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy-seconds", type=float, default=20.0)
    args = parser.parse_args()
    os.environ["KILN_MOTO_COPY_SECONDS"] = str(args.copy_seconds)
    with tempfile.TemporaryDirectory(prefix="kiln-aws-copies-") as tmp:
        scratch = Path(tmp)
        os.environ["KILN_HOME"] = str(scratch / "home")
        ssh = SshServer()
        ssh.start()
        try:
            with moto_server(scratch / "moto.log") as url:
                rows = [run(url, n, ssh, scratch, args.copy_seconds + 1) for n in (0, 1, 3)]
        finally:
            ssh.stop()
    out = {
        "benchmark": "aws_copies",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "setup": f"moto server on 127.0.0.1 (no IAM), copies pending {args.copy_seconds:g}s, "
        "loopback SSH builder, encrypted with an alias present in every region, shared "
        "with one account; a first bake, the source-region AMI lookup a deploy starts "
        "with, then the bake that finishes the available copies",
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
