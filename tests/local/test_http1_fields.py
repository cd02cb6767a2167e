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


def test_remembered_spellings_never_change_a_verdict_and_take_no_more_room() -> None:
    """Spellings share a fixed table (``_SPELLINGS``): thousands of names, each
    evicting whatever shared its slot, leave every field classified as before."""
    slots = len(http1._SPELLING_KINDS) if hasattr(http1, "_SPELLING_KINDS") else 1024
    for n in range(slots * 5):
        spelling = b"X-Name-%d" % n
        head = request(
            (b"Host", b"x"),
            (spelling, b"v"),
            (b"Content-Length" if n % 2 else b"content-length", b"5"),
            (b"Connection" if n % 3 else b"CONNECTION", b"close, X-Drop"),
            (b"X-Drop", b"d"),
            (b"X_Forwarded_For" if n % 2 else b"x_forwarded_for", b"1.2.3.4"),  # an impostor
            (b"Keep-Alive", b"timeout=5"),
            (b"X-" + b"n" * 100, b"long"),  # never remembered, still kept
        )
        assert head.length == 5 and head.close and head.host == b"x"
        assert head.fields == spelling + b": v\r\n" + b"X-" + b"n" * 100 + b": long\r\n", n
    if hasattr(http1, "_SPELLINGS"):  # the Python source form: the table itself is at hand
        assert len(http1._SPELLINGS) == slots
        assert b"X-" + b"n" * 100 not in http1._SPELLINGS


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


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_target_is_origin_form_only_with_visible_ascii_after_its_slash(where: str) -> None:
    """The second lock behind llhttp's own (compiled, a loop; else a regular expression)
    refuses every byte but visible ASCII, wherever it stands in the target."""
    for byte in range(256):
        spot = {"start": b"/" + bytes([byte]) + b"ab", "middle": b"/a" + bytes([byte]) + b"b"}
        target = spot.get(where, b"/ab" + bytes([byte]))
        f = Fields(431)
        f.add(b"Host", b"x")
        if 0x21 <= byte <= 0x7E:
            assert make_request(b"GET", target, "1.1", f).target == target
        else:
            with pytest.raises(BadMessage, match="bad request target"):
                make_request(b"GET", target, "1.1", f)


def test_a_target_without_its_slash_is_not_origin_form() -> None:
    for target in (b"", b"a/b", b"?q", b"*"):
        f = Fields(431)
        f.add(b"Host", b"x")
        with pytest.raises(BadMessage, match="bad request target"):
            make_request(b"GET", target, "1.1", f)
    f = Fields(431)
    f.add(b"Host", b"x")
    assert make_request(b"GET", b"/", "1.1", f).target == b"/"
    assert make_request(b"GET", b"http://x/p?q", "1.1", f).target == b"/p?q"


def test_a_connections_last_good_host_never_lets_a_bad_one_through() -> None:
    """Each connection remembers the last Host it sent that was valid (``good_host``):
    a different one is checked, every time, whatever came before it."""
    f = Fields(431)
    sent = [b"a.example", b"a.example", b"a example", b"a.example", b"b.example:8080", b"a\x7fb"]
    for host, good in zip(sent, (True, True, False, True, True, False), strict=True):
        f.reset()
        f.add(b"Host", host)
        if good:
            assert make_request(b"GET", b"/", "1.1", f).host == host
        else:
            with pytest.raises(BadMessage, match="bad Host"):
                make_request(b"GET", b"/", "1.1", f)


def test_a_response_reason_other_than_ok_is_still_checked() -> None:
    for reason, good in ((b"OK", True), (b"Fine By Me", True), (b"O\x00K", False)):
        f = Fields(502)
        f.add(b"Content-Length", b"0")
        if good:
            assert make_response(200, reason, "1.1", f).reason == reason
        else:
            with pytest.raises(BadMessage, match="bad status line"):
                make_response(200, reason, "1.1", f)


@pytest.mark.parametrize(
    "spelled", [b"0", b"7", b"0042", b"129", b"9" * 18, b"9" * 19, b"1" + b"0" * 30]
)
def test_a_content_length_is_the_number_it_spells(spelled: bytes) -> None:
    """Compiled, short lengths are added up digit by digit (``_digits``), longer ones
    go to ``int()``: either way the number spelled, never a C integer overflowed."""
    f = Fields(431)
    f.add(b"Host", b"x")
    f.add(b"Content-Length", spelled)
    assert make_request(b"POST", b"/", "1.1", f).length == int(spelled)


def test_a_plain_head_is_the_object_the_class_would_make() -> None:
    """Plain heads are made without ``__init__`` (``_plain_request``, ``_plain_response``):
    every slot is set, to what the class's own defaults would give."""
    req = request((b"Host", b"x"), (b"Content-Length", b"3"), (b"X-A", b"1"))
    made = http1.Request(b"GET", b"/", b"1.1", b"x", b"X-A: 1\r\n", length=3)
    for slot in http1.Request.__slots__:
        assert getattr(req, slot) == getattr(made, slot), slot
    f = Fields(502)
    f.add(b"Content-Length", b"2")
    f.add(b"Content-Type", b"text/plain")
    resp = make_response(200, b"OK", "1.1", f)
    made_resp = http1.Response(200, b"OK", b"1.1", b"Content-Type: text/plain\r\n", length=2)
    for slot in http1.Response.__slots__:
        assert getattr(resp, slot) == getattr(made_resp, slot), slot
