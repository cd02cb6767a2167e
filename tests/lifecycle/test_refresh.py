"""kiln refresh: a host library replaced under running instances, found and replaced."""

from __future__ import annotations

import ctypes.util
import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2ekit import Load
from localtest import APP, make_image

from kiln.home import Home
from kilntest import Kiln

pytestmark = pytest.mark.slow


def _real_library() -> Path:
    """A real shared library of the host (zlib), to load a copy of."""
    name = ctypes.util.find_library("z") or "libz.so.1"
    for where in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        if (Path(where) / name).exists():
            return (Path(where) / name).resolve()
    pytest.skip("no zlib shared library on this host")


@pytest.fixture
def host_lib() -> Iterator[Path]:
    """A library under /usr, as a distribution package would install it."""
    where = Path("/usr/local/lib") / f"kiln-test-{secrets.token_hex(4)}"
    try:
        where.mkdir(parents=True)
    except PermissionError:
        pytest.skip("needs to write under /usr/local/lib (root)")
    lib = where / "libkilntest.so"
    shutil.copy2(_real_library(), lib)
    try:
        yield lib
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _status(kiln: Kiln) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(kiln("status", "--json").stdout)
    return data


def test_instances_on_a_replaced_library_are_named_and_replaced(
    site: tuple[Kiln, int], home: Home, host_lib: Path
) -> None:
    kiln, port = site
    app = f"import ctypes\n_lib = ctypes.CDLL({str(host_lib)!r})\n" + APP
    kiln("deploy", "--image", make_image(home, files={"app.py": app}))
    assert all(not i["stale"] for i in _status(kiln)["instances"])
    assert "nothing to refresh" in kiln("refresh").stdout

    # the security update: the package manager writes the new file and renames it over
    upgraded = host_lib.with_suffix(".so.new")
    shutil.copy2(host_lib, upgraded)
    upgraded.replace(host_lib)
    before = {i["id"]: i["stale"] for i in _status(kiln)["instances"] if i["state"] == "healthy"}
    assert len(before) == 2 and all(s == [str(host_lib)] for s in before.values()), before
    assert "kiln refresh" in kiln("status").stdout

    with Load(port) as load:
        result = json.loads(kiln("refresh", "--reason", "zlib update", "--json").stdout)
    assert result["outcome"] == "succeeded" and result["kind"] == "refresh", result
    assert load.sent > 20 and load.failed == 0, load.errors[:5]
    after = [i for i in _status(kiln)["instances"] if i["state"] == "healthy"]
    assert len(after) == 2 and not {i["id"] for i in after} & set(before)
    assert all(not i["stale"] for i in after)  # the new processes mapped the new file
    history = json.loads(kiln("history", "--json").stdout)
    assert history[0]["kind"] == "refresh" and history[0]["reason"] == "zlib update"
