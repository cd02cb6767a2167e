"""Pipenv, Poetry, uv and PDM dependencies as pip requirement lines, read at BAKE time.

kiln init writes this file, verbatim, beside kiln.toml as .kiln-locks.py, and the
build step runs it (the image python3, in the app dir, where kiln need not be
installed), so the image follows the lock file as it changes. Hence: standard
library only (plus the packaging copy inside pip, which the step runs next
anyway). Run as a program it prints the lines of the file named by its
argument; any file that does not parse raises, so the step fails instead of
installing nothing.

Lock files pin the whole closure: the lines are name==version, so pip can only
pick the locked versions (pip still resolves, without --no-deps: a package our
walk missed is fetched instead of failing at boot, and a lock that disagrees
with itself fails the bake).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import tomllib
from typing import Any


def norm(name: str) -> str:
    """PEP 503 normalised name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def holds(marker: Any, extras: Any = ()) -> bool:
    """Whether a PEP 508 marker holds for this interpreter (the image python3)."""
    if not marker or not isinstance(marker, str):
        return True
    # pip carries packaging: the step runs python3 -m pip right after this program
    markers = importlib.import_module("pip._vendor.packaging.markers")
    return any(markers.Marker(marker).evaluate({"extra": e}) for e in [*extras, ""])


def direct(name: str, spec: dict[str, Any], extras: Any = ()) -> str | None:
    """A VCS (git, hg, svn, bzr: the key names it), url or path requirement as pip
    takes it; None for an index package. A path is from the app dir, which PDM
    writes as ``${PROJECT_ROOT}``."""
    want = name + ("[" + ",".join(extras) + "]" if extras else "")
    for vcs in ("git", "hg", "svn", "bzr"):
        if spec.get(vcs):
            ref = spec.get("ref") or spec.get("rev") or spec.get("tag") or spec.get("branch")
            repo = str(spec[vcs])
            repo = repo if repo.startswith(vcs + "+") else f"{vcs}+{repo}"
            sub = "#subdirectory=" + str(spec["subdirectory"]) if spec.get("subdirectory") else ""
            return f"{want} @ {repo}@{ref}{sub}" if ref else f"{want} @ {repo}{sub}"
    if spec.get("url") or spec.get("file"):
        return want + " @ " + str(spec.get("url") or spec.get("file"))
    if spec.get("path"):
        path = str(spec["path"]).replace("${PROJECT_ROOT}", ".")
        return path if path.startswith(("/", ".")) else "./" + path
    return None


def line(name: str, version: str, extras: Any = (), marker: Any = "") -> str:
    """name[extras]version; marker"""
    out = name + ("[" + ",".join(extras) + "]" if extras else "") + version
    return out + (f"; {marker}" if marker else "")


def indexes(urls: Any) -> list[str]:
    """Package indexes other than PyPI, as requirement-file options (pip expands the
    ${VAR} credentials Pipenv and Poetry users put in them)."""
    found = [str(u) for u in urls if u and "://pypi.org/" not in str(u)]
    return ["--extra-index-url " + u for u in dict.fromkeys(found)]


def pipfile_lock(text: str) -> list[str]:
    """Pipfile.lock: every package of its default section (never develop), pinned."""
    lock = json.loads(text)
    lines = indexes(s.get("url") for s in lock.get("_meta", {}).get("sources", []))
    for name, spec in lock["default"].items():
        extras = spec.get("extras") or ()
        where = direct(name, spec, extras)
        if where:
            lines.append(where + ("; " + spec["markers"] if spec.get("markers") else ""))
        else:
            lines.append(line(name, spec.get("version") or "", extras, spec.get("markers")))
    return lines


def pipfile(text: str) -> list[str]:
    """A Pipfile without its lock: the [packages] table as it stands (unpinned)."""
    pipfile = tomllib.loads(text)
    lines = indexes(s.get("url") for s in pipfile.get("source", []))
    for name, spec in pipfile.get("packages", {}).items():
        spec = spec if isinstance(spec, dict) else {"version": spec}
        extras = spec.get("extras") or ()
        where = direct(name, spec, extras)
        version = str(spec.get("version") or "*")
        version = "" if version == "*" else version
        marked = spec.get("markers") or ""
        lines.append(where or line(name, version, extras, marked))
    return lines


