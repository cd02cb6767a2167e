"""Writes held to the end of the event loop's turn (``Stream.send_soon``).

The balancer sends a request, or a response, from the callback that read it;
``send_soon`` holds the bytes until the loop has run every callback of this
turn, so an instance (or a client) that several connections write to wakes once
for all of them. benchmarks/lb.py measured what it is for; these tests hold what
it must never change: nothing is lost, nothing is reordered, and nothing waits
past the turn. Real sockets, on the loop the balancer runs (uvloop when there).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from kiln.local.procs import loop_factory
from kiln.local.stream import Stream, protocol_factory


async def _pair() -> tuple[Stream, socket.socket]:
    """A Stream on one end of a connected pair; the other end, non-blocking, to read."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    stream = Stream()
    await asyncio.get_running_loop().connect_accepted_socket(protocol_factory(lambda: stream), ours)
    return stream, theirs


def _received(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""


async def _turn() -> None:
    """Let the loop finish this turn (and the held bytes go out)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0.05)


def _run(test: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(test())  # type: ignore[arg-type]


def test_bytes_wait_for_the_end_of_the_turn_and_all_go_together() -> None:
    async def test() -> None:
        pairs = [await _pair() for _ in range(3)]
        sent: list[bytes] = []

        def one_callback() -> None:  # as a read callback answering three clients
            for n, (stream, theirs) in enumerate(pairs):
                stream.send_soon(b"request %d" % n)
                stream.send_soon(b" and more")  # two writes in a turn: one send
                sent.append(_received(theirs))  # nothing yet, in this callback

        asyncio.get_running_loop().call_soon(one_callback)
        await _turn()
        assert sent == [b"", b"", b""]
        assert [_received(theirs) for _, theirs in pairs] == [
            b"request 0 and more",
            b"request 1 and more",
            b"request 2 and more",
        ]
        for stream, theirs in pairs:
            stream.close()
            theirs.close()

    _run(test)


@pytest.mark.parametrize(
    ("then", "expected"),
    [
        ("write", b"held;written"),  # a direct write sends what is held first
        ("close", b"held"),  # so does close: the held bytes still go out
        ("write_eof", b"held"),
        ("abort", b""),  # an abort drops them, as it drops the transport's buffer
    ],
)
def test_held_bytes_keep_their_order_and_survive_a_close(then: str, expected: bytes) -> None:
    async def test() -> None:
        stream, theirs = await _pair()
        stream.send_soon(b"held")
        if then == "write":
            stream.write(b";written")
        else:
            getattr(stream, then)()
        await _turn()
        got = _received(theirs)
        assert got == expected
        stream.close()
        theirs.close()

    _run(test)


def test_a_connection_lost_before_the_end_of_the_turn_drops_its_bytes_quietly() -> None:
    async def test() -> None:
        stream, theirs = await _pair()
        other, other_peer = await _pair()
        stream.send_soon(b"for a closed peer")
        other.send_soon(b"still delivered")
        stream.abort()  # gone before the turn ends: the flush must not fail
        await _turn()
        assert stream.closed
        assert _received(other_peer) == b"still delivered"
        other.close()
        for sock in (theirs, other_peer):
            sock.close()

    _run(test)


def test_a_body_streaming_through_is_sent_as_it_comes_not_held_for_the_turn() -> None:
    """The loop reads an instance up to 32 times a turn: a download's chunks were all
    held (4.6 MB a turn, copied whole at each append) and sent at the turn's end, and
    flow control saw nothing until then. Past HOLD_LIMIT, what is held goes at once."""
    chunk = b"x" * (256 * 1024)

    async def test() -> None:
        stream, theirs = await _pair()
        seen: list[int] = []

        def one_callback() -> None:  # as reads of one response's body in one turn
            for _ in range(4):
                stream.send_soon(chunk)
                seen.append(len(_received(theirs)))

        asyncio.get_running_loop().call_soon(one_callback)
        await _turn()
        assert seen[0] == 0  # the first is held, as any answer is
        assert sum(seen) > 0, seen  # the next send what was held: it is on its way
        got = sum(seen)
        deadline = asyncio.get_running_loop().time() + 10
        while got < 4 * len(chunk) and asyncio.get_running_loop().time() < deadline:
            got += len(_received(theirs)) or (await asyncio.sleep(0.01) or 0)
        assert got == 4 * len(chunk)
        stream.close()
        theirs.close()

    _run(test)
