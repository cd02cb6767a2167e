"""WebSocket (Upgrade) through the load balancer, with real clients and servers.

The `websockets` library on both ends: the 101 passes, frames flow both
ways, each tunnel counts against its instance (so draining waits for it),
and an instance taken out of service has its tunnels closed after
``tunnel_grace`` while new connections go elsewhere. The last test does the
same through the agent across a replacement of the instance, as a rolling
deploy does it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from localtest import free_port, make_image, serving, wait_for, write_config
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kiln.config import load_config
from kiln.home import Home
from kiln.local.lb import Balancer
from kiln.local.provider import LocalProvider
from kiln.local.proxy import Limits
from kiln.local.wsclose import Frames
from kilntest import Kiln

SERVER_CLOSES: list[tuple[str, int | None]] = []  # (instance, close code it received)


def echo(name: str) -> Callable[[ServerConnection], Awaitable[None]]:
    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message if isinstance(message, bytes) else f"{name}:{message}")
        SERVER_CLOSES.append(
            (name, ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None)
        )

    return handler


def plain_answer(connection: ServerConnection, request: object) -> object:
    path = getattr(request, "path", "/")
    if path == "/plain":  # refuses to switch: an ordinary HTTP answer
        return connection.respond(426, "use the other door\n")
    return None


@contextlib.asynccontextmanager
async def fleet(names: list[str], grace: float = 0.5) -> AsyncIterator[tuple[Balancer, int]]:
    """WebSocket echo servers behind a balancer; (balancer, its port)."""
    servers = []
    lb = Balancer("t", "round-robin", Limits(tunnel_grace=grace))
    lb_port = free_port()
    await lb.start("127.0.0.1", lb_port)
    for name in names:
        port = free_port()
        servers.append(await serve(echo(name), "127.0.0.1", port, process_request=plain_answer))
        lb.add(name, "127.0.0.1", port)
    lb.set_routable(names)
    try:
        yield lb, lb_port
    finally:
        await lb.close()
        for server in servers:
            server.close()


async def echo_scenario() -> None:
    async with fleet(["a"]) as (lb, port):
        async with connect(f"ws://127.0.0.1:{port}/chat") as ws:
            assert lb.outstanding("a") == 1  # an open tunnel counts against its instance
            await ws.send("hello")
            assert await ws.recv() == "a:hello"
            big = os.urandom(1_000_000)
            await ws.send(big)
            assert await ws.recv() == big
            for n in range(50):  # many small frames, both ways, in order
                await ws.send(f"m{n}")
            assert [await ws.recv() for _ in range(50)] == [f"a:m{n}" for n in range(50)]
        await asyncio.sleep(0.2)
        assert lb.outstanding("a") == 0
        assert lb.totals.as_dict()["requests"] >= 1
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{port}/plain")
        assert refused.value.response.status_code == 426


def test_websocket_echo_through_the_balancer() -> None:
    asyncio.run(echo_scenario())


async def drain_scenario() -> None:
    async with fleet(["a", "b"], grace=0.5) as (lb, port):
        sockets = {}
        for _ in range(2):  # round-robin: one on each
            ws = await connect(f"ws://127.0.0.1:{port}/")
            await ws.send("who")
            sockets[str(await ws.recv()).split(":")[0]] = ws
        ws_a, ws_b = sockets["a"], sockets["b"]
        assert {name: lb.outstanding(name) for name in ("a", "b")} == {"a": 1, "b": 1}
        lb.set_routable(["b"])  # a is taken out of service
        started = time.monotonic()
        await ws_a.send("still here")  # within the grace, a's tunnel still works
        assert (await ws_a.recv()).endswith("still here")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws_a.recv(), 5)
        assert 0.4 < time.monotonic() - started < 3.0
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001  # Going Away
        assert ws_a.close_code == 1001  # a clean close handshake, not 1006
        await wait_async(lambda: ("a", 1001) in SERVER_CLOSES, 5)  # the instance's side too
        assert lb.outstanding("a") == 0
        await ws_b.send("unaffected")  # b's tunnel lives on
        assert (await ws_b.recv()).endswith("unaffected")
        async with connect(f"ws://127.0.0.1:{port}/") as ws_new:
            assert lb.outstanding("b") == 2  # new connections go to b only
            await ws_new.send("x")
            await ws_new.recv()
        await ws_b.close()


def test_tunnels_of_an_instance_out_of_service_close_after_the_grace() -> None:
    asyncio.run(drain_scenario())


async def wait_async(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.05)


def ws_accept(key: bytes) -> bytes:
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return base64.b64encode(digest)


async def split_frame_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]
) -> None:
    """A WebSocket server by hand: answers the handshake, then sends a 200-byte text
    frame in two halves 1.5 s apart, and records what it receives."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n"
    )
    payload = b"x" * 200
    frame = bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload
    writer.write(frame[:100])
    await asyncio.sleep(1.5)  # the grace ends while the client is inside this frame
    writer.write(frame[100:])
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            seen.append(data)
    writer.close()