def caret(version: str, tilde: bool) -> str:
    """Poetry ^ and ~ constraints as PEP 440 ranges."""
    parts = [int(p) if p.isdigit() else 0 for p in version.split(".")]
    if tilde:
        upper = [parts[0] + 1] if len(parts) == 1 else [parts[0], parts[1] + 1]
    else:
        first = next((i for i, p in enumerate(parts) if p), len(parts) - 1)
        upper = [*parts[:first], parts[first] + 1]
    return ">=" + version + ",<" + ".".join(map(str, upper))


def constraint(text: str) -> str | None:
    """A Poetry version constraint as a PEP 440 specifier; None when it has no equivalent."""
    specs = []
    for part in re.split(r"\s*,\s*|\s+(?=[<>=!~^])", text.strip()):
        if part in ("*", ""):
            continue
        if "||" in part or "|" in part:
            return None
        if part.startswith("^") or (part.startswith("~") and not part.startswith("~=")):
            specs.append(caret(part.lstrip("^~").strip(), part.startswith("~")))
        elif re.match(r"^(==|!=|>=|<=|>|<|~=|===)", part):
            specs.append(part.replace(" ", ""))
        elif re.match(r"^[0-9][0-9a-zA-Z.*+!-]*$", part):
            specs.append("==" + part)
        else:
            return None
    return ",".join(specs)


def poetry_roots(project: dict[str, Any]) -> tuple[list[tuple[str, Any, Any, str]], list[str]]:
    """The main dependencies of pyproject.toml: (name, extras, marker, line) each, and the
    [tool.poetry.dependencies] entries whose constraint has no pip equivalent (their
    line is unpinned). Optional ones are left out: they belong to the project extras,
    which an app does not install."""
    roots: list[tuple[str, Any, Any, str]] = []
    for text in project.get("project", {}).get("dependencies", []):
        found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", text)
        if found:
            named = [e.strip() for e in (found.group(2) or "").split(",") if e.strip()]
            roots.append((found.group(1), named, text.partition(";")[2].strip(), text))
    poetry = project.get("tool", {}).get("poetry", {}).get("dependencies", {})
    unknown = []
    for name, value in poetry.items():
        if norm(name) == "python":
            continue
        for spec in value if isinstance(value, list) else [value]:
            spec = spec if isinstance(spec, dict) else {"version": spec}
            if spec.get("optional"):
                continue
            extras = spec.get("extras") or ()
            marker = spec.get("markers") or ""
            where = direct(name, spec, extras)
            version = constraint(str(spec.get("version", "*")))
            if where is None and version is None:
                unknown.append(name)  # installed unpinned: better than a missing import
            roots.append((name, extras, marker, where or line(name, version or "", extras, marker)))
    return roots, unknown


def poetry_pyproject(text: str) -> list[str]:
    """pyproject.toml of a Poetry project without its lock: the main dependencies, unpinned."""
    roots, unknown = poetry_roots(tomllib.loads(text))
    if unknown:
        print("kiln: no pip equivalent, installed unpinned:", *unknown, file=sys.stderr)
    return [root[3] for root in roots]


def poetry_lock(project_text: str, lock_text: str) -> list[str]:
    """poetry.lock: the packages the main dependencies need, at their locked versions.

    Walked from the roots in pyproject.toml through each package dependencies (with
    their markers and requested extras), as Poetry does: a lock 2.0 file written by
    Poetry 1.5 to 1.8 says nothing else about which group a package belongs to. Dev
    groups are never walked, so their packages stay out unless main needs them too.
    """
    roots, _ = poetry_roots(tomllib.loads(project_text))  # all of them are in the lock
    packages: dict[str, list[dict[str, Any]]] = {}
    for package in tomllib.loads(lock_text).get("package", []):
        packages.setdefault(norm(package["name"]), []).append(package)
    chosen: dict[str, dict[str, Any]] = {}
    extras_of: dict[str, set[str]] = {}
    todo = [(name, extras, spec_of(text)) for name, extras, marker, text in roots if holds(marker)]
    while todo:
        name, extras, version = todo.pop()
        key = norm(name)
        candidates = packages.get(key)
        if not candidates:
            raise SystemExit(f"kiln: {name} is not in poetry.lock: run poetry lock")
        package = pick(candidates, version)
        new = set(extras) - extras_of.get(key, set())
        if key in chosen and not new:
            continue
        chosen[key] = package
        extras_of.setdefault(key, set()).update(extras)
        wanted = {
            norm(re.split(r"[ (<>=!~;\[]", d)[0])
            for e in extras_of[key]
            for d in package.get("extras", {}).get(e, [])
        }
        for dep, value in package.get("dependencies", {}).items():
            for spec in value if isinstance(value, list) else [value]:
                spec = spec if isinstance(spec, dict) else {"version": spec}
                if spec.get("optional") and norm(dep) not in wanted:
                    continue
                if holds(spec.get("markers"), extras_of[key]):
                    todo.append((dep, spec.get("extras") or [], str(spec.get("version", ""))))
    legacy = [p.get("source", {}).get("url") for p in chosen.values()]
    kinds = [p.get("source", {}).get("type") for p in chosen.values()]
    urls = [url for url, kind in zip(legacy, kinds, strict=True) if kind == "legacy"]
    return indexes(urls) + [locked(chosen[key]) for key in sorted(chosen)]


