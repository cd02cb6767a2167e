"""The VM lab's fixtures: the cached base disk, and a moto server the guests reach.

The lab runs only when ``KILN_VM=1`` asks for it (``make test-vm`` sets it and
builds the base disk once per machine): under TCG the rehearsal alone takes
about 15 minutes on a quiet 2-core machine, which ``make test`` cannot afford
within its 20, so there its tests skip with the reason.
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
