"""The lab's base-disk cache is keyed by what goes into the disk (no VM is booted here)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from vmlab import REPO


def _path(script: Path, cache: Path) -> str:
    done = subprocess.run(
        [str(script), "--path"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cache), "KILN_VM_CACHE": str(cache)},
    )
    return done.stdout.strip()


def test_base_disk_cache_is_keyed_by_packages_and_customisation(tmp_path: Path) -> None:
    script = REPO / "scripts/vm-base.sh"
    first = _path(script, tmp_path)
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/[0-9a-f]{{16}}", first)
    assert _path(script, tmp_path) == first  # stable: the cache is found again
    assert not Path(first).exists()  # --path builds nothing

    text = script.read_text()
    variants = {
        "package": text.replace("python3 sudo", "python3 sudo less"),
        "customisation": text.replace("manage_etc_hosts: true", "manage_etc_hosts: false"),
    }
    for what, changed in variants.items():
        assert changed != text, what
        copy = tmp_path / f"vm-base-{what}.sh"
        copy.write_text(changed)
        copy.chmod(0o755)
        assert _path(copy, tmp_path) != first, f"a changed {what} must build another disk"
