"""End to end: a static file server behind kiln's load balancer cannot serve the host.

The app is ``python3 -m http.server``, which follows symlinks; the image
tree is the only thing standing between a request path and the host's files.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
from localtest import http_get, make_image, serving, wait_for

from kiln.errors import UnsafeImage
from kiln.home import Home
from kiln.image.store import LinkEntry, Store
from kiln.local.provider import LocalProvider

pytestmark = pytest.mark.slow

CHAIN = "d1/d2/d3/d4/d5/d6/d7"
SERVER = f"{sys.executable} -m http.server --bind 127.0.0.1 $PORT"


def test_http_server_cannot_serve_etc_passwd_through_a_link(
    provider: LocalProvider, local_home: Home, lb_port: int
) -> None:
    store = Store(local_home)
    plain = make_image(
        local_home, run=SERVER, files={"health": "ok\n", "static/page.txt": "in the image\n"}
    )
    manifest = store.get(plain).manifest
    inside = dataclasses.replace(
        manifest,
        links=(
            LinkEntry(f"{CHAIN}/up", "../../../../../../.."),  # the image root, exactly
            LinkEntry("s", f"{CHAIN}/up/static"),
        ),
        dirs=(),
    )
    good = store.add_image(inside, {}).id
    provider.launch("web", good, 1)
    serving(provider, 1)
    assert http_get(lb_port, "/s/page.txt") == (200, {"text": "in the image\n"})

    # what the bake now refuses, written into the store by hand
    escaping = dataclasses.replace(
        inside, links=(*inside.links, LinkEntry("esc", f"{CHAIN}/up/../../../../../../.."))
    )
    path = Store.manifest_path(local_home, escaping.digest)
    assert path is not None
    path.write_bytes(escaping.canonical())
    bad = "img-" + escaping.digest.removeprefix("sha256:")[:12]
    with pytest.raises(UnsafeImage, match=f"image {bad} is unsafe: esc -> "):
        provider.launch("web", bad, 1)

    for leak in ("/esc/etc/passwd", "/s/../esc/etc/passwd", f"/{CHAIN}/up/../../etc/passwd"):
        status, body = http_get(lb_port, leak)
        assert status == 404 and "root:" not in body.get("text", ""), leak
    assert provider.describe("web").groups == {good: 1}


def test_links_planted_in_the_agents_tree_never_reach_an_instance(
    provider: LocalProvider, local_home: Home
) -> None:
    """The agent's per-image tree is a second copy of the image: links come from the manifest."""
    store = Store(local_home)
    plain = make_image(local_home, run=SERVER, files={"health": "ok\n", "static/a.txt": "a\n"})
    inside = dataclasses.replace(
        store.get(plain).manifest, links=(LinkEntry("s", "static"),), dirs=()
    )
    good = store.add_image(inside, {}).id
    (first,) = provider.launch("web", good, 1)
    serving(provider, 1)
    tree = local_home.agent_dir / "trees" / good
    (tree / "s").unlink()
    (tree / "s").symlink_to("/etc")  # what a same-user instance could do to the tree
    (tree / "evil").symlink_to("/")
    provider.launch("web", good, 1)
    wait_for(lambda: len(provider.describe("web").serving()) == 2, 30, "a second instance")
    fresh = next(i for i in provider.describe("web").instances if i.id != first)
    directory = Path(fresh.details["dir"])
    assert str((directory / "s").readlink()) == "static"
    assert not os.path.lexists(directory / "evil")
