"""The balancer's side of ACME, without a CA: tokens, redirects, and sharing port 80.

The agent pushes, with its configuration, which tokens to answer on which
plain listener for which hosts (``kiln.local.challenges``). A plain fleet
may listen on that same address: requests for the ACME fleet's hosts are
answered there (token, or a redirect to https), everyone else's are routed
to the plain fleet as usual.
"""

from __future__ import annotations

import asyncio
import http.client

from localtest import free_port

from kiln.local.lbproc import BalancerHost


async def _backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.readuntil(b"\r\n\r\n"):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
        await writer.drain()


def _get(
    port: int, path: str, host: str, conn: http.client.HTTPConnection | None = None
) -> tuple[int, str, str | None]:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    return response.status, response.read().decode(), response.getheader("Location")


async def scenario() -> None:
    backend = await asyncio.start_server(_backend, "127.0.0.1", backend_port := free_port())
    port = free_port()
    plain = {
        "listen": ["127.0.0.1", port], "policy": "round-robin", "hosts": [], "tls": None,
        "backends": {"i-1": ["127.0.0.1", backend_port]}, "routable": ["i-1"], "known": ["i-1"],
    }  # fmt: skip
    acme = [
        {
            "listen": ["127.0.0.1", port],
            "tokens": {"shop.test": {"tok": "tok.thumbprint"}},
            "redirects": {"shop.test": "https://shop.test:8443"},
        }
    ]
    host = BalancerHost()
    try:
        result = await host.configure({"www": plain}, acme)
        assert result["acme"] == {"listening": [f"127.0.0.1:{port}"], "errors": {}}
        token = "/.well-known/acme-challenge/tok"
        get = lambda *a: asyncio.to_thread(_get, port, *a)  # noqa: E731
        assert await get(token, "shop.test") == (200, "tok.thumbprint", None)
        assert await get(token, "SHOP.test.:80") == (200, "tok.thumbprint", None)
        assert (await get("/.well-known/acme-challenge/other", "shop.test"))[0] == 404
        assert await get("/a?b", "shop.test") == (308, "", "https://shop.test:8443/a?b")
        assert await get(token, "www.test") == (200, "plain", None)  # not ours: the fleet's
        assert await get("/a", "www.test") == (200, "plain", None)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for name in ("shop.test", "www.test", "shop.test"):  # one kept-alive connection
            assert (await asyncio.to_thread(_get, port, "/", name, conn))[0] in (200, 308)
        conn.close()

        await host.configure({}, acme)  # the plain fleet is gone; challenges go on
        assert await get(token, "shop.test") == (200, "tok.thumbprint", None)
        assert (await get("/a", "www.test"))[0] == 404  # nobody serves it now

        await host.configure({}, [])  # no order under way, no ACME fleet: closed
        await asyncio.sleep(0.2)
        try:
            await get("/", "shop.test")
            raise AssertionError("still listening")
        except ConnectionRefusedError:
            pass
    finally:
        await host.close()
        backend.close()


def test_tokens_and_redirects_for_acme_hosts_beside_a_plain_fleet() -> None:
    asyncio.run(scenario())


async def taken_scenario() -> None:
    squatter = await asyncio.start_server(_backend, "127.0.0.1", port := free_port())
    spec = {"listen": ["127.0.0.1", port], "tokens": {}, "redirects": {"shop.test": "https://x"}}
    host = BalancerHost()
    try:
        result = await host.configure({}, [spec])
        error = result["acme"]["errors"][f"127.0.0.1:{port}"]
        assert f"127.0.0.1:{port} is already in use" in error["message"]
        assert result["acme"]["listening"] == []
    finally:
        await host.close()
        squatter.close()


def test_a_challenge_address_in_use_is_reported() -> None:
    """The agent turns this into 'cannot answer ACME challenges on ...' before ordering."""
    asyncio.run(taken_scenario())
