"""Header fields classified as llhttp hands them over (``kiln.local.http1.Fields``).

The end-to-end rules are held by test_smuggling.py and test_lb_edges.py
through a real balancer; these pin what the per-field classification adds:
its shortcuts (common Connection values, remembered spellings and Hosts)
never change a verdict, and what it remembers stays bounded.
"""

from __future__ import annotations

import pytest

from kiln.local import http1
from kiln.local.http1 import BadMessage, Fields, make_request, make_response


def request(*fields: tuple[bytes, bytes], version: str = "1.1") -> http1.Request:
    f = Fields(431)
    for name, value in fields:
        f.add(name, value)
    return make_request(b"GET", b"/", version, f)


def test_connection_fields_split_over_two_lines_are_all_honoured() -> None:
    head = request(
        (b"Host", b"x"),
        (b"Connection", b"close"),  # the common value, taken without a parse
        (b"Connection", b"X-Drop"),  # a second field: merged, not lost
        (b"X-Drop", b"secret"),
        (b"X-Keep", b"1"),
    )
    assert head.close
    assert head.fields == b"X-Keep: 1\r\n"


def test_keep_alive_and_close_follow_the_version() -> None:
    assert not request((b"Host", b"x")).close
    assert request((b"Host", b"x"), version="1.0").close
    assert not request((b"Connection", b"Keep-Alive"), version="1.0").close
    assert request((b"Host", b"x"), (b"Connection", b"close")).close


def test_one_fields_object_serves_message_after_message() -> None:
    """Reset between messages: nothing of one head leaks into the next."""
    f = Fields(431)
    f.add(b"Host", b"x")
    f.add(b"Transfer-Encoding", b"chunked")
    f.add(b"Connection", b"Upgrade, X-A")
    f.add(b"Upgrade", b"websocket")
    with pytest.raises(BadMessage, match="chunked body on an Upgrade"):
        make_request(b"GET", b"/", "1.1", f)
    f.reset()
    f.add(b"Host", b"x")
    f.add(b"X-A", b"kept now")
    head = make_request(b"GET", b"/", "1.1", f)
    assert (head.chunked, head.upgrade, head.close) == (False, None, False)
    assert head.fields == b"X-A: kept now\r\n"


def test_a_bad_host_is_refused_every_time_and_never_remembered() -> None:
    for _ in range(2):
        with pytest.raises(BadMessage, match="bad Host"):
            request((b"Host", b"x y"))
    assert b"x y" not in http1._GOOD_HOSTS
    with pytest.raises(BadMessage, match="more than one Host"):
        request((b"Host", b"x"), (b"Host", b"x"))


def test_remembered_spellings_stay_bounded() -> None:
    kept = dict(http1._KINDS)
    try:
        before = len(http1._KINDS)
        for n in range(http1._KINDS_MAX + 100):
            request((b"Host", b"x"), (b"X-Name-%d" % n, b"v"))
        request((b"Host", b"x"), (b"X-" + b"n" * 100, b"v"))  # long names are never kept
        assert len(http1._KINDS) <= max(before, http1._KINDS_MAX)
        assert b"X-" + b"n" * 100 not in http1._KINDS
        # a remembered spelling is still the same kind of field
        assert request((b"Host", b"x"), (b"content-length", b"5")).length == 5
    finally:  # a full cache would make later tests in this process (test_lb_cost) pay more
        http1._KINDS.clear()
        http1._KINDS.update(kept)


def test_field_limits_on_each_side() -> None:
    f = Fields(431)
    with pytest.raises(BadMessage, match="too many header fields") as refused:
        for n in range(http1.MAX_FIELDS + 1):
            f.add(b"X-%d" % n, b"v")
    assert refused.value.status == 431
    f = Fields(502)
    with pytest.raises(BadMessage, match="instance answered too many") as failed:
        for n in range(http1.MAX_FIELDS + 1):
            f.add(b"X-%d" % n, b"v")
    assert failed.value.status == 502
    f = Fields(502)
    f.add(b"Content-Length", b"2")
    f.add(b"Transfer-Encoding", b"chunked")
    with pytest.raises(BadMessage, match="instance answered: Transfer-Encoding together"):
        make_response(200, b"OK", "1.1", f)


def test_trailers_are_checked_after_the_head() -> None:
    f = Fields(431)
    f.add(b"Host", b"x")
    f.add(b"Transfer-Encoding", b"chunked")
    make_request(b"POST", b"/", "1.1", f)
    f.add(b"X-Trailer", b"fine")
    f.add(b"Bad Name", b"v")
    assert f.trailers == [(b"X-Trailer", b"fine"), (b"Bad Name", b"v")]
    with pytest.raises(BadMessage, match="bad header field"):
        f.end_trailers()