async def mid_frame_scenario() -> None:
    seen: list[bytes] = []
    server = await asyncio.start_server(
        lambda r, w: split_frame_server(r, w, seen), "127.0.0.1", port := free_port()
    )
    lb = Balancer("t", "round-robin", Limits(tunnel_grace=0.3))
    await lb.start("127.0.0.1", lb_port := free_port())
    lb.add("a", "127.0.0.1", port)
    lb.set_routable(["a"])
    try:
        async with connect(f"ws://127.0.0.1:{lb_port}/") as ws:
            await asyncio.sleep(0.2)  # the first half of the frame is on its way
            lb.set_routable([])
            assert await asyncio.wait_for(ws.recv(), 10) == "x" * 200  # whole, then the close
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        await wait_async(lambda: b"".join(seen)[:1] == b"\x88", 5)
        got = b"".join(seen)
        assert got[1] == 0x82  # masked, two bytes of payload: the code
        assert bytes(b ^ got[2 + i % 4] for i, b in enumerate(got[6:8])) == b"\x03\xe9"  # 1001
    finally:
        await lb.close()
        server.close()


def test_a_close_frame_waits_for_the_end_of_the_frame_under_way() -> None:
    """Draining in the middle of a frame: the frame is finished, then 1001 follows."""
    asyncio.run(mid_frame_scenario())


WS_APP = """
import asyncio, contextlib, http, os
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

NAME = os.environ["KILN_INSTANCE_ID"]

async def echo(ws):
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            await ws.send(f"{NAME}:{message}")

def health(connection, request):
    if request.path == "/health":
        return connection.respond(http.HTTPStatus.OK, "ok\\n")

async def main():
    async with serve(echo, os.environ["HOST"], int(os.environ["PORT"]), process_request=health):
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"""


def test_websockets_across_a_replacement(local_home: Home, tmp_path: Path) -> None:
    """Old instance's sockets close after the grace; clients reconnect to the new one."""
    port = free_port()
    config = write_config(tmp_path / "app", port, extra='tunnel_grace = "1s"')
    provider = LocalProvider(local_home, load_config(config))
    image = make_image(local_home, run=f"{sys.executable} app.py", files={"app.py": WS_APP})
    [old] = provider.launch("web", image, 1)
    serving(provider, 1)
    log: list[tuple[float, str]] = []
    stop = threading.Event()

    async def client() -> None:  # keeps a socket open, reconnecting when it is closed
        while not stop.is_set():
            with contextlib.suppress(ConnectionClosed, OSError):
                async with connect(f"ws://127.0.0.1:{port}/") as ws:
                    while not stop.is_set():
                        await ws.send("ping")
                        log.append((time.monotonic(), str(await ws.recv())))
                        await asyncio.sleep(0.05)
            log.append((time.monotonic(), "closed"))
            await asyncio.sleep(0.1)

    runner = threading.Thread(target=lambda: asyncio.run(client()))
    runner.start()
    try:
        wait_for(lambda: any(m.startswith(old) for _, m in log), 60, "echoes from the old instance")
        [new] = provider.launch("web", image, 1)  # a rolling step: new one in, old one out
        wait_for(lambda: len(provider.describe("web").serving()) == 2, 15, "both serving")
        started = time.monotonic()
        provider.terminate("web", [old])
        wait_for(lambda: any(m.startswith(new) for _, m in log), 60, "echoes from the new one")
    finally:
        stop.set()
        runner.join(20)
    closed = [t for t, m in log if m == "closed" and t >= started]
    assert closed and 0.9 < closed[0] - started < 6.0  # the grace, then closed by the balancer
    last_old = max(t for t, m in log if m.startswith(old))
    assert last_old > started + 0.5  # the old socket kept working during the grace
    assert all(not m.startswith(old) for t, m in log if t > closed[0])


