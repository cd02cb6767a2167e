"""A small, bounded HTTP load loop: the demo's proof that nobody saw a failure.

Keep-alive GETs from a few threads against one address, counting answers,
failures and latency. Bounded in time (``max_seconds``) so a forgotten loop
stops by itself.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadLoop:
    host: str
    port: int
    path: str = "/"
    workers: int = 2
    max_seconds: float = 300.0
    pause: float = 0.005  # between requests of one worker: steady, not a flood
    fresh: bool = False  # a new connection for every request: proves the listener, not a pool
    accept: Callable[[int], bool] = field(default=lambda status: status < 500)
    max_errors: int | None = 20  # failure messages kept (None: all)
    phase: str = ""  # what is going on now; failures are labelled with it
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LoadLoop:
        for _ in range(self.workers):
            thread = threading.Thread(target=self._run, daemon=True, name="kiln-load")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def __enter__(self) -> LoadLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            conn = conn or http.client.HTTPConnection(self.host, self.port, timeout=10)
            started = time.perf_counter()
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                ok, why = self.accept(response.status), f"HTTP {response.status}"
                broken = False
            except (OSError, http.client.HTTPException) as exc:
                ok, why, broken = False, f"{type(exc).__name__}: {exc}", True
            if self.fresh or broken:
                conn.close()
                conn = None
            self._record(ok, why, time.perf_counter() - started)
            if self.pause:
                self._stop.wait(self.pause)
        if conn is not None:
            conn.close()

    def _record(self, ok: bool, why: str, seconds: float) -> None:
        with self._lock:
            self.sent += 1
            self.latencies.append(seconds)
            if not ok:
                self.failed += 1
                if self.max_errors is None or len(self.errors) < self.max_errors:
                    self.errors.append(f"{self.phase}: {why}" if self.phase else why)

    def percentile(self, q: float) -> float:
        with self._lock:
            ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0
