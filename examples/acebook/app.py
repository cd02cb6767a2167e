"""acebook: a small, stateless social web app, the example kiln deploys.

Listens on $HOST:$PORT (default 127.0.0.1:3000). Posts live in the database
named by DATABASE_URL; the page shows APP_VERSION (baked into the image),
KILN_IMAGE and KILN_INSTANCE_ID (set by kiln for every instance), so you can
watch a deployment replace instances.

    GET  /            page: version, image, instance, posts, a form
    POST /posts       create a post from the form, then back to /
    GET  /api/posts   latest posts as JSON
    POST /api/posts   {"author": "...", "body": "..."} -> 201 + the post
    GET  /api/info    version, image, instance, post count
    GET  /health      200 "ok" once the app can serve
"""

from __future__ import annotations

import html
import json
import os
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

# Dependencies installed at bake time ("pip install --target deps") travel with
# the image: found relative to this file, never through an absolute build path.
sys.path.insert(0, str(Path(__file__).resolve().parent / "deps"))

from posts import DEFAULT_URL, DatabaseError, InvalidPost, Posts

MAX_REQUEST = 16 * 1024


class Identity:
    """What this process is: app version, image and instance (shown everywhere)."""

    version = os.environ.get("APP_VERSION", "dev")
    image = os.environ.get("KILN_IMAGE", "none")
    instance = os.environ.get("KILN_INSTANCE_ID", "local")


class Handler(BaseHTTPRequestHandler):
    server_version = "acebook"
    timeout = 10  # an idle or stuck client cannot hold up a graceful stop for long
    posts: Posts  # set by serve()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(HTTPStatus.OK, self._page().encode(), "text/html; charset=utf-8")
        elif path == "/api/posts":
            self._json(HTTPStatus.OK, {"posts": [p.to_json() for p in self.posts.latest()]})
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self._info() | {"posts": self.posts.count()})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page at {path}"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/posts", "/api/posts"):
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page at {path}"})
            return
        try:
            fields = self._read_fields()
            post = self.posts.create(
                str(fields.get("author", "")),
                str(fields.get("body", "")),
                instance=Identity.instance,
                image=Identity.image,
            )
        except InvalidPost as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        if path == "/posts":
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", "/")
            self.send_header("Content-Length", "0")
            self._identity_headers()
            self.end_headers()
        else:
            self._json(HTTPStatus.CREATED, post.to_json())

    def _read_fields(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST:
            raise InvalidPost(f"request too large (over {MAX_REQUEST} bytes)")
        raw = self.rfile.read(length).decode("utf-8", "replace")
        if self.headers.get_content_type() == "application/json":
            try:
                data = json.loads(raw or "{}")
            except json.JSONDecodeError as exc:
                raise InvalidPost(f"body is not JSON: {exc}") from None
            if not isinstance(data, dict):
                raise InvalidPost('send a JSON object: {"author": "...", "body": "..."}')
            return data
        return {key: values[0] for key, values in parse_qs(raw).items()}

    def _info(self) -> dict[str, Any]:
        return {
            "version": Identity.version,
            "image": Identity.image,
            "instance": Identity.instance,
        }

    def _page(self) -> str:
        esc = html.escape
        items = "\n".join(
            f"<li><b>{esc(p.author)}</b> {esc(p.body)}"
            f" <small>{esc(p.created_at)} via {esc(p.instance)}</small></li>"
            for p in self.posts.latest()
        )
        return _PAGE.format(
            version=esc(Identity.version),
            image=esc(Identity.image),
            instance=esc(Identity.instance),
            posts=items or "<li>No posts yet: write the first one.</li>",
        )

    def _json(self, status: HTTPStatus, data: Any) -> None:
        self._send(status, (json.dumps(data) + "\n").encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._identity_headers()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _identity_headers(self) -> None:
        self.send_header("X-App-Version", Identity.version)
        self.send_header("X-Kiln-Instance", Identity.instance)

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("ACEBOOK_ACCESS_LOG"):
            super().log_message(format, *args)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except DatabaseError as exc:
            sys.stderr.write(f"acebook: {exc}\n")
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "database unavailable"})


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>acebook</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}
small{{color:#777}} .meta{{background:#f4f4f4;padding:.5em 1em}}</style></head>
<body>
<h1>acebook</h1>
<p class="meta">version <b id="version">{version}</b> &middot;
image <code id="image">{image}</code> &middot;
instance <code id="instance">{instance}</code></p>
<form method="post" action="/posts">
<input name="author" placeholder="your name" maxlength="40">
<input name="body" placeholder="what's on your mind?" maxlength="500" required>
<button>Post</button>
</form>
<ul id="posts">
{posts}
</ul>
</body></html>
"""


def serve(host: str, port: int, posts: Posts) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests and exit 0."""
    Handler.posts = posts
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = False  # server_close() waits for in-flight requests

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"acebook {Identity.version} ({Identity.image}, {Identity.instance}) "
        f"listening on http://{host}:{server.server_port}",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


def main() -> int:
    url = os.environ.get("DATABASE_URL") or DEFAULT_URL
    try:
        posts = Posts(url)
        posts.migrate()
    except DatabaseError as exc:
        print(f"acebook: {exc}", file=sys.stderr)
        return 2
    serve(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "3000")), posts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
