"""Node stacks built at bake time: a Vite site (npm), served from its build output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from realkit import first_try, get

pytestmark = pytest.mark.slow


def test_vite_site_built_at_bake_time_on_the_first_try(tmp_path: Path) -> None:
    """vite is a devDependency: the baked NODE_ENV=production must not leave it out."""
    app = tmp_path / "site"
    (app / "src").mkdir(parents=True)
    package = {
        "name": "site",
        "private": True,
        "type": "module",
        "scripts": {"dev": "vite", "build": "vite build", "preview": "vite preview"},
        "devDependencies": {"vite": "^5.4.0"},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    (app / "index.html").write_text(
        '<!doctype html>\n<html><head><title>Site</title></head>\n<body><div id="app"></div>\n'
        '<script type="module" src="/src/main.js"></script></body></html>\n'
    )
    main = app / "src" / "main.js"
    main.write_text("document.querySelector('#app').textContent = 'release one';\n")

    def change() -> None:
        main.write_text(main.read_text().replace("release one", "release two"))

    def built(body: bytes) -> bool:
        return b'src="/assets/index-' in body and b"/src/main.js" not in body

    _kiln, port = first_try(app, "/", change, built)
    toml = (app / "kiln.toml").read_text()
    assert "Vite static site" in toml and "--directory dist" in toml
    assert "npm install --no-audit --no-fund --include=dev" in toml
    page = get(port, "/")[1].decode()
    bundle = page.split('src="', 1)[1].split('"', 1)[0]
    status, code = get(port, bundle)
    assert status == 200 and b"release one" in code  # rolled back to the first build


def test_an_eleventy_site_is_built_and_served_not_its_dev_server(tmp_path: Path) -> None:
    """Eleventy's own quick start: the start script is its file-watching dev server
    (`--serve`, on port 8080), which failed the boot gate; the site is `_site`."""
    app = tmp_path / "blog"
    app.mkdir()
    package = {
        "name": "blog",
        "private": True,
        "type": "module",
        "scripts": {"build": "npx @11ty/eleventy", "start": "npx @11ty/eleventy --serve"},
        "dependencies": {"@11ty/eleventy": "^3.0.0"},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    page = app / "index.md"
    page.write_text("# Hello from Eleventy\n\nrelease one\n")
    (app / "about.md").write_text("# About\n")

    def change() -> None:
        page.write_text(page.read_text().replace("release one", "release two"))

    _kiln, port = first_try(app, "/", change, lambda body: b"<h1>Hello from Eleventy</h1>" in body)
    toml = (app / "kiln.toml").read_text()
    assert "--directory _site" in toml, toml
    assert get(port, "/about/")[0] == 200


def test_a_typescript_server_run_by_tsx_from_its_dev_dependencies(tmp_path: Path) -> None:
    """`"start": "tsx src/index.ts"` with tsx a devDependency (as `npm i -D tsx` puts
    it): the prune after the install took tsx away, and every instance failed with
    `sh: 1: tsx: not found`."""
    app = tmp_path / "api"
    (app / "src").mkdir(parents=True)
    package = {
        "name": "api",
        "private": True,
        "type": "module",
        "scripts": {"start": "tsx src/index.ts"},
        "devDependencies": {"tsx": "^4.19.0", "@types/node": "^20.0.0"},
    }
    (app / "package.json").write_text(json.dumps(package, indent=2))
    index = app / "src" / "index.ts"
    index.write_text(
        "import { createServer } from 'node:http';\n"
        "const release: string = 'v1';\n"
        "createServer((_req, res) => res.end(`typed ${release}\\n`))\n"
        "  .listen(Number(process.env.PORT), process.env.HOST);\n"
    )

    def change() -> None:
        index.write_text(index.read_text().replace("'v1'", "'v2'"))

    first_try(app, "/", change, lambda body: body == b"typed v1\n")
    toml = (app / "kiln.toml").read_text()
    assert "prune" not in toml, toml
