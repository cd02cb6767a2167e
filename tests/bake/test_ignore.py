from __future__ import annotations

import subprocess
from pathlib import Path

import pathspec
import pytest

from kiln.image.ignore import ALWAYS_EXCLUDED, load_spec, matcher, walk

PATTERNS = [*ALWAYS_EXCLUDED, "*.pyc", "__pycache__/", "node_modules/", "build/**/x", "docs/*.md"]
PATHS = [
    "kiln.toml",
    "sub/kiln.toml",
    "x.pyc",
    "a/b/c.pyc",
    "__pycache__/",
    "a/__pycache__/",
    "node_modules/",
    "x/node_modules/",
    "build/q/x",
    "build/x",
    "docs/a.md",
    "docs/b/a.md",
    "app.py",
    ".git/",
    ".kiln/",
    "a/.git/",
    ".kilnignore",
    "deps/.kilnignore",
]


@pytest.mark.parametrize("extra", [[], ["!keep.pyc"]])
def test_fast_matcher_agrees_with_gitignore_semantics(extra: list[str]) -> None:
    spec = pathspec.GitIgnoreSpec.from_lines(PATTERNS + extra)
    fast = matcher(spec)
    for path in [*PATHS, "keep.pyc"]:
        assert fast(path) == bool(spec.match_file(path)), path


GIT_PATTERNS = [
    "deps/",
    "/build/",
    "staticfiles/",
    "*.log",
    "!keep.log",
    "docs/*.md",
    "**/cache",
    "a/**/z.txt",
    "/top.txt",
    "node_modules",
]
GIT_FILES = [
    "app.py",
    "deps/x.py",
    "src/deps/y.py",
    "build/out.js",
    "src/build/keep.js",
    "staticfiles/a.css",
    "deps2/django/contrib/staticfiles/b.css",
    "x.log",
    "keep.log",
    "sub/keep.log",
    "docs/a.md",
    "docs/sub/b.md",
    "sub/docs/c.md",
    "cache/c1",
    "p/q/cache",
    "a/z.txt",
    "a/b/c/z.txt",
    "top.txt",
    "sub/top.txt",
    "node_modules/m/index.js",
    "web/node_modules",
]


def test_source_excludes_match_what_git_ignores(tmp_path: Path) -> None:
    """Anchoring, directory-only, ** and negation: exactly git's answers."""
    for rel in GIT_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / ".gitignore").write_text("\n".join(GIT_PATTERNS) + "\n")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    listed = subprocess.run(
        ["git", "-C", str(tmp_path), "ls-files", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    kept = {e.path for e in walk(tmp_path, load_spec(tmp_path, GIT_PATTERNS)) if e.kind == "file"}
    assert kept - {".gitignore"} == set(listed) - {".gitignore"}
    assert "deps2/django/contrib/staticfiles/b.css" not in kept  # unanchored: any depth