class Sockets:
    """Clients that each keep a WebSocket open through the balancer, reconnecting when it
    closes; every echo and every close is logged as (time, client, what)."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.log: list[tuple[float, int, str]] = []
        self.failures: list[str] = []
        self.codes: list[int | None] = []  # the close code each closed socket received
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=lambda n=n: asyncio.run(self._client(n)))
            for n in range(clients)
        ]

    async def _client(self, n: int) -> None:
        while not self._stop.is_set():
            try:
                async with connect(f"ws://127.0.0.1:{self.port}/") as ws:
                    while not self._stop.is_set():
                        await ws.send("ping")
                        self.log.append((time.monotonic(), n, str(await ws.recv())))
                        await asyncio.sleep(0.05)
            except ConnectionClosed as exc:
                self.log.append((time.monotonic(), n, "closed"))
                self.codes.append(exc.rcvd.code if exc.rcvd else None)
            except OSError as exc:  # could not connect at all: must never happen
                self.failures.append(f"client {n}: {exc}")
            await asyncio.sleep(0.05)

    def __enter__(self) -> Sockets:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)

    def instances(self, since: float = 0.0) -> set[str]:
        return {m.split(":")[0] for t, _, m in self.log if t >= since and m != "closed"}


def test_websockets_through_a_rolling_deploy(local_home: Home, tmp_path: Path) -> None:
    """kiln deploy (rolling, 2 instances): every socket on an old instance is closed
    after tunnel_grace and its client lands on a new one; nobody is refused."""
    port = free_port()
    app = tmp_path / "app"
    app.mkdir()
    (app / "kiln.toml").write_text(
        f"""
[app]
name = "web"
run = "python3 app.py"
[health]
path = "/health"
interval = "100ms"
timeout = "1s"
healthy_threshold = 2
grace = "1s"
[fleet]
size = 2
drain = "5s"
settle = "1s"
[provider.local]
listen = "127.0.0.1:{port}"
stop_timeout = "2s"
tunnel_grace = "1s"
"""
    )
    kiln = Kiln(app)
    run = f"{sys.executable} app.py"
    v1, v2 = (make_image(local_home, run=run, files={"app.py": WS_APP + f"# {v}\n"}) for v in "12")
    kiln("deploy", "--image", v1, "--json")
    provider = LocalProvider(local_home, load_config(app / "kiln.toml"))
    old = {i.id for i in provider.describe("web").serving()}
    with Sockets(port, 4) as sockets:
        wait_for(lambda: sockets.instances() == old, 60, "sockets on both old instances")
        kiln("deploy", "--image", v2, "--json")
        done = time.monotonic()
        new = {i.id for i in provider.describe("web").serving()}
        assert new.isdisjoint(old) and len(new) == 2
        wait_for(lambda: len({n for t, n, m in sockets.log if t > done}) == 4, 60, "echoes")
    assert sockets.failures == []
    closes = [(t, n) for t, n, m in sockets.log if m == "closed"]
    assert {n for _, n in closes} == {0, 1, 2, 3}  # every client lost its old socket once
    assert sockets.codes == [1001] * len(closes)  # each told "going away", none dropped (1006)
    assert sockets.instances(since=done) <= new  # and came back on a new instance


def test_frame_boundaries_are_followed_however_the_stream_is_cut() -> None:
    """The tracker the 1001 relies on: 7-, 16- and 64-bit lengths, masked or not,
    headers and payloads cut anywhere; ``stop`` takes exactly the rest of a frame."""
    frames = [
        bytes([0x81, 5]) + b"hello",
        bytes([0x02, 126]) + (300).to_bytes(2, "big") + b"x" * 300,  # a first fragment
        bytes([0x89, 0]),  # a ping between fragments
        bytes([0x80, 127]) + (70_000).to_bytes(8, "big") + b"y" * 70_000,
        bytes([0x81, 0x85]) + b"abcd" + b"12345",  # masked, as a client sends
        bytes([0x88, 2]) + b"\x03\xe8",  # close
    ]
    stream = b"".join(frames)
    ends = {sum(map(len, frames[: i + 1])) for i in range(len(frames))}
    for size in (1, 2, 3, 7, 100, 65536, len(stream)):
        frames_seen = Frames()
        for start in range(0, len(stream), size):
            assert frames_seen.feed(stream[start : start + size]) == len(stream[start:][:size])
            end = min(start + size, len(stream))
            assert frames_seen.at_boundary() == (end in ends), (size, end)
        assert frames_seen.closed
    inside = Frames()
    inside.feed(stream[:10])  # in the middle of the 300-byte fragment's header
    assert not inside.at_boundary()
    first_end = len(frames[0]) + len(frames[1])
    assert inside.feed(stream[10:], stop=True) == first_end - 10
    assert inside.at_boundary() and inside.feed(stream[first_end:], stop=True) == 0
