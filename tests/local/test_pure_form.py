"""The balancer's protocol and security tests, on its Python source.

The suite runs the compiled hot path where setup.py could build it; the
Python source is what runs everywhere else (no compiler, ``KILN_PURE=1``), so
the tests that hold the balancer to RFC 9112 and against request smuggling
run on it too, with ``KILN_PURE=1``: a subprocess per test file (2-20 s each on
a quiet machine), so the workers share them and a slow or stuck one is named.
Left out, to keep it short: the smuggler corpus against the stdlib backend
(37 s; werkzeug and gunicorn get the same vectors), the timeout and WebSocket
tests (25 s). test_lb_cost.py counts its Python budget on the source.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from localtest import pytest_pure

FORM_CHECK = "tests/local/test_compiled.py"  # checks the run really is the Python source
PROTOCOL_TESTS = (
    FORM_CHECK,
    "tests/local/test_http1_fields.py",
    "tests/local/test_lb_protocol.py",
    "tests/local/test_lb_edges.py",
    "tests/local/test_lb_forwarded.py",
    "tests/local/test_lb_streaming.py",
    "tests/local/test_smuggling.py",
    "tests/local/test_stream_batching.py",
)


@pytest.mark.parametrize("tests", PROTOCOL_TESTS, ids=lambda path: Path(path).stem)
def test_the_protocol_and_smuggling_tests_pass_on_the_python_source(tests: str) -> None:
    done = pytest_pure(
        tests, *("-k", "not (test_smuggler_mutations_keep_boundaries and stdlib)"), "-rs"
    )
    out = done.stdout[-6000:]
    assert done.returncode == 0, out
    summary = done.stdout.splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, out
    if tests == FORM_CHECK:  # its one skip is the compiled-form check, with the reason
        assert "KILN_PURE is set: this run tests the Python source only" in done.stdout, out
        assert "1 skipped" in summary, out
    else:
        assert "skipped" not in summary, out
