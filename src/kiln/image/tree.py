"""The shape of an image's tree, checked as untrusted input.

A manifest crosses a trust boundary: whoever can write the store (or hand
over a tar) can write one. So before a tree is written anywhere, every path
in it must be relative and normal, nothing may be written through a symlink,
and every symlink must stay inside the tree when it is followed the way the
kernel follows it: component by component, through other links, as if the
tree were the root of the filesystem. Reading link targets as text is not
enough: ``esc -> d/up/../..`` looks harmless until ``d/up -> ../..`` is
followed first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

MAX_HOPS = 40  # links followed in one lookup: Linux's own limit (ELOOP)


class UnsafeTree(Exception):
    """One path of a tree that must not be written; ``reason`` completes a sentence."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path!r} {reason}")
        self.path = path
        self.reason = reason


def check_path(path: str) -> None:
    """A path is relative, '/'-separated, normal, and names something below the root."""
    if not path or "\0" in path:
        raise UnsafeTree(path, "is not a valid path")
    if path.startswith("/"):
        raise UnsafeTree(path, "is absolute")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise UnsafeTree(path, "is not a normal relative path")


def check_tree(files: Iterable[str], links: Mapping[str, str], dirs: Iterable[str]) -> None:
    """Refuse a tree that could write, or point, outside its root.

    Every path is normal and unique; no path lies beneath a file or a link (so
    writing it never follows a link); every link resolves inside the tree.
    """
    kinds: dict[str, str] = {}
    for kind, paths in (("file", files), ("link", links), ("dir", dirs)):
        for path in paths:
            check_path(path)
            if path in kinds:
                raise UnsafeTree(path, "appears twice")
            kinds[path] = kind
    for path in kinds:
        parent = path.rpartition("/")[0]
        while parent:
            if kinds.get(parent, "dir") != "dir":
                raise UnsafeTree(path, f"lies beneath the {kinds[parent]} {parent!r}")
            parent = parent.rpartition("/")[0]
    for path in links:
        resolve_link(path, links)


def resolve_link(path: str, links: Mapping[str, str]) -> str:
    """Where the link at ``path`` leads, relative to the root; raises if it leaves it.

    A component that is not in the tree is taken as a directory, so a link
    through something the app creates later is judged by what it spells.
    """
    where: list[str] = path.split("/")[:-1]
    todo = deque(_target_parts(path, path, links[path]))
    hops = 1
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not where:
                raise UnsafeTree(path, f"-> {links[path]} points outside the image")
            where.pop()
            continue
        here = "/".join([*where, part])
        target = links.get(here)
        if target is None:
            where.append(part)
            continue
        hops += 1
        if hops > MAX_HOPS:
            raise UnsafeTree(path, f"-> {links[path]}: too many levels of symbolic links")
        todo.extendleft(reversed(_target_parts(path, here, target)))
    return "/".join(where)


def _target_parts(path: str, link: str, target: str) -> list[str]:
    """A link target's components; ``link`` is the link being followed from ``path``."""
    what = "its target" if link == path else f"the link {link} it passes through"
    if not target or "\0" in target:
        raise UnsafeTree(path, f"is not a valid link: {what} is empty or invalid")
    if target.startswith("/"):
        raise UnsafeTree(path, f"points outside the image: {what} is absolute ({target})")
    return target.split("/")
