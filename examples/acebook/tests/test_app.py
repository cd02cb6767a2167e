"""acebook over real HTTP: a real process, a real SQLite file outside the app."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from acebook_harness import APP_DIR, Running, start


def test_health_and_identity(app: Running) -> None:
    status, headers, body = app.request("/health")
    assert (status, body) == (200, b"ok\n")
    assert headers["X-App-Version"] == "v7" and headers["X-Kiln-Instance"] == "i-test1"
    info = app.get_json("/api/info")
    assert info == {"version": "v7", "image": "img-0123456789ab", "instance": "i-test1", "posts": 0}
    status, _, page = app.request("/")
    assert status == 200
    for shown in ('id="version">v7<', 'id="image">img-0123456789ab<', 'id="instance">i-test1<'):
        assert shown in page.decode()


def test_create_and_list_posts(app: Running) -> None:
    status, post = app.post_json("/api/posts", {"author": "ann", "body": "hello <world>"})
    assert status == 201
    assert post["id"] == 1 and post["instance"] == "i-test1" and post["image"] == "img-0123456789ab"
    status, headers, _ = app.request("/posts", b"author=bob&body=second+post")
    assert status == 303 and headers["Location"] == "/"
    posts = app.get_json("/api/posts")["posts"]
    assert [(p["author"], p["body"]) for p in posts] == [
        ("bob", "second post"),
        ("ann", "hello <world>"),
    ]
    page = app.request("/")[2].decode()
    assert "hello &lt;world&gt;" in page and "<world>" not in page
    assert page.index("second post") < page.index("hello &lt;world&gt;")
    assert app.get_json("/api/info")["posts"] == 2


def test_bad_requests_are_4xx_not_crashes(app: Running) -> None:
    assert app.post_json("/api/posts", {"body": "  "}) == (400, {"error": "a post needs some text"})
    assert app.post_json("/api/posts", {"body": "x" * 501})[0] == 400
    assert app.post_json("/api/posts", ["not", "an", "object"])[0] == 400
    status, _, body = app.request("/api/posts", b"{nope", {"Content-Type": "application/json"})
    assert status == 400 and b"not JSON" in body
    assert app.request("/nowhere")[0] == 404
    assert app.post_json("/api/posts", {"body": "still fine"})[0] == 201


def test_instances_share_posts_through_the_database(launch: Callable[..., Running]) -> None:
    """Stateless: posts outlive the instance that took them; any instance serves them."""
    first = launch(KILN_INSTANCE_ID="i-1")
    second = launch(KILN_INSTANCE_ID="i-2")
    first.post_json("/api/posts", {"author": "ann", "body": "from one"})
    second.post_json("/api/posts", {"author": "bob", "body": "from two"})
    assert first.stop() == 0
    third = launch(KILN_INSTANCE_ID="i-3")
    posts = third.get_json("/api/posts")["posts"]
    assert [(p["body"], p["instance"]) for p in posts] == [("from two", "i-2"), ("from one", "i-1")]


def test_starts_fast_and_stops_cleanly_on_sigterm(launch: Callable[..., Running]) -> None:
    app = launch()
    assert app.started_in < 1.0, f"took {app.started_in:.2f}s to answer /health"
    assert app.stop() == 0
    assert f"listening on http://127.0.0.1:{app.port}" in (app.output or "")


def test_a_wrong_database_url_is_a_clear_exit(tmp_path: Path) -> None:
    for url, message in [
        ("sqlite://relative/acebook.db", "use an absolute path"),
        ("mysql://db/acebook", "expected sqlite:///abs/path.db or postgresql://"),
        (f"sqlite://{tmp_path}/missing-dir/acebook.db", "cannot open the database"),
    ]:
        running = start({"DATABASE_URL": url})
        assert running.stop() == 2
        assert message in (running.errors or "") and "Traceback" not in (running.errors or "")


def test_deps_are_found_next_to_the_app_wherever_it_is_copied(tmp_path: Path) -> None:
    """Images are relocatable: deps/ is found relative to app.py, not a build path."""
    copy = tmp_path / "instance"
    copy.mkdir()
    for name in ("app.py", "posts.py"):
        shutil.copy(APP_DIR / name, copy / name)
    (copy / "deps").mkdir()
    (copy / "deps" / "acebook_probe.py").write_text("WHERE = __file__\n")
    out = subprocess.run(
        [sys.executable, "-B", "-c", "import app, acebook_probe; print(acebook_probe.WHERE)"],
        cwd=copy,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == str(copy / "deps" / "acebook_probe.py")


def test_a_lost_database_is_a_503_and_health_stays_up(
    tmp_path: Path, launch: Callable[..., Running]
) -> None:
    (tmp_path / "db").mkdir()
    app = launch(DATABASE_URL=f"sqlite://{tmp_path}/db/acebook.db")
    assert app.post_json("/api/posts", {"body": "before"})[0] == 201
    shutil.rmtree(tmp_path / "db")
    status, body = app.post_json("/api/posts", {"body": "after"})
    assert (status, body) == (503, {"error": "database unavailable"})
    assert app.request("/api/posts")[0] == 503
    assert app.request("/health")[0] == 200
    assert app.stop() == 0
    assert "acebook: cannot open the database" in (app.errors or "")