def uv_lock(lock_text: str) -> list[str]:
    """uv.lock: the packages the project dependencies need, at their locked versions.

    The project is the lock package whose source is the app dir itself; walked from
    its dependencies (never its dev-dependencies or optional-dependencies), following
    markers that hold here and the extras asked for. Where the lock holds two versions
    of a package, the dependency entry names the one it means.
    """
    packages: dict[str, list[dict[str, Any]]] = {}
    root = None
    for package in tomllib.loads(lock_text).get("package", []):
        packages.setdefault(norm(package["name"]), []).append(package)
        source = package.get("source", {})
        if "." in (source.get("virtual"), source.get("editable")):
            root = package
    if root is None:
        raise SystemExit("kiln: uv.lock has no package for the project itself: run uv lock")
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    seen: set[tuple[str, str, str]] = set()
    todo = [dep for dep in root.get("dependencies", []) if holds(dep.get("marker"))]
    while todo:
        dep = todo.pop()
        candidates = packages.get(norm(dep["name"]))
        if not candidates:
            raise SystemExit("kiln: " + str(dep["name"]) + " is not in uv.lock: run uv lock")
        version = dep.get("version")
        package = next((p for p in candidates if p["version"] == version), candidates[0])
        extras = sorted(dep.get("extra") or [])
        key = (norm(package["name"]), package["version"])
        if (*key, ",".join(extras)) in seen:
            continue
        seen.add((*key, ",".join(extras)))
        chosen[key] = package
        deps = list(package.get("dependencies", []))
        for extra in extras:
            deps += package.get("optional-dependencies", {}).get(extra, [])
        todo += [d for d in deps if holds(d.get("marker"), extras)]
    urls = [p.get("source", {}).get("registry") for p in chosen.values()]
    return indexes(urls) + [uv_line(chosen[key]) for key in sorted(chosen)]


def uv_line(package: dict[str, Any]) -> str:
    """One uv.lock package as a pip line."""
    name, source = str(package["name"]), package.get("source", {})
    if source.get("git"):
        url, _, commit = str(source["git"]).partition("#")
        return direct(name, {"git": url.split("?")[0], "ref": commit}) or ""
    if source.get("url"):
        return name + " @ " + str(source["url"])
    for kind in ("directory", "editable", "path"):
        if source.get(kind):
            return direct(name, {"path": source[kind]}) or ""
    return line(name, "==" + str(package["version"]))


