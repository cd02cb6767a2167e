"""The VM lab's fixtures: the cached base disk, and a moto server the guests reach.

The lab runs when ``KILN_VM=1`` asks for it: ``make test`` sets it (its
rehearsal runs on one xdist worker while the others run the rest of the suite)
and so does ``make test-vm``; a plain ``pytest`` skips it with the reason. The
base disk is built here on first use, so on a fresh machine its build (minutes,
from the Debian mirror) also overlaps the rest of the suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmlab import base_dir, build_base, have_tools

from aws.awsservers import moto_server


@pytest.fixture(scope="session")
def vm_base() -> Path:
    missing = have_tools()
    if missing:
        if os.environ.get("KILN_VM") == "1":
            pytest.fail(f"KILN_VM=1 but {missing}")
        pytest.skip(missing)
    if os.environ.get("KILN_VM") != "1":
        pytest.skip("the VM lab runs with KILN_VM=1: make test-vm")
    base = base_dir()
    if not (base / "disk.qcow2").exists():
        base = build_base()
    return base


@pytest.fixture(scope="session")
def lab_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto on 127.0.0.1: kiln's EC2 calls, and the guests' IMDS and SSM (via guestfwd)."""
    with moto_server(tmp_path_factory.mktemp("moto-vm") / "moto.log") as url:
        yield url
