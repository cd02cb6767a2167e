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
