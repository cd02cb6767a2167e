"""A bake killed outright leaves tagged resources; ``kiln aws reap`` removes them."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from awskit import leftovers
from awsservers import free_port

from kiln.aws.reap import reap
from kiln.aws.session import Aws
from kiln.config import LoadedConfig

pytestmark = pytest.mark.aws
HERE = Path(__file__).parent


def test_reap_removes_what_a_killed_bake_left(
    aws: Aws, app_factory: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    loaded = app_factory(ssh_timeout="5m")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "killable_bake.py"),
            str(loaded.path),
            str(tmp_path / "kiln-home"),
            str(free_port()),
        ],
        env={**os.environ, "PYTHONPATH": str(HERE)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(leftovers(aws)) < 3:  # builder, security group and key pair exist
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, leftovers(aws)
            time.sleep(0.2)
    finally:
        proc.kill()  # SIGKILL: no finally, no context manager runs
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    left = leftovers(aws)
    assert {k: len(v) for k, v in left.items()} == {"instances": 1, "groups": 1, "key_pairs": 1}

    # not expired yet: a live bake may own them, so reap keeps them
    kept = reap(aws)
    assert kept.removed == () and len(kept.kept) == 3
    assert leftovers(aws) == left

    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=3)
    preview = reap(aws, dry_run=True, now=later)
    assert [i.kind for i in preview.removed] == ["instance", "security-group", "key-pair"]
    assert leftovers(aws) == left

    done = reap(aws, now=later)
    assert {i.id for i in done.removed} == {i for ids in left.values() for i in ids}
    assert leftovers(aws) == {}
    assert reap(aws, now=later).removed == ()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "ci-cancel"])
def test_interrupted_process_cleans_up(
    aws: Aws, app_factory: Callable[..., LoadedConfig], tmp_path: Path, signum: int
) -> None:
    loaded = app_factory(ssh_timeout="5m")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "killable_bake.py"),
            str(loaded.path),
            str(tmp_path / "kiln-home"),
            str(free_port()),
        ],
        env={**os.environ, "PYTHONPATH": str(HERE)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(leftovers(aws)) < 3:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, leftovers(aws)
            time.sleep(0.2)
        proc.send_signal(signum)  # Ctrl-C, or SIGTERM as CI runners send on cancel
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode != 0
    assert leftovers(aws) == {}


def test_a_cancelled_ci_bake_cleans_up_within_ten_seconds(
    aws: Aws, app_factory: Callable[..., LoadedConfig], tmp_path: Path
) -> None:
    """GitHub sends SIGKILL ~10 s after cancelling; AWS takes 30-90 s to terminate.

    The bake's EC2 is made to behave as AWS's (instances stay shutting-down, their
    security group cannot be deleted yet): the key pair is gone, the builder is
    terminating, the process exits well within the window, and the security group
    is left tagged for the scheduled reap to remove once it expires.
    """
    loaded = app_factory(ssh_timeout="5m")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "killable_bake.py"),
            str(loaded.path),
            str(tmp_path / "kiln-home"),
            str(free_port()),
            "slow",
        ],
        env={**os.environ, "PYTHONPATH": str(HERE)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(leftovers(aws)) < 3:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, leftovers(aws)
            time.sleep(0.2)
        cancelled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)  # the old order waited for "terminated" here, for minutes
        took = time.monotonic() - cancelled
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert took < 10, took
    left = leftovers(aws)
    assert list(left) == ["groups"], left  # no key pair; the builder is terminating
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=3)
    assert reap(aws).removed == ()  # not expired: a bake might own it
    assert [i.kind for i in reap(aws, now=later).removed] == ["security-group"]
    assert leftovers(aws) == {}
