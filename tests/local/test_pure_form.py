"""The balancer's protocol and security tests, on its Python source.

The suite runs the compiled hot path where setup.py could build it; the
Python source is what runs everywhere else (no compiler, ``KILN_PURE=1``), so
the tests that hold the balancer to RFC 9112 and against request smuggling
run on it too, in one subprocess with ``KILN_PURE=1`` (about 25 s, mostly
waiting on slow clients and backends). Left out, to keep it short: the smuggler
corpus against the stdlib backend (37 s; werkzeug and gunicorn get the same
vectors), the timeout and WebSocket tests (25 s). test_lb_cost.py counts its
Python budget on the source.
"""

from __future__ import annotations

from localtest import pytest_pure

PROTOCOL_TESTS = (
    "tests/local/test_compiled.py",  # checks this run really is the Python source
    "tests/local/test_http1_fields.py",
    "tests/local/test_lb_protocol.py",
    "tests/local/test_lb_edges.py",
    "tests/local/test_lb_forwarded.py",
    "tests/local/test_lb_streaming.py",
    "tests/local/test_smuggling.py",
    "tests/local/test_stream_batching.py",
)


def test_the_protocol_and_smuggling_tests_pass_on_the_python_source() -> None:
    done = pytest_pure(
        *PROTOCOL_TESTS,
        *("-k", "not (test_smuggler_mutations_keep_boundaries and stdlib)"),
        "-rs",
    )
    out = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, out
    assert "KILN_PURE is set: this run tests the Python source only" in done.stdout, out
    assert "1 skipped" in done.stdout, out  # only that one: the pure run checked its own form
