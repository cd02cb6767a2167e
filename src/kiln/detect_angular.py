"""Angular apps, read from angular.json: its application builder writes the browser
build to ``<outputPath>/browser`` and, with @angular/ssr, an Express server to
``<outputPath>/server/server.mjs``. `npm start` is `ng serve`, a development server
whose CLI the prune removes ('sh: 1: ng: not found')."""

from __future__ import annotations

import json
import re
from pathlib import Path

from kiln.detect import Detected, _read, scripts_of
from kiln.detect_sites import inside, served_site
from kiln.nodestack import node_stack

# Angular's own settings for the server @angular/ssr/node runs (AngularNodeAppEngine)
ALLOWED_HOSTS = "localhost,127.0.0.1"  # a local fleet's; the public names are the user's
# what kiln's balancer sends: X-Forwarded-For and -Proto always, -Host and -Port from a
# trusted proxy. An untrusted X-Forwarded-* header makes Angular render on the client.
TRUST_PROXY_HEADERS = "x-forwarded-for,x-forwarded-proto,x-forwarded-host,x-forwarded-port"


def angular(root: Path, package: dict[str, object]) -> Detected | None:
    """A server-rendered Angular app run with node, or its browser build served."""
    project = _project(root)
    if project is None:
        return None
    name, builder, options = project
    given, browser, server = _output_path(name, options)
    base = inside(given)
    if base is None:
        return None
    ssr = _listed(package, "dependencies", "@angular/ssr") and options.get("outputMode") != "static"
    if not builder.endswith(":application"):  # the older browser builder: no browser/
        if ssr:
            return None  # Angular Universal's server builder: not read
        browser = ""
    if not ssr:
        site = inside(f"{base}/{browser}" if browser else base)
        return (
            None if site is None else served_site(root, package, "@angular/core", "Angular", site)
        )
    entry = _server_entry(package, name) or inside(f"{base}/{server}/server.mjs")
    if entry is None:
        return None
    why = [f"angular.json's project {name} uses @angular/ssr: a server-rendered Angular app"]
    why.append(f"'ng build' writes its Express server to {entry}, run with node: it reads $PORT")
    found = node_stack(
        "Angular", f"node {entry}", why, root, package, (base.split("/")[0], ".angular")
    )
    found.env |= {"NG_ALLOWED_HOSTS": ALLOWED_HOSTS, "NG_TRUST_PROXY_HEADERS": TRUST_PROXY_HEADERS}
    why.append(
        "NG_TRUST_PROXY_HEADERS: the X-Forwarded headers kiln's balancer sends (Angular renders "
        "on the client any request with one it does not trust); NG_ALLOWED_HOSTS: the Host "
        "names Angular renders for, a local fleet's"
    )
    found.notes.append(
        "Angular renders only for the host names in NG_ALLOWED_HOSTS ([env]) and answers "
        "400 to others: add the app's public names to it, comma-separated (*.example.com "
        "for its subdomains)"
    )
    if (root / "public" / "favicon.ico").is_file():
        found.health_path = "/favicon.ico"
        why.append(
            "health: /favicon.ico, a static file Express serves before Angular's host check "
            "(a check's Host may be the instance's address)"
        )
    return found


def _project(root: Path) -> tuple[str, str, dict[str, object]] | None:
    """(name, build builder, build options) of angular.json's first application."""
    try:
        workspace = json.loads(_read(root / "angular.json"))
        projects = workspace["projects"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(projects, dict):
        return None
    apps = [n for n, p in projects.items() if isinstance(p, dict)]
    apps.sort(key=lambda n: projects[n].get("projectType") != "application")
    for name in apps:
        targets = projects[name].get("architect") or projects[name].get("targets")
        build = targets.get("build") if isinstance(targets, dict) else None
        if isinstance(build, dict) and re.fullmatch(r"[\w.-]+", name):
            options = build.get("options")
            builder = build.get("builder")
            return (
                name,
                builder if isinstance(builder, str) else "",
                options if isinstance(options, dict) else {},
            )
    return None


def _output_path(name: str, options: dict[str, object]) -> tuple[str, str, str]:
    """(base, browser, server) of the build's outputPath: a string or ``{base, browser,
    server}``; ``dist/NAME`` by default."""
    given = options.get("outputPath")
    if isinstance(given, dict):
        parts = [given.get(k, d) for k, d in (("base", f"dist/{name}"), ("browser", "browser"))]
        parts.append(given.get("server", "server"))
        base, browser, server = (str(p) if isinstance(p, str) else "" for p in parts)
        return base or f"dist/{name}", browser, server or "server"
    return given if isinstance(given, str) else f"dist/{name}", "browser", "server"


def _server_entry(package: dict[str, object], name: str) -> str | None:
    """The file the CLI's own `serve:ssr:NAME` script runs with node."""
    script = str(scripts_of(package).get(f"serve:ssr:{name}", ""))
    given = re.fullmatch(r"node\s+([\w./-]+\.m?js)", script.strip())
    return inside(given.group(1)) if given else None


def _listed(package: dict[str, object], key: str, name: str) -> bool:
    listed = package.get(key)
    return isinstance(listed, dict) and name in listed
