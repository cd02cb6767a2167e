"""An express app made by express-generator (npm), with no lockfile."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from realkit import CACHE, first_try


def test_express_generator_app_on_the_first_try(tmp_path: Path) -> None:
    app = tmp_path / "shop"
    subprocess.run(
        ["npm", "exec", "--yes", "express-generator@4", "--", "--no-view", str(app)],
        check=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "npm_config_cache": str(CACHE / "npm")},
    )
    assert not (app / "node_modules").exists() and not (app / "package-lock.json").exists()
    page = app / "public" / "index.html"

    def change() -> None:
        page.write_text(page.read_text().replace("Welcome to Express", "Welcome to v2"))

    first_try(app, "/", change, lambda body: b"Express" in body)
    toml = (app / "kiln.toml").read_text()
    assert 'run = "node ./bin/www"' in toml and "npm install" in toml
    assert 'outputs = ["node_modules"]' in toml  # made by the build, never excluded from it


def test_a_package_without_dependencies_made_by_npm_init(tmp_path: Path) -> None:
    """`npm init -y` + node:http: npm makes no node_modules/, so there is nothing to install."""
    app = tmp_path / "hello"
    app.mkdir()
    subprocess.run(["npm", "init", "-y"], cwd=app, check=True, capture_output=True, timeout=120)
    index = app / "index.js"
    index.write_text(
        "const http = require('node:http');\n"
        "const server = http.createServer((req, res) => {\n"
        "  res.writeHead(200, {'Content-Type': 'text/plain'});\n"
        "  res.end('Hello, World!\\n');\n"
        "});\n"
        "server.listen(Number(process.env.PORT), process.env.HOST);\n"
    )

    def change() -> None:
        index.write_text(index.read_text().replace("Hello, World!", "Hello, v2!"))

    first_try(app, "/", change, lambda body: body.startswith(b"Hello"))
    toml = (app / "kiln.toml").read_text()
    assert "npm ci" not in toml and "npm install" not in toml, toml
