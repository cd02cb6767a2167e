"""Automatic certificates (ACME) against a real ACME server: Debian's pebble, offline.

pebble (Let's Encrypt's test CA) runs on 127.0.0.1 with pebble-challtestsrv
as its DNS, which answers 127.0.0.1 for every name; pebble's HTTP-01 port is
kiln's plain ``acme.http`` listener. So the whole exchange is real: kiln's
account, the order, pebble fetching the token from the balancer, the
certificate, a TLS client verifying it against pebble's root, renewal at two
thirds of a short lifetime, and a CA that goes away.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from localtest import free_port, make_image, serving, wait_for, write_config
from test_tls import _ca, _leaf

from kiln.config import load_config
from kiln.errors import ProviderError
from kiln.home import Home
from kiln.local.provider import LocalProvider
from kilntest import Kiln

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pebble") is None, reason="pebble is not installed"),
]
VALIDITY = 45  # seconds: renewed at 2/3, i.e. 30 s after issue


@dataclass
class Pebble:
    directory: str
    ca_bundle: Path  # signs pebble's own HTTPS certificate
    root: Path  # pebble's issuing root: what a client trusts for kiln's certificate
    http_port: int  # where pebble sends HTTP-01 validations: kiln's acme.http
    procs: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)


def _get(url: str, ca: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        return bytes(response.read())


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    where = tmp_path / "pebble"
    ca = _ca(where)
    cert, key = _leaf(where, "pebble", "localhost")
    dns, api, mgmt, http_port, challtest = (free_port() for _ in range(5))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{api}",
            "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": VALIDITY,
        }
    }
    (where / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    log = (where / "pebble.log").open("wb")
    challtestsrv = ["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                    "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "",
                    "-tlsalpn01", "", "-management", f"127.0.0.1:{challtest}"]  # fmt: skip
    ca_server = ["pebble", "-config", str(where / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns}"]
    procs = [
        subprocess.Popen(challtestsrv, stdout=log, stderr=subprocess.STDOUT),
        subprocess.Popen(ca_server, stdout=log, stderr=subprocess.STDOUT, env=env),
    ]
    server = Pebble(f"https://localhost:{api}/dir", ca, where / "root.pem", http_port, procs)
    try:
        wait_for(lambda: _ok(lambda: _get(server.directory, ca)), 30, "pebble's directory")
        (where / "root.pem").write_bytes(_get(f"https://localhost:{mgmt}/roots/0", ca))
        yield server
    finally:
        server.stop()


def _ok(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except OSError:
        return False
    return True


def _acme_config(pebble: Pebble, directory: str | None = None) -> str:
    return (
        'hosts = ["shop.test"]\n'
        f'acme = {{ directory = "{directory or pebble.directory}", email = "ops@shop.test", '
        f'http = "127.0.0.1:{pebble.http_port}", ca_bundle = "{pebble.ca_bundle}" }}\n'
    )


def _tls(port: int, root: Path) -> ssl.SSLSocket:
    """A verifying TLS connection for shop.test, trusting only pebble's root."""
    context = ssl.create_default_context(cafile=str(root))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="shop.test")


def _serial(sock: ssl.SSLSocket) -> str:
    return str(sock.getpeercert()["serialNumber"])


def _request(sock: ssl.SSLSocket) -> int:
    conn = http.client.HTTPSConnection("shop.test", timeout=10)
    conn.sock = sock
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    return response.status


def _plain(port: int, path: str, host: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status, response.getheader("Location")


def test_a_certificate_from_pebble_served_renewed_and_kept_when_the_ca_goes(
    local_home: Home, tmp_path: Path, pebble: Pebble
) -> None:
    port = free_port()
    app = tmp_path / "app"
    config = write_config(app, port, _acme_config(pebble))
    provider = LocalProvider(local_home, load_config(config))
    started = time.monotonic()
    provider.launch("web", make_image(local_home), 1)
    serving(provider, 1)
    issued = time.monotonic() - started

    # a TLS client that trusts only pebble's root verifies the chain for shop.test
    first = _tls(port, pebble.root)
    assert _request(first) == 200
    cert = first.getpeercert()
    assert ("DNS", "shop.test") in cert["subjectAltName"]
    assert "Pebble" in str(cert["issuer"])

    # kept private: the account key, the certificate key and chain
    acme = local_home.root / "acme"
    assert stat.S_IMODE(acme.stat().st_mode) == 0o700
    files = [p for p in acme.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"key.pem", "privkey.pem", "fullchain.pem"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)

    # the plain listener: https redirects for the fleet's host, nothing for others
    assert _plain(pebble.http_port, "/a?b=1", "shop.test") == (
        308,
        f"https://shop.test:{port}/a?b=1",
    )
    assert _plain(pebble.http_port, "/.well-known/acme-challenge/nope", "shop.test")[0] == 404
    assert _plain(pebble.http_port, "/.well-known/acme-challenge/nope", "evil.test")[0] == 404

    assert "certificate shop.test  valid until" in Kiln(app)("status").stdout
    status = json.loads(Kiln(app)("status", "--json").stdout)["certificate"]
    assert status["names"] == ["shop.test"] and status["error"] is None
    assert status["not_before"] <= time.time() < status["renew_at"]  # not due at once
    print(f"issued {time.time() - status['not_before']:.1f}s ago; lifetime "
          f"{status['not_after'] - status['not_before']:.0f}s")  # fmt: skip
    assert status["renew_at"] == pytest.approx(
        status["not_before"] + (status["not_after"] - status["not_before"]) * 2 / 3
    )

    # renewal at 2/3 of the lifetime: new handshakes get the new certificate, the
    # kept-alive connection goes on undisturbed
    wait_for(lambda: _serial(_tls(port, pebble.root)) != _serial(first), VALIDITY, "renewal")
    assert _request(first) == 200

    # the CA goes away: the next renewal fails, status says why, the certificate serves on
    pebble.stop()
    renewed = json.loads(Kiln(app)("status", "--json").stdout)["certificate"]

    def failed() -> bool:
        now = json.loads(Kiln(app)("status", "--json").stdout)["certificate"]
        return bool(now["error"])

    wait_for(failed, VALIDITY, "a failed renewal")
    now = json.loads(Kiln(app)("status", "--json").stdout)["certificate"]
    assert "the CA is unreachable" in now["error"] and now["not_after"] == renewed["not_after"]
    assert _request(_tls(port, pebble.root)) == 200
    shown = " ".join(Kiln(app)("status").stdout.split())
    assert "certificate: cannot get a certificate for shop.test" in shown
    issues = (
        (local_home.agent_dir / "agent.log")
        .read_text()
        .count("certificate for shop.test (fleet web) from")
    )
    assert issues == 2  # the first and one renewal: never a renewal loop
    print(f"first certificate in {issued:.1f}s (launch included)")


def test_an_unreachable_ca_fails_the_launch_with_one_line(
    local_home: Home, tmp_path: Path, pebble: Pebble
) -> None:
    closed = free_port()
    config = write_config(
        tmp_path / "app",
        free_port(),
        _acme_config(pebble, directory=f"https://localhost:{closed}/dir"),
    )
    provider = LocalProvider(local_home, load_config(config))
    with pytest.raises(ProviderError) as refused:
        provider.launch("web", make_image(local_home), 1)
    message = refused.value.message
    assert message.startswith(
        f"cannot get a certificate for shop.test from https://localhost:{closed}/dir: "
        "the CA is unreachable"
    )
    assert "\n" not in message
    assert not provider.describe("web").instances