def pdm_lock(project_text: str, lock_text: str) -> list[str]:
    """pdm.lock: the packages the [project] dependencies need, at their locked versions.

    Walked from pyproject.toml's [project] dependencies through each package's
    dependencies (PEP 508 lines, with markers that hold here), as an install of the
    default group resolves them; a package asked for with extras has an entry of its
    own whose dependencies hold what the extras add. Dev groups and optional
    dependencies are never walked, so their packages stay out unless the app needs
    them too. Lock files from 4.0 on (PDM 2) read alike: groups are not relied on.
    """
    requirement = importlib.import_module("pip._vendor.packaging.requirements").Requirement
    project = tomllib.loads(project_text)
    packages: dict[tuple[str, frozenset[str]], list[dict[str, Any]]] = {}
    for package in tomllib.loads(lock_text).get("package", []):
        extras = frozenset(norm(e) for e in package.get("extras", []))
        packages.setdefault((norm(package["name"]), extras), []).append(package)
    chosen: dict[str, dict[str, Any]] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [str(d) for d in project.get("project", {}).get("dependencies", [])]
    while todo:
        req = requirement(todo.pop())
        if req.marker is not None and not holds(str(req.marker)):
            continue
        name, extras = norm(req.name), frozenset(norm(e) for e in req.extras)
        for key in dict.fromkeys([(name, frozenset[str]()), (name, extras)]):
            if key in seen:
                continue
            seen.add(key)
            candidates = packages.get(key)
            if not candidates:
                if key[1]:  # extras that add no package have no entry of their own
                    continue
                raise SystemExit(f"kiln: {req.name} is not in pdm.lock: run pdm lock")
            fits = [p for p in candidates if req.specifier.contains(p["version"], True)]
            fits = [p for p in fits or candidates if holds(p.get("marker"))] or candidates
            if not key[1]:
                chosen[name] = fits[0]
            todo += [str(d) for d in fits[0].get("dependencies", [])]
    sources = project.get("tool", {}).get("pdm", {}).get("source", [])
    urls = [s.get("url") for s in sources if isinstance(s, dict) and s.get("type") != "find_links"]
    return indexes(urls) + [pdm_line(chosen[name]) for name in sorted(chosen)]


def pdm_line(package: dict[str, Any]) -> str:
    """One pdm.lock package as a pip line: a VCS entry at its revision, a URL, a path,
    else the pinned version."""
    name = str(package["name"])
    spec = {**package, "ref": package.get("revision") or package.get("ref")}
    url = str(package.get("url") or "")
    if "${PROJECT_ROOT}" in url:  # early PDM 2: a local archive, from the app dir
        spec |= {"url": None, "path": url.removeprefix("file://").lstrip("/")}
    return direct(name, spec) or line(name, "==" + str(package["version"]))


def spec_of(text: str) -> str:
    """The version specifier of a requirement line (name[extras] (spec); marker)."""
    rest = re.sub(r"^\s*[A-Za-z0-9._-]+\s*(\[[^\]]*\])?", "", text).partition(";")[0]
    return rest.strip().strip("()")


def pick(candidates: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """Of the versions a lock holds for one package (a dependency with a constraint per
    Python version), the one this edge asks for and whose markers hold here."""
    spec = constraint(version) if len(candidates) > 1 and version else None
    if spec:
        specifiers = importlib.import_module("pip._vendor.packaging.specifiers")
        wanted = specifiers.SpecifierSet(spec)
        fits = [p for p in candidates if wanted.contains(p["version"], prereleases=True)]
        candidates = fits or candidates
    return next((p for p in candidates if holds(group_marker(p))), candidates[0])


def group_marker(package: dict[str, Any]) -> Any:
    """A lock 2.1 package marker: a string, or a table per group (main is ours)."""
    marker = package.get("markers")
    return marker.get("main") if isinstance(marker, dict) else marker


def locked(package: dict[str, Any]) -> str:
    """One poetry.lock package as a pip line."""
    source = package.get("source") or {}
    kind, url = source.get("type"), source.get("url")
    if kind == "git":
        ref = source.get("resolved_reference") or source.get("reference")
        return direct(package["name"], {"git": url, "ref": ref, **source}) or ""
    if kind in ("directory", "file"):
        return direct(package["name"], {"path": url}) or ""
    if kind == "url":
        return str(package["name"]) + " @ " + str(url)
    return line(package["name"], "==" + package["version"])


def main(argv: list[str]) -> None:
    """Print the requirement lines of the file argv names."""
    name = argv[0]
    with open(name, "rb") as file:
        text = file.read().decode()
    if name == "Pipfile.lock":
        lines = pipfile_lock(text)
    elif name == "Pipfile":
        lines = pipfile(text)
    elif name == "uv.lock":
        lines = uv_lock(text)
    elif name == "pdm.lock":
        with open("pyproject.toml", "rb") as project:
            lines = pdm_lock(project.read().decode(), text)
    elif name == "poetry.lock":
        with open("pyproject.toml", "rb") as project:
            lines = poetry_lock(project.read().decode(), text)
    else:
        lines = poetry_pyproject(text)
    print(*lines, sep="\n")


if __name__ == "__main__":
    main(sys.argv[1:])
