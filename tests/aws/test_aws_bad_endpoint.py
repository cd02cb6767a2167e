"""A wrong AWS endpoint is a one-line error, never a traceback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kilntest import Kiln


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_aws() -> Iterator[str]:
    """A web server that answers HTML, as a mistyped endpoint might."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")


@pytest.mark.parametrize("args", [("images", "--provider", "aws"), ("aws", "reap", "--dry-run")])
def test_an_endpoint_that_is_not_aws(
    kiln: Kiln, not_aws: str, aws_env: None, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", not_aws)
    result = kiln(*args, ok=False)
    assert result.exit_code == 1
    assert "not an AWS API response" in result.stderr and "AWS_ENDPOINT_URL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_an_endpoint_that_is_not_a_url(
    kiln: Kiln, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not-a-url")
    result = kiln("images", "--provider", "aws", ok=False)
    assert result.exit_code == 1 and "is not an http(s) URL" in result.stderr
