"""Symlinks are followed as the kernel follows them: none may leave the image.

At bake time (the app directory is hostile input) and again at materialize
time (the manifest crosses a trust boundary: whoever writes the store).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.errors import BuildError, CorruptObject, UnsafeImage
from kiln.home import Home
from kiln.image.bake import bake
from kiln.image.materialize import write_tree
from kiln.image.store import FileEntry, LinkEntry, Manifest, Store
from kiln.image.tree import MAX_HOPS, UnsafeTree, check_tree, resolve_link

CHAIN = "d1/d2/d3/d4/d5/d6/d7"


def _escape_chain(app: Path) -> None:
    """The reported escape: each target alone looks harmless, together they reach /."""
    (app / CHAIN).mkdir(parents=True)
    (app / CHAIN / "up").symlink_to("../../../../../../..")
    (app / "esc").symlink_to(f"{CHAIN}/up/../../../../../../..")


def test_the_reported_chain_is_refused_at_bake_time(app_dir: Path, home: Home) -> None:
    _escape_chain(app_dir)
    assert (app_dir / "esc").resolve() != app_dir  # the kernel really does leave the app
    with pytest.raises(BuildError, match=f"symlink esc -> {CHAIN}/up/.* points outside the app"):
        bake(load_config(app_dir), home)
    assert Store(home).list_images() == []


@pytest.mark.parametrize(
    ("links", "culprit"),
    [
        ({"a": "/etc/passwd"}, "a"),
        ({"a": ".."}, "a"),
        ({"x/a": "../.."}, "x/a"),
        ({"x/y": "..", "a": "x/y/.."}, "a"),  # x/y is the root; .. of it is outside
        ({"x/y": "/", "a": "x/y/etc"}, "x/y"),
        ({"a": "missing/../.."}, "a"),  # a missing directory still counts for ..
        ({"a": "b", "b": "a"}, "a"),  # a loop
    ],
)
def test_links_that_leave_the_tree(links: dict[str, str], culprit: str) -> None:
    with pytest.raises(UnsafeTree) as caught:
        check_tree([], links, [])
    assert caught.value.path == culprit


def test_a_link_passed_through_is_named() -> None:
    with pytest.raises(UnsafeTree, match="the link x/y it passes through is absolute"):
        resolve_link("a", {"x/y": "/", "a": "x/y/etc"})


def test_links_that_stay_inside_resolve_like_the_kernel(tmp_path: Path) -> None:
    links = {
        f"{CHAIN}/up": "../../../../../../..",  # exactly the root
        "here": f"{CHAIN}/up/static/./f0.txt",
        "s": "static",
        "x/in": "../s/../static",
        "dangling": "releases/current",  # created by the app later: judged by its spelling
    }
    check_tree(["static/f0.txt"], links, ["x"])
    assert resolve_link("here", links) == "static/f0.txt"
    assert resolve_link("x/in", links) == "static"
    deep = {f"l{i}": f"l{i + 1}" for i in range(MAX_HOPS - 1)} | {f"l{MAX_HOPS - 1}": "f"}
    assert resolve_link("l0", deep) == "f"
    with pytest.raises(UnsafeTree, match="too many levels"):
        resolve_link("l0", {**deep, f"l{MAX_HOPS - 1}": "l_extra", "l_extra": "f"})


@pytest.mark.parametrize(
    ("files", "links", "dirs", "culprit"),
    [
        (["/etc/cron.d/x"], {}, [], "/etc/cron.d/x"),
        (["a/../../x"], {}, [], "a/../../x"),
        (["a//b"], {}, [], "a//b"),
        (["d/x"], {"d": "static"}, [], "d/x"),  # written through a link
        (["f", "f/x"], {}, [], "f/x"),
        (["f"], {"f": "g"}, [], "f"),  # twice
        ([], {}, ["."], "."),
    ],
)
def test_paths_that_could_write_outside(
    files: list[str], links: dict[str, str], dirs: list[str], culprit: str
) -> None:
    with pytest.raises(UnsafeTree) as caught:
        check_tree(files, links, dirs)
    assert caught.value.path == culprit


def test_an_in_tree_link_chain_is_baked_and_works(
    app_dir: Path, home: Home, tmp_path: Path
) -> None:
    (app_dir / CHAIN).mkdir(parents=True)
    (app_dir / CHAIN / "up").symlink_to("../../../../../../..")
    (app_dir / "s").symlink_to(f"{CHAIN}/up/static")
    (app_dir / "current").symlink_to("s/../s/f1.txt")
    result = bake(load_config(app_dir), home)
    dest = tmp_path / "inst"
    Store(home).materialize(result.image, dest)
    assert (dest / "current").read_text() == "file 1\n" * 2
    assert (dest / "s").resolve() == (dest / "static").resolve()


def _tampered(home: Home, image: str, **changes: object) -> str:
    """Write a manifest by hand, as someone with write access to the store could."""
    store = Store(home)
    manifest = dataclasses.replace(store.get(image).manifest, **changes)  # type: ignore[arg-type]
    path = Store.manifest_path(home, manifest.digest)
    assert path is not None
    path.write_bytes(manifest.canonical())
    return "img-" + manifest.digest.removeprefix("sha256:")[:12]


def test_a_tampered_manifest_with_an_escaping_link_is_never_materialized(
    app_dir: Path, home: Home, tmp_path: Path
) -> None:
    good = bake(load_config(app_dir), home)
    links = (
        LinkEntry("esc", f"{CHAIN}/up/../../../../../../.."),
        LinkEntry(f"{CHAIN}/up", "../../../../../../.."),
    )
    bad = _tampered(home, good.image, links=links)
    store = Store(home)
    with pytest.raises(UnsafeImage, match=f"image {bad} is unsafe: esc -> .* outside the image"):
        store.materialize(bad, tmp_path / "inst")
    assert not (tmp_path / "inst").exists()
    with pytest.raises(UnsafeImage):
        store.export_tar(bad, io.BytesIO())
    with pytest.raises(UnsafeImage):
        store.verify(bad)


def test_a_tampered_manifest_cannot_write_through_a_link_or_above_its_root(
    app_dir: Path, home: Home, tmp_path: Path
) -> None:
    good = bake(load_config(app_dir), home)
    store = Store(home)
    files = store.get(good.image).manifest.files
    victim = tmp_path / "victim"
    victim.mkdir()
    through_link = _tampered(
        home,
        good.image,
        links=(LinkEntry("out", os.path.relpath(victim, tmp_path / "inst")),),
        files=(*files, dataclasses.replace(files[0], path="out/planted")),
    )
    dotdot = _tampered(home, good.image, files=(dataclasses.replace(files[0], path="../x.py"),))
    setuid = _tampered(home, good.image, files=(dataclasses.replace(files[0], mode=0o4755),))
    for bad in (through_link, dotdot, setuid):
        with pytest.raises(UnsafeImage, match=f"image {bad} is unsafe"):
            store.materialize(bad, tmp_path / "inst")
        assert not (tmp_path / "inst").exists()
    assert list(victim.iterdir()) == [] and not (tmp_path / "x.py").exists()


def test_writes_never_follow_a_link_that_appears_while_materializing(
    app_dir: Path, home: Home, tmp_path: Path
) -> None:
    """Every file is created relative to a directory fd with O_NOFOLLOW, never by path."""
    result = bake(load_config(app_dir), home)
    store = Store(home)
    manifest = store.get(result.image).manifest
    dest, outside = tmp_path / "inst", tmp_path / "outside"
    outside.mkdir()

    class Racing:
        def read(self, sha: str) -> Iterator[bytes]:
            if not (dest / "static").exists():  # an attacker wins the race for static/
                (dest / "static").symlink_to(outside)
            yield from store.objects.read(sha)

        def quarantine(self, sha: str) -> None:
            raise AssertionError("nothing is corrupt here")

    with pytest.raises(OSError):
        write_tree(result.image, manifest, dest, Racing())
    assert list(outside.iterdir()) == []
    assert not dest.exists()


def test_manifest_entries_are_what_kiln_writes() -> None:
    entry = FileEntry("app.py", 0o644, 1, "0" * 64)
    manifest = Manifest("a", "run", {}, "python3", (entry,))
    assert Manifest.parse(manifest.canonical()) == manifest


@pytest.mark.parametrize(
    "bad",
    [
        b'{"format":1}',
        b"[]",
        b'{"format":1,"app":"a","run":"r","env":{},"python":"p","links":[],"dirs":[],'
        b'"files":[["a",true,1,"' + b"0" * 64 + b'"]]}',
        b'{"format":1,"app":"a","run":"r","env":{"K":1},"python":"p","links":[],"dirs":[],'
        b'"files":[]}',
        b'{"format":1,"app":"a","run":"r","env":{},"python":"p","links":[["a"]],"dirs":[],'
        b'"files":[]}',
    ],
)
def test_a_malformed_manifest_is_refused_in_one_line(bad: bytes) -> None:
    with pytest.raises(CorruptObject, match="image manifest is malformed"):
        Manifest.parse(bad)


def test_a_malformed_manifest_in_the_store_is_named(app_dir: Path, home: Home) -> None:
    bake(load_config(app_dir), home)
    raw = b'{"format":1,"app":"a","run":"r","env":{},"python":"p","links":[],"dirs":[],"files":1}'
    path = Store.manifest_path(home, "sha256:" + hashlib.sha256(raw).hexdigest())
    assert path is not None
    path.write_bytes(raw)
    with pytest.raises(CorruptObject, match=f"{path}: image manifest is malformed"):
        Store(home).list_images()
