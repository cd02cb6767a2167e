"""`kiln ci summary`: kiln's JSON results as the CI job summary."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kilntest import Kiln


def test_results_become_markdown_tables(kiln: Kiln) -> None:
    (kiln.cwd / "bake.json").write_text(
        json.dumps({"image": "img-3f2a9c1d0b7e", "reused": True, "aws": {"ami": "ami-1"}})
    )
    (kiln.cwd / "deploy.json").write_text(
        json.dumps(
            {
                "outcome": "rolled-back",
                "from": "img-aaa",
                "to": "img-bbb",
                "steps": [{"batch": 1, "launched": ["i-1", "i-2"], "note": "a|b"}],
            }
        )
    )
    text = kiln("ci", "summary", "bake.json", "deploy.json").stdout
    assert "### bake: img-3f2a9c1d0b7e\n" in text and "| image | img-3f2a9c1d0b7e |" in text
    assert "| aws.ami | ami-1 |" in text
    assert "### deploy: rolled-back" in text
    assert "| batch | launched | note |" in text
    assert '| 1 | ["i-1","i-2"] | a\\|b |' in text


def test_a_step_that_never_wrote_a_result_is_reported_not_fatal(kiln: Kiln) -> None:
    (kiln.cwd / "bake.json").write_text('{"image": "img-1"}')
    (kiln.cwd / "deploy.json").write_text("Traceback: boom\n")
    text = kiln("ci", "summary", "bake.json", "deploy.json", "missing.json").stdout
    assert "### deploy: not a JSON result: Traceback: boom" in text
    assert "### missing\n\n_no result" in text
