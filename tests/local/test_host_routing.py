"""Several fleets on one listener, routed by Host, like kamal-proxy's services."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any

import pytest
from localtest import make_image, serving, write_config

from kiln.config import load_config
from kiln.errors import ProviderError
from kiln.home import Home
from kiln.local.client import AgentClient
from kiln.local.provider import LocalProvider
from kiln.local.routes import Routes


def _fleet(home: Home, tmp_path: Path, name: str, port: int, hosts: str = "") -> LocalProvider:
    extra = f"hosts = {hosts}" if hosts else ""
    return LocalProvider(home, load_config(write_config(tmp_path / name, port, extra, name)))


def _get(conn: http.client.HTTPConnection, host: str | None) -> tuple[int, Any]:
    conn.request("GET", "/", headers={"Host": host} if host else {})
    response = conn.getresponse()
    raw = response.read()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw.decode()


def test_two_fleets_share_a_listener_routed_by_host(
    local_home: Home, tmp_path: Path, lb_port: int
) -> None:
    shop = _fleet(local_home, tmp_path, "shop", lb_port, '["shop.example.com"]')
    blog = _fleet(local_home, tmp_path, "blog", lb_port, '["blog.example.com", "*.blog.io"]')
    (shop_id,) = shop.launch("shop", make_image(local_home, app="shop"), 1)
    (blog_id,) = blog.launch("blog", make_image(local_home, app="blog"), 1)
    serving(shop, 1, "shop")
    serving(blog, 1, "blog")

    conn = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=10)
    try:  # one kept-alive connection, a different Host per request: routed per request
        for _ in range(2):
            assert _get(conn, f"shop.example.com:{lb_port}")[1]["instance"] == shop_id
            assert _get(conn, "BLOG.example.com")[1]["instance"] == blog_id
            assert _get(conn, "x.y.blog.io")[1]["instance"] == blog_id
    finally:
        conn.close()
    for unknown in ("example.com", "blog.io", f"127.0.0.1:{lb_port}"):
        conn = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=10)
        status, text = _get(conn, unknown)
        conn.close()
        assert status == 404 and "no fleet serves host" in text
    # with a large body it does not read, the 404 still arrives (no reset)
    conn = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=10)
    conn.request("POST", "/", body=b"x" * (4 << 20), headers={"Host": "nobody.example.com"})
    response = conn.getresponse()
    assert response.status == 404 and b"nobody.example.com" in response.read()
    conn.close()

    # a third fleet cannot take a host already claimed there; the owner keeps serving
    thief = _fleet(local_home, tmp_path, "thief", lb_port, '["shop.example.com"]')
    with pytest.raises(ProviderError, match=r"host shop\.example\.com is already fleet shop's"):
        thief.launch("thief", make_image(local_home, app="thief"), 1)
    assert thief.describe("thief").instances == ()

    # a fleet without hosts answers every Host the others do not claim
    www = _fleet(local_home, tmp_path, "www", lb_port)
    (www_id,) = www.launch("www", make_image(local_home, app="www"), 1)
    serving(www, 1, "www")
    conn = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=10)
    try:
        assert _get(conn, "example.com")[1]["instance"] == www_id
        assert _get(conn, "shop.example.com")[1]["instance"] == shop_id
    finally:
        conn.close()
    other = _fleet(local_home, tmp_path, "other", lb_port)
    with pytest.raises(ProviderError, match="fleet www already answers every Host there"):
        other.launch("other", make_image(local_home, app="other"), 1)

    metrics = AgentClient(local_home).get("/metrics")
    unrouted = re.search(rf'^kiln_lb_unrouted_total\{{listen="127.0.0.1:{lb_port}"\}} (\d+)$',
                         metrics, re.M)  # fmt: skip
    assert unrouted and int(unrouted.group(1)) == 4
    assert re.search(r'^kiln_lb_fleet_requests_total\{fleet="blog"\} 4$', metrics, re.M)

    # the shared listener closes only with its last fleet
    for provider, name in ((shop, "shop"), (blog, "blog")):
        provider.terminate(name, [i.id for i in provider.describe(name).live()])
    conn = http.client.HTTPConnection("127.0.0.1", lb_port, timeout=10)
    try:
        assert _get(conn, "shop.example.com")[1]["instance"] == www_id  # shop is gone
    finally:
        conn.close()


def test_exact_names_beat_wildcards_and_the_longest_wildcard_wins() -> None:
    routes: Routes[str] = Routes()
    assert routes.claim("a", ["*.example.com"], "a") is None
    assert routes.claim("b", ["*.eu.example.com", "www.eu.example.com"], "b") is None
    assert routes.claim("c", ["api.eu.example.com"], "c") is None
    assert routes.pick(b"x.example.com") == "a"
    assert routes.pick(b"x.eu.example.com:8080") == "b"
    assert routes.pick(b"api.eu.example.com") == "c"
    assert routes.pick(b"example.com") is None  # a wildcard is not its apex
    assert routes.pick(None) is None
    assert (
        routes.claim("d", ["*.eu.example.com"], "d") == "host *.eu.example.com is already fleet b's"
    )
