"""TLS termination on the listener: SNI for two fleets' hosts, reload, X-Forwarded-Proto."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from localtest import make_image, serving, wait_for, write_config

from kiln.config import load_config
from kiln.errors import ProviderError
from kiln.home import Home
from kiln.local.lb import Balancer
from kiln.local.provider import LocalProvider


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=kiln test CA", "-days", "2",
             cwd=directory)  # fmt: skip
    return directory / "ca.pem"


def _leaf(directory: Path, name: str, *hosts: str) -> tuple[Path, Path]:
    """A certificate for ``hosts`` signed by the CA in ``directory``: (cert, key)."""
    (directory / f"{name}.ext").write_text(
        "subjectAltName=" + ",".join(f"DNS:{h}" for h in hosts) + "\n"
    )
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={hosts[0]}",
             cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=directory)  # fmt: skip
    return directory / f"{name}.pem", directory / f"{name}.key"


def _fleet(home: Home, tmp_path: Path, name: str, port: int, extra: str) -> LocalProvider:
    return LocalProvider(home, load_config(write_config(tmp_path / name, port, extra, name)))


def _https(port: int, host: str, ca: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    conn.sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname=host
    )
    return conn


def _get(conn: http.client.HTTPSConnection) -> dict[str, Any]:
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200
    data: dict[str, Any] = json.loads(response.read())
    return data


def _serial(conn: http.client.HTTPSConnection) -> str:
    assert isinstance(conn.sock, ssl.SSLSocket)
    return str(conn.sock.getpeercert()["serialNumber"])


def test_tls_with_sni_for_two_fleets_reload_and_forwarded_proto(
    local_home: Home, tmp_path: Path, lb_port: int
) -> None:
    certs = tmp_path / "certs"
    ca = _ca(certs)
    shop_cert, shop_key = _leaf(certs, "shop", "shop.example.com")
    _leaf(certs, "blog", "blog.example.com", "www.blog.example.com")  # named relative below
    shop = _fleet(local_home, tmp_path, "shop", lb_port,
                  f'hosts = ["shop.example.com"]\ntls_cert = "{shop_cert}"\n'
                  f'tls_key = "{shop_key}"')  # fmt: skip
    blog = _fleet(local_home, tmp_path, "blog", lb_port,
                  'hosts = ["blog.example.com", "www.blog.example.com"]\n'
                  'tls_cert = "../certs/blog.pem"\ntls_key = "../certs/blog.key"')  # fmt: skip
    (shop_id,) = shop.launch("shop", make_image(local_home, app="shop"), 1)
    (blog_id,) = blog.launch("blog", make_image(local_home, app="blog"), 1)
    serving(shop, 1, "shop")
    serving(blog, 1, "blog")
    assert shop.describe("shop").endpoint == f"https://127.0.0.1:{lb_port}"

    # curl, as a user would: each name gets its own certificate, verified by the CA
    for host, instance in (("shop.example.com", shop_id), ("www.blog.example.com", blog_id)):
        out = subprocess.run(
            ["curl", "-sS", "--fail", "--resolve", f"{host}:{lb_port}:127.0.0.1",
             "--cacert", str(ca), f"https://{host}:{lb_port}/"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        answer = json.loads(out)
        assert answer["instance"] == instance
        assert answer["proto"] == "https"  # X-Forwarded-Proto from the actual connection

    # a client that names no server gets the first fleet's certificate (blog, by name)
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with context.wrap_socket(socket.create_connection(("127.0.0.1", lb_port), timeout=10)) as tls:
        names = {value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"}
    assert names == {"blog.example.com", "www.blog.example.com"}

    # plain HTTP on a TLS listener is a failed handshake, not a request
    with socket.create_connection(("127.0.0.1", lb_port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        assert not raw.recv(100).startswith(b"HTTP/1.1 200")

    # reload: new files take over for new handshakes; an open connection carries on
    kept = _https(lb_port, "shop.example.com", ca)
    assert _get(kept)["instance"] == shop_id
    before = _serial(kept)
    staged = tmp_path / "staged"
    staged.mkdir()
    shutil.copy(ca, staged / "ca.pem")
    shutil.copy(certs / "ca.key", staged / "ca.key")
    new_cert, new_key = _leaf(staged, "shop", "shop.example.com")
    shutil.copy(new_key, shop_key)  # key first: between the two copies nothing matches
    shutil.copy(new_cert, shop_cert)

    def renewed() -> bool:
        conn = _https(lb_port, "shop.example.com", ca)
        try:
            return _serial(conn) != before and _get(conn)["instance"] == shop_id
        finally:
            conn.close()

    wait_for(renewed, 60, "the renewed certificate")
    assert _get(kept)["instance"] == shop_id and _serial(kept) == before
    kept.close()

    # fleets sharing an address all speak TLS or none does
    plain = _fleet(local_home, tmp_path, "plain", lb_port, 'hosts = ["plain.example.com"]')
    with pytest.raises(ProviderError, match="TLS"):
        plain.launch("plain", make_image(local_home, app="plain"), 1)


def test_a_certificate_that_does_not_load_fails_the_launch(
    local_home: Home, tmp_path: Path, lb_port: int
) -> None:
    certs = tmp_path / "certs"
    _ca(certs)
    cert, _ = _leaf(certs, "a", "a.example.com")
    _, other_key = _leaf(certs, "b", "b.example.com")
    fleet = _fleet(local_home, tmp_path, "web", lb_port,
                   f'tls_cert = "{cert}"\ntls_key = "{other_key}"')  # fmt: skip
    with pytest.raises(ProviderError, match="cannot use the TLS certificate"):
        fleet.launch("web", make_image(local_home), 1)
    assert fleet.describe("web").instances == ()


def test_a_refused_request_over_tls_is_answered_without_an_error_in_the_balancer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS connection cannot half-close: the 400 goes out and nothing blows up."""
    _ca(tmp_path)
    cert, key = _leaf(tmp_path, "a", "a.example.com")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

    async def exchange() -> bytes:
        balancer = Balancer("t")
        await balancer.start("127.0.0.1", 0, server_context)
        port = balancer._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_context, server_hostname="a.example.com"
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nA b: c\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            await asyncio.sleep(0.2)  # the balancer's side finishes
            return answer
        finally:
            await balancer.close()

    with caplog.at_level(logging.ERROR):
        answer = asyncio.run(exchange())
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
