"""X-Forwarded-For/-Proto: believed from trusted proxies only, else from the connection.

A backend echoes the head it received, so the tests see exactly what an app
would. The TLS case puts the balancer's connection handler behind a TLS
listener (the hook TLS termination uses): its requests are https.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path

import pytest
from localtest import free_port, http_get, serving, write_config

from kiln.config import load_config
from kiln.home import Home
from kiln.local.lb import Balancer
from kiln.local.provider import LocalProvider
from kiln.local.proxy import networks

SPOOFED = (
    b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n"
    b"Forwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\n"
)


async def echo_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head), head))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def received(
    trusted: list[str], extra: bytes, ssl_context: ssl.SSLContext | None = None
) -> list[bytes]:
    """The header lines the instance got for one request sent with ``extra`` headers."""
    backend_port, lb_port = free_port(), free_port()
    backend = await asyncio.start_server(echo_head, "127.0.0.1", backend_port)
    lb = Balancer("t")
    lb.trusted = networks(trusted)
    lb.add("i", "127.0.0.1", backend_port)
    lb.set_routable(["i"])
    await lb.start("127.0.0.1", lb_port, ssl_context)  # with a context: TLS termination
    try:
        client_ssl = None
        if ssl_context is not None:
            client_ssl = ssl.create_default_context()
            client_ssl.check_hostname = False
            client_ssl.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection("127.0.0.1", lb_port, ssl=client_ssl)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await lb.close()
        backend.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return answer.partition(b"\r\n\r\n")[2].split(b"\r\n")


def test_untrusted_clients_claims_are_replaced() -> None:
    lines = asyncio.run(received([], SPOOFED))
    assert b"X-Forwarded-For: 127.0.0.1" in lines
    assert b"X-Forwarded-Proto: http" in lines
    assert not [line for line in lines if b"6.6.6.6" in line or b"evil" in line]
    # a trusted block that does not hold the client changes nothing
    assert asyncio.run(received(["10.0.0.0/8"], SPOOFED)) == lines


def test_a_trusted_proxys_claims_are_kept_and_extended() -> None:
    lines = asyncio.run(received(["127.0.0.1/32"], SPOOFED))
    assert b"X-Forwarded-For: 6.6.6.6, 127.0.0.1" in lines
    assert b"X-Forwarded-Proto: https" in lines
    assert b"X-Forwarded-Host: evil.example" in lines
    assert b"Forwarded: for=6.6.6.6;proto=https" in lines
    # a scheme that is neither http nor https is not believed even from a trusted proxy
    odd = asyncio.run(received(["127.0.0.0/8"], b"X-Forwarded-Proto: gopher\r\n"))
    assert b"X-Forwarded-Proto: http" in odd and b"X-Forwarded-For: 127.0.0.1" in odd


@pytest.fixture
def tls_context(tmp_path: Path) -> ssl.SSLContext:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"),
            *("-days", "1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_a_tls_listener_makes_requests_https(tls_context: ssl.SSLContext) -> None:
    lines = asyncio.run(received([], SPOOFED.replace(b"https", b"http"), tls_context))
    assert b"X-Forwarded-Proto: https" in lines
    assert b"X-Forwarded-For: 127.0.0.1" in lines


def test_trusted_proxies_from_kiln_toml(local_home: Home, image: str, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "app", port, extra='trusted_proxies = ["127.0.0.1"]')
    provider = LocalProvider(local_home, load_config(config))
    provider.launch("web", image, 1)
    serving(provider, 1)
    headers = {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"}
    status, doc = http_get(port, headers=headers)
    assert status == 200
    assert doc["xff"] == "10.1.2.3, 127.0.0.1" and doc["proto"] == "https"


def test_hop_by_hop_and_trailer_announcements_are_not_forwarded() -> None:
    extra = b"Trailer: X-Checksum\r\nTE: trailers\r\nKeep-Alive: 5\r\nX-App: kept\r\n"
    lines = asyncio.run(received([], extra))
    names = {line.split(b":")[0].lower() for line in lines if b":" in line}
    assert b"x-app" in names
    assert not names & {b"trailer", b"te", b"keep-alive"}
