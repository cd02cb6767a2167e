from __future__ import annotations

from pathlib import Path

from kiln.image.store import Store

APP_PY = """\
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "deps"))
print("hello from", os.environ.get("KILN_IMAGE", "?"))
"""


def write_app(root: Path, *, name: str = "shop", extra: str = "", files: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(APP_PY)
    (root / "static").mkdir(exist_ok=True)
    for n in range(files):
        (root / "static" / f"f{n}.txt").write_text(f"file {n}\n" * (n + 1))
    (root / "kiln.toml").write_text(f'[app]\nname = "{name}"\nrun = "python3 app.py"\n{extra}')
    return root


def corrupt(store: Store, sha: str) -> None:
    """Flip bytes of a stored object in place, wherever it lives."""
    where = store.objects.locate(sha)
    assert where is not None
    path, offset = (where, 0) if isinstance(where, Path) else (where.pack, where.offset)
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(b"tampered")
