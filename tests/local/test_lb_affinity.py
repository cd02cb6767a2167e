"""Session affinity ([fleet] sticky = "cookie") in the balancer, against real servers.

aiohttp instances answer with their name and the Cookie header they got; raw
sockets send what a browser would, and what an attacker would.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from localtest import free_port

from kiln.local import affinity
from kiln.local.lb import Balancer
from kiln.local.proxy import networks

KEY = b"k" * 32
WS_KEY = base64.b64encode(b"0123456789abcdef").decode()


def instance(name: str) -> web.Application:
    async def answer(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str(name)
            await ws.close()
            return ws
        cookie = request.headers.get("Cookie", "-")
        response = web.Response(text=f"{name} {cookie}")
        if "cache" in request.query:  # what the app says about caching this answer
            response.headers["Cache-Control"] = request.query["cache"]
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@asynccontextmanager
async def fleet(
    names: list[str], sticky: bool = True, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Balancer, int]]:
    """aiohttp instances behind a round-robin balancer; (balancer, its port)."""
    runners = []
    lb = Balancer("web", "round-robin")
    port = free_port()
    await lb.start("127.0.0.1", port, tls)
    for name in names:
        runner = web.AppRunner(instance(name), access_log=None)
        await runner.setup()
        backend_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", backend_port).start()
        runners.append(runner)
        lb.add(name, "127.0.0.1", backend_port)
    lb.set_routable(names)
    affinity.configure(lb, {"max_age": None} if sticky else None, KEY)
    try:
        yield lb, port
    finally:
        await lb.close()
        for runner in runners:
            await runner.cleanup()


async def get(
    port: int,
    *fields: str,
    tls: ssl.SSLContext | None = None,
    upgrade: bool = False,
    target: str = "/socket.io/?EIO=4",
    named: str = "set-cookie",
) -> tuple[str, list[str], str]:
    """One request on its own connection: (status line, values of the ``named`` field
    (Set-Cookie), body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    lines = [f"GET {target} HTTP/1.1", "Host: app.test", *fields]
    if upgrade:
        lines += ["Connection: Upgrade", "Upgrade: websocket", f"Sec-WebSocket-Key: {WS_KEY}"]
        lines += ["Sec-WebSocket-Version: 13"]
    else:
        lines.append("Connection: close")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    if upgrade:
        frame = await reader.readexactly(2)  # the instance's first frame: a short text
        body = (await reader.readexactly(frame[1] & 0x7F)).decode()
    else:
        body = (await reader.read()).decode()
    writer.close()
    status, *rest = head.split("\r\n")
    cookies = [v for n, _, v in (f.partition(": ") for f in rest) if n.lower() == named]
    return status, cookies, body


def value(set_cookie: str) -> str:
    match = re.match(r"kiln_web=([^;]*);", set_cookie)
    assert match, set_cookie
    return match.group(1)


async def pinned(port: int) -> dict[str, str]:
    """instance name -> a cookie value that names it, from fresh clients."""
    found: dict[str, str] = {}
    for _ in range(6):
        _, cookies, body = await get(port)
        found[body.split()[0]] = value(cookies[0])
    return found


async def sticks_and_strips() -> None:
    async with fleet(["a", "b", "c"]) as (lb, port):
        status, cookies, body = await get(port)
        assert status == "HTTP/1.1 200 OK" and len(cookies) == 1
        attrs = cookies[0].split("; ")[1:]
        assert attrs == ["Path=/", "HttpOnly", "SameSite=Lax"]  # a session cookie, no Secure
        token = value(cookies[0])
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", token)  # opaque: 128 bits of an HMAC
        name = body.split()[0]
        backend = lb.backends[name]
        assert token == affinity.Affinity("web", KEY).token(name).decode()  # the HMAC
        assert str(backend.port) not in token
        for _ in range(6):  # round-robin would spread these; the cookie pins them
            status, again, body = await get(port, f"Cookie: kiln_web={token}")
            assert body == f"{name} -"  # kiln's cookie is not forwarded
            assert again == []  # the client has the right one: not set again
        # other cookies reach the app as sent, in order, with kiln's taken out
        _, again, body = await get(port, f"Cookie: sid=1; kiln_web={token};theme=dark")
        assert body == f"{name} sid=1; theme=dark" and again == []
        _, again, body = await get(port, "Cookie: sid=1", f"Cookie: kiln_web={token}")
        assert body.startswith(name) and again == []
        _, _, body = await get(port, "Cookie: a=1;  b = 2 ;c")  # no kiln cookie: untouched
        assert body.split(" ", 1)[1] == "a=1;  b = 2 ;c"


def test_a_cookie_pins_a_client_and_never_reaches_the_app() -> None:
    asyncio.run(sticks_and_strips())


async def forged() -> None:
    async with fleet(["a", "b"]) as (_lb, port):
        tokens = await pinned(port)
        assert set(tokens) == {"a", "b"} and tokens["a"] != tokens["b"]
        bad = [
            "kiln_web=",
            "kiln_web=AAAAAAAAAAAAAAAAAAAAAA",  # the right shape, no instance
            "kiln_web=a",  # an instance's id
            "kiln_web==;;;==",
            'kiln_web="' + tokens["a"][:-1] + '"',
            "kiln_web=" + tokens["a"] + "x",
            "kiln_web",
            ";;",
            "kiln_web=\x80\xff" + tokens["a"],
            "=" + tokens["a"],
            "kiln_web2=" + tokens["a"],
        ]
        seen: set[str] = set()
        for cookie in bad:
            status, cookies, body = await get(port, f"Cookie: {cookie}")
            assert status == "HTTP/1.1 200 OK", cookie
            name = body.split()[0]
            seen.add(name)
            assert [value(c) for c in cookies] == [tokens[name]], cookie  # set afresh
        assert seen == {"a", "b"}  # balanced as usual, not sent to one instance
        # the first valid one wins; a quoted value (RFC 6265 allows it) is understood
        _, cookies, body = await get(port, f'Cookie: kiln_web="{tokens["b"]}"')
        assert body.startswith("b ") and cookies == []
        both = f"Cookie: kiln_web=junk; kiln_web={tokens['a']}; kiln_web={tokens['b']}"
        _, cookies, body = await get(port, both)
        assert body == "a -" and cookies == []


def test_a_forged_or_malformed_cookie_is_balanced_as_usual_and_set_again() -> None:
    asyncio.run(forged())


async def moves_when_out_of_service() -> None:
    async with fleet(["a", "b"]) as (lb, port):
        tokens = await pinned(port)
        lb.set_routable(["b"])  # a drains (a rolling deploy takes it out)
        _, cookies, body = await get(port, f"Cookie: kiln_web={tokens['a']}")
        assert body.startswith("b ") and [value(c) for c in cookies] == [tokens["b"]]
        lb.set_routable(["a", "b"])  # back in service: its clients return to it
        _, cookies, body = await get(port, f"Cookie: kiln_web={tokens['a']}")
        assert body.startswith("a ") and cookies == []
        lb.remove("a")  # gone: its token names nobody now
        _, cookies, body = await get(port, f"Cookie: kiln_web={tokens['a']}")
        assert body.startswith("b ") and [value(c) for c in cookies] == [tokens["b"]]
        # an instance that refuses connections: the request is retried elsewhere and the
        # cookie set for the one that answered
        dead = free_port()
        lb.add("a", "127.0.0.1", dead)
        affinity.configure(lb, {"max_age": None}, KEY)
        lb.set_routable(["a", "b"])
        _, cookies, body = await get(port, f"Cookie: kiln_web={tokens['a']}")
        assert body.startswith("b ") and [value(c) for c in cookies] == [tokens["b"]]


def test_an_instance_out_of_service_loses_its_clients_to_another() -> None:
    asyncio.run(moves_when_out_of_service())


async def upgrades() -> None:
    async with fleet(["a", "b"]) as (_lb, port):
        tokens = await pinned(port)
        for name in ("a", "b", "a", "b"):
            status, cookies, body = await get(
                port, f"Cookie: kiln_web={tokens[name]}", upgrade=True
            )
            assert status == "HTTP/1.1 101 Switching Protocols"
            assert body == name and cookies == []
        status, cookies, body = await get(port, upgrade=True)  # no cookie: the 101 sets one
        assert status.startswith("HTTP/1.1 101") and [value(c) for c in cookies] == [tokens[body]]


def test_upgrades_follow_the_cookie_and_a_101_sets_it() -> None:
    asyncio.run(upgrades())


async def off_and_durations() -> None:
    async with fleet(["a", "b"], sticky=False) as (lb, port):
        names = set()
        for _ in range(4):
            _, cookies, body = await get(port, "Cookie: kiln_web=x")
            assert cookies == []  # off: no cookie set, none taken out
            assert body.split(" ", 1)[1] == "kiln_web=x"
            names.add(body.split()[0])
        assert names == {"a", "b"}
        affinity.configure(lb, {"max_age": 3600}, KEY)  # turned on while running
        _, cookies, _ = await get(port)
        assert cookies[0].split("; ")[1:] == ["Path=/", "Max-Age=3600", "HttpOnly", "SameSite=Lax"]
        lb.trusted = networks(["127.0.0.1"])  # a TLS proxy in front says https: Secure
        _, cookies, _ = await get(port, "X-Forwarded-Proto: https")
        assert "; Secure" in cookies[0]
        lb.trusted = ()  # nobody else is believed
        _, cookies, _ = await get(port, "X-Forwarded-Proto: https")
        assert "; Secure" not in cookies[0]


def test_off_means_no_cookie_and_a_duration_is_its_max_age() -> None:
    asyncio.run(off_and_durations())


async def caching(cache: str | None) -> tuple[list[str], list[str]]:
    """Cache-Control of an answer that sets the cookie, and of one that does not."""
    async with fleet(["a", "b"]) as (_, port):
        target = "/page" if cache is None else f"/page?cache={cache}"
        _, cookies, _ = await get(port, target=target)
        _, setting, _ = await get(port, target=target, named="cache-control")
        _, kept, _ = await get(
            port, f"Cookie: kiln_web={value(cookies[0])}", target=target, named="cache-control"
        )
        _, again, _ = await get(port, f"Cookie: kiln_web={value(cookies[0])}", target=target)
        assert again == []  # the cookie named who answered: nothing set, nothing marked
        return setting, kept


def test_an_answer_setting_the_cookie_is_kept_from_shared_caches() -> None:
    """A CDN in front would otherwise give one client's cookie, and instance, to all."""
    assert asyncio.run(caching(None)) == (["private"], [])
    public = "public, max-age=600"
    assert asyncio.run(caching("public,%20max-age=600")) == ([public, "private"], [public])
    for own in ("no-store", "private", "private, max-age=60", "max-age=0, No-Store"):
        quoted = own.replace(" ", "%20")
        assert asyncio.run(caching(quoted)) == ([own], [own])  # the app's word is enough


def _tls(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a self-signed app.test."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=app.test",
         "-addext", "subjectAltName=DNS:app.test", "-days", "1"],
        cwd=directory, check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.create_default_context(cafile=str(directory / "cert.pem"))
    client.check_hostname = False
    return server, client


async def secure(directory: Path) -> None:
    server, client = _tls(directory)
    async with fleet(["a"], tls=server) as (_lb, port):
        _, cookies, body = await get(port, tls=client)
        assert body == "a -"
        assert cookies[0].split("; ")[1:] == ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"]


def test_the_cookie_is_secure_on_a_tls_listener(tmp_path: Path) -> None:
    asyncio.run(secure(tmp_path))


def test_the_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "affinity.key"
    key = affinity.load_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert affinity.load_key(path) == key  # a restarted balancer keeps its clients' cookies
    path.write_bytes(b"short")
    assert affinity.load_key(path) != key and len(path.read_bytes()) == 32
    one = affinity.Affinity("web", key)
    assert one.token("i-1") == affinity.Affinity("web", key).token("i-1")
    assert one.token("i-1") != affinity.Affinity("web", os.urandom(32)).token("i-1")
    assert one.token("i-1") != affinity.Affinity("api", key).token("i-1")


NAMED = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = sys.argv[2].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _raw_get(port: int, *fields: str) -> tuple[list[str], str]:
    return asyncio.run(_one(port, *fields))


async def _one(port: int, *fields: str) -> tuple[list[str], str]:
    _, cookies, body = await get(port, *fields)
    return cookies, body


def test_cookies_stay_valid_across_a_balancer_restart(tmp_path: Path) -> None:
    """The balancer process as the agent runs it: sticky comes in the configure message,
    and the secret it keeps in the home outlives the process."""
    from lbharness import BalancerProcess, wait_port

    ports = [free_port(), free_port()]
    servers = [
        subprocess.Popen([sys.executable, "-c", NAMED, str(p), name])
        for p, name in zip(ports, ("a", "b"), strict=True)
    ]
    try:
        for p in ports:
            wait_port(p)
        home = tmp_path / "home"
        first = BalancerProcess(home)
        try:
            port = first.serve(*ports)
            first.fleets["f0"]["sticky"] = {"max_age": None}
            first.call("configure", fleets=first.fleets)
            cookies, body = _raw_get(port)
            token = re.match(r"kiln_f0=([^;]*);", cookies[0])
            assert token is not None, cookies
            fleets = first.fleets
        finally:
            first.stop()
        key = home / "agent" / "affinity.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        second = BalancerProcess(home)
        try:
            second.fleets = fleets
            assert second.call("configure", fleets=fleets)["listening"]["f0"]
            wait_port(port)
            for _ in range(4):  # round-robin would alternate; the cookie holds
                again, same = _raw_get(port, f"Cookie: kiln_f0={token.group(1)}")
                assert (again, same) == ([], body)
        finally:
            second.stop()
    finally:
        for server in servers:
            server.kill()
            server.wait(10)
