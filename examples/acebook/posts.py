"""Where acebook's posts live: an external database named by DATABASE_URL.

The app keeps nothing on its own disk, so any instance can be replaced at any
time. ``sqlite:///abs/path.db`` (a file outside the image, the default) and
``postgresql://...`` (needs psycopg: see requirements.txt) are supported.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_URL = "sqlite:///" + str(Path(tempfile.gettempdir(), "acebook.db")).lstrip("/")
MAX_BODY = 500
MAX_AUTHOR = 40

_SCHEMA = {
    "sqlite": "id INTEGER PRIMARY KEY AUTOINCREMENT",
    "postgresql": "id BIGSERIAL PRIMARY KEY",
}
_COLUMNS = "author TEXT NOT NULL, body TEXT NOT NULL, created_at TEXT NOT NULL, " + (
    "instance TEXT NOT NULL, image TEXT NOT NULL"
)


class DatabaseError(Exception):
    """DATABASE_URL is wrong or the database cannot be used; the message says why."""


class InvalidPost(ValueError):
    """A post a user sent that cannot be stored."""


@dataclass(frozen=True)
class Post:
    id: int
    author: str
    body: str
    created_at: str
    instance: str
    image: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Posts:
    """Create and list posts; one short connection per call, safe across threads."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.kind = "postgresql" if parts.scheme in ("postgres", "postgresql") else parts.scheme
        if self.kind == "sqlite":
            if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
                raise DatabaseError(
                    f"DATABASE_URL {url!r}: use an absolute path, sqlite:///abs/path/acebook.db"
                )
            self._path = parts.path
        elif self.kind == "postgresql":
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise DatabaseError(
                    "DATABASE_URL is PostgreSQL but psycopg is not installed: "
                    "uncomment it in requirements.txt and bake again"
                ) from None
        else:
            raise DatabaseError(
                f"DATABASE_URL {url!r}: expected sqlite:///abs/path.db or postgresql://..."
            )
        self._mark = "?" if self.kind == "sqlite" else "%s"

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        if self.kind == "sqlite":
            return (sqlite3.Error,)
        import psycopg

        return (psycopg.Error,)

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        """A connection; any driver failure becomes one DatabaseError (a 503, not a crash)."""
        errors = self._driver_errors()
        try:
            if self.kind == "sqlite":
                conn: Any = sqlite3.connect(self._path, timeout=10, isolation_level=None)
                conn.execute("PRAGMA busy_timeout = 10000")
            else:
                import psycopg

                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
        except (*errors, OSError) as exc:
            where = self.url if self.kind == "sqlite" else "(PostgreSQL)"  # no password in logs
            raise DatabaseError(f"cannot open the database {where}: {exc}") from exc
        try:
            yield conn
        except errors as exc:
            raise DatabaseError(f"database error: {exc}") from exc
        finally:
            conn.close()

    def migrate(self) -> None:
        """Create the table if needed; every instance runs it at start, so idempotent."""
        create = f"CREATE TABLE IF NOT EXISTS posts ({_SCHEMA[self.kind]}, {_COLUMNS})"
        with self._connect() as conn:
            if self.kind == "sqlite":
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(create)
            else:  # concurrent CREATE ... IF NOT EXISTS can still collide in PostgreSQL
                conn.execute("SELECT pg_advisory_lock(7411)")
                try:
                    conn.execute(create)
                finally:
                    conn.execute("SELECT pg_advisory_unlock(7411)")

    def create(self, author: str, body: str, *, instance: str, image: str) -> Post:
        author, body = author.strip() or "anonymous", body.strip()
        if not body:
            raise InvalidPost("a post needs some text")
        if len(body) > MAX_BODY or len(author) > MAX_AUTHOR:
            raise InvalidPost(
                f"keep posts under {MAX_BODY} and names under {MAX_AUTHOR} characters"
            )
        created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        m = self._mark
        sql = (
            "INSERT INTO posts (author, body, created_at, instance, image) "
            f"VALUES ({m}, {m}, {m}, {m}, {m})"
        )
        values = (author, body, created, instance, image)
        with self._connect() as conn:
            if self.kind == "sqlite":  # lastrowid: RETURNING needs SQLite 3.35+
                post_id = conn.execute(sql, values).lastrowid
            else:
                post_id = conn.execute(sql + " RETURNING id", values).fetchone()[0]
        return Post(int(post_id), author, body, created, instance, image)

    def latest(self, limit: int = 50) -> list[Post]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, author, body, created_at, instance, image FROM posts "
                f"ORDER BY id DESC LIMIT {int(limit)}"
            ).fetchall()
        return [Post(int(r[0]), *map(str, r[1:])) for r in rows]

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM posts").fetchone()[0])
