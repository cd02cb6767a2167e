"""Sites built at bake time and served as static files: the generator's output
directory, from its defaults, its build command's options and its config."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from pathlib import Path

from kiln import nodescripts
from kiln.detect import NODE_EXCLUDE, Detected, _read, node_build, scripts_of

# A site generator, where its build writes the site, the option of its build
# command that writes it elsewhere, and that command (its program, its subcommand).
# The ones built on Vite come before it.
_STATIC_BUILDS = (
    ("@11ty/eleventy", "Eleventy", "_site", "--output", ("eleventy", None)),
    # `vitepress build DIR`: its config's outDir is DIR's, --outDir the working directory's
    ("vitepress", "VitePress", ".vitepress/dist", "--outDir", ("vitepress", "build")),
    ("@docusaurus/core", "Docusaurus", "build", "--out-dir", ("docusaurus", "build")),
    ("vite", "Vite", "dist", "--outDir", ("vite", "build")),
    ("react-scripts", "Create React App", "build", None, ("react-scripts", "build")),
    ("@vue/cli-service", "Vue CLI", "dist", "--dest", ("vue-cli-service", "build")),
    ("astro", "Astro", "dist", "--outDir", ("astro", "build")),
    ("parcel", "Parcel", "dist", "--dist-dir", ("parcel", "build")),
    ("gatsby", "Gatsby", "public", None, ("gatsby", "build")),
)


def static_build(root: Path, package: dict[str, object], deps: set[str]) -> Detected | None:
    """A site generator among ``deps`` with a script that builds: its output, served."""
    for tool, kind, out, flag, command in _STATIC_BUILDS:
        script = _building_script(package, command) if tool in deps else None
        if script is not None:
            out = _site_dir(root, package, script, tool, flag) or out
            return served_site(root, package, tool, kind, out, script)
    return None


def _building_script(package: dict[str, object], command: tuple[str, str | None]) -> str | None:
    """``build``, else the first script that runs the generator's own build command:
    `vitepress init` writes `"docs:build": "vitepress build docs"` and no build."""
    scripts = scripts_of(package)
    if "build" in scripts:
        return "build"
    program, subcommand = command
    for name, text in scripts.items():
        for ran in nodescripts.commands(package, text, name) if isinstance(text, str) else []:
            # eleventy builds without a subcommand, and serves or watches with a flag
            words = ran.words[1:]
            watching = any(w in ("--serve", "--watch") for w in words)
            if ran.program == program and (
                words[:1] == (subcommand,) if subcommand else not watching
            ):
                return ran.script or name  # the script that runs it, not one running that
    return None


def served_site(
    root: Path,
    package: dict[str, object],
    tool: str,
    kind: str,
    out: str,
    script: str | None = None,
) -> Detected:
    """A site ``tool`` builds into ``out`` (with ``script``, else the build script),
    served by http.server."""
    article = "an" if kind[0] in "AEIOU" else "a"
    why = [f"package.json uses {tool} and no server: {article} {kind} site, built at bake time"]
    why.append(f"{out}/ (the build's output) is served by python3 -m http.server")
    start = str(scripts_of(package).get("start", ""))
    if start:
        why.append(f"scripts.start ('{start}') is a development server: not used")
    build = node_build(root, package, why, script=script)
    return Detected(
        kind=f"{kind} static site",
        run=f"python3 -m http.server --bind $HOST --directory {out} $PORT",
        why=why,
        build=build,
        exclude=list(NODE_EXCLUDE),
        env={"NODE_ENV": "production"},
        health_path="/",
        grace="10s",
        notes=[_NO_FALLBACK] if tool in _SINGLE_PAGE else [],
        warnings=_rendered_warnings(root, package, tool, out),
    )


# frameworks that render on a server of their own, built with Vite: a build of
# theirs is no static site unless they say so (kiln runs the ones it knows)
_RENDERERS = (
    "@builder.io/qwik-city",
    "@qwik.dev/router",
    "@solidjs/start",
    "vike",
    "vite-plugin-ssr",
    "@analogjs/platform",
    "@tanstack/react-start",
    "vinxi",
    "nitropack",
)


def _rendered_warnings(root: Path, package: dict[str, object], tool: str, out: str) -> list[str]:
    """A Vite build that may make no page to serve: a server-rendering framework among
    the packages, or no index.html for Vite to build (served as a directory listing)."""
    listed: set[str] = set()
    for key in ("dependencies", "devDependencies"):
        names = package.get(key)
        listed |= {str(n) for n in names} if isinstance(names, dict) else set()
    renderers = [r for r in _RENDERERS if r in listed and r != tool]  # Qwik's static adapter
    if renderers:
        return [
            f"package.json has {renderers[0]}, which renders pages on a server, and kiln "
            f"serves {out}/ as a static site: unless its build writes the pages there, set "
            "[app] run to the app's server"
        ]
    if (
        tool == "vite"
        and not (root / "index.html").is_file()
        and not _config_string(root, _VITE_CONFIGS, r"\broot")
    ):
        return [
            f"no index.html, which Vite builds into {out}/index.html: '/' would answer a "
            "directory listing; if the app has a server, set [app] run to it"
        ]
    return []


# the generators of single-page apps, whose routes are the client's (the others
# write a page for each route)
_SINGLE_PAGE = ("vite", "react-scripts", "@vue/cli-service", "parcel", "@angular/core")
_NO_FALLBACK = (
    "http.server has no single-page-app fallback: a deep link to a client-side "
    "route answers 404 (serve the build with a server that has one if you need it)"
)


def _site_dir(
    root: Path, package: dict[str, object], script: str, tool: str, flag: str | None
) -> str | None:
    """Where ``script`` writes the site when not where ``tool`` writes it by default:
    the build command's ``flag``, else what the tool's config says in a plain string."""
    ran = nodescripts.commands(package, f"npm run {script}")
    given = nodescripts.option(ran, flag) if flag else None
    if given is not None:
        return inside(given)
    if tool == "vite":
        return inside(_config_string(root, _VITE_CONFIGS, r"\boutDir"))
    if tool == "@11ty/eleventy":
        configs = (".eleventy.js", *(f"eleventy.config.{e}" for e in ("js", "mjs", "cjs", "ts")))
        output = _config_string(root, configs, r"\bdir\s*:\s*\{[^}]*?\boutput")
        return inside(output or _config_string(root, configs, r"\bsetOutputDirectory\("))
    if tool == "vitepress":  # relative to the site's root: `vitepress build docs`
        base = next((_vitepress_root(c) for c in ran if c.program == "vitepress"), None) or "."
        names = [f".vitepress/{n}.{e}" for n in ("config", "config/index") for e in _JS_EXTS]
        out = _config_string(root / base, names, r"\boutDir") or ".vitepress/dist"
        return inside(f"{base}/{out}")
    return None


_JS_EXTS = ("js", "ts", "mjs", "mts", "cjs", "cts")
_VITE_CONFIGS = ("vite.config.js", "vite.config.ts", "vite.config.mjs", "vite.config.mts")


def _config_string(root: Path, names: Iterable[str], key: str) -> str | None:
    """The string literal a config file gives ``key`` (a regex up to the value)."""
    for name in names:
        match = re.search(key + r"""\s*:?\s*(['"`])([\w./-]+)\1""", _read(root / name))
        if match:
            return match.group(2)
    return None


def _vitepress_root(command: nodescripts.Command) -> str | None:
    """DIR of `vitepress build DIR` (the site's root, where .vitepress/ is)."""
    if command.words[1:2] != ("build",):
        return None
    return next((w for w in command.words[2:] if not w.startswith("-")), None)


def inside(path: str | None) -> str | None:
    """``path`` as a plain relative one (./dist/: dist), None when it leaves the app."""
    if path is None:
        return None
    normal = posixpath.normpath(path)
    plain = re.fullmatch(r"[\w.-]+(?:/[\w.-]+)*", normal)
    return normal if plain and normal != "." and not normal.startswith("..") else None
