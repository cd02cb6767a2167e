from __future__ import annotations

import pathspec
import pytest

from kiln.ignore import ALWAYS_EXCLUDED, matcher

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
