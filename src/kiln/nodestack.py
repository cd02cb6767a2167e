"""What the Node stacks kiln runs its own way share: a build at bake time, the
production server run without npm, what the build makes left out of the source."""

from __future__ import annotations

from pathlib import Path

from kiln.detect import NODE_EXCLUDE, Detected, node_build, scripts_of

NODE_ENV = {"NODE_ENV": "production"}


def node_stack(
    kind: str,
    run: str,
    why: list[str],
    root: Path,
    package: dict[str, object],
    made: tuple[str, ...] = (),
    keep_dev: bool = False,
) -> Detected:
    """``made``: what the build makes, left out of the source, so a local build
    (a stale dist/, a .next/ that changes on every `next dev`) neither ships nor
    makes a new image: the bake makes it afresh, and what it makes is kept.
    ``keep_dev``: the server needs packages the stack lists as devDependencies."""
    build = node_build(root, package, why, keep_dev=keep_dev)
    notes = [] if "build" in scripts_of(package) else [f"add the {kind} build as scripts.build"]
    return Detected(
        kind=kind,
        run=run,
        why=why,
        build=build,
        exclude=[*NODE_EXCLUDE, *(f"/{m}/" for m in made)],
        env=dict(NODE_ENV),
        grace="30s",
        notes=notes,
    )


def dependencies(package: dict[str, object]) -> set[str]:
    """The names package.json lists, dev ones too."""
    names: set[str] = set()
    for key in ("dependencies", "devDependencies"):
        listed = package.get(key)
        if isinstance(listed, dict):
            names.update(str(n) for n in listed)
    return names
