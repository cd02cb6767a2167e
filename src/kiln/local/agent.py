"""The agent process: one per KILN_HOME, held by a lock, serving a private socket.

Run it in the foreground (``kiln agent run``, for a service manager) or as a
daemon (``kiln agent start``, or any command that needs it). An exclusive
``flock`` on ``agent/agent.lock`` is the truth about whether an agent runs:
it dies with the process, so a stale pid file or socket never blocks a start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from kiln.errors import AgentError, KilnError
from kiln.home import Home
from kiln.image.store import Store
from kiln.local.api import STOP_INSTANCES, make_app
from kiln.local.model import AgentDB
from kiln.local.procs import cap_log, loop_factory, raise_fd_limit
from kiln.local.supervisor import Supervisor
from kiln.local.watchdog import LoopWatchdog
from kiln.pids import lock_exclusive, read_pid_file

Ready = Callable[[str | None], None]
AGENT_LOG_MAX = 10 * 1024 * 1024
log = logging.getLogger("kiln.agent")


def lock_path(home: Home) -> Path:
    return home.agent_dir / "agent.lock"


def pid_path(home: Home) -> Path:
    return home.agent_dir / "agent.pid"


def log_path(home: Home) -> Path:
    return home.agent_dir / "agent.log"


def db_path(home: Home) -> Path:
    return home.agent_dir / "agent.db"


def check_socket_owner(path: Path) -> None:
    """Refuse a socket someone else owns: it is not ours to use or to replace."""
    try:
        owner = path.lstat().st_uid
    except FileNotFoundError:
        return
    if owner != os.getuid():
        raise AgentError(
            f"the agent socket {path} belongs to uid {owner}, not to you (uid {os.getuid()})",
            hint="another user's agent uses this KILN_HOME: set KILN_HOME to a directory of "
            "your own",
        )


def read_pid(home: Home) -> int | None:
    return read_pid_file(pid_path(home))


def serve(home: Home, ready: Ready | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT or an API shutdown."""
    home.ensure()
    home.agent_dir.mkdir(mode=0o700, exist_ok=True)
    lock_fd = os.open(lock_path(home), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not lock_exclusive(lock_fd, wait=2.0):  # a predecessor may still be exiting
            raise AgentError(
                f"an agent already runs for {home.root} (pid {read_pid(home)})",
                hint="'kiln agent status' shows it; 'kiln agent stop' stops it",
            )
        check_socket_owner(home.agent_socket)
        home.agent_socket.unlink(missing_ok=True)  # stale: we hold the lock, nobody serves it
        pid_path(home).write_text(f"{os.getpid()}\n")
        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(_serve(home, ready))
        finally:
            pid_path(home).unlink(missing_ok=True)
            home.agent_socket.unlink(missing_ok=True)
    finally:
        os.close(lock_fd)


async def _serve(home: Home, ready: Ready | None) -> None:
    raise_fd_limit()
    db = AgentDB(db_path(home))
    supervisor = Supervisor(home, db, Store(home))
    await supervisor.restore()
    stop = asyncio.Event()
    watchdog = LoopWatchdog()
    from kiln.local.uipages import FleetPages  # it reads through the client, which imports us

    pages = FleetPages(home, lambda: {n: f.settings for n, f in supervisor.fleets.items()})
    app = make_app(supervisor, stop, watchdog, pages)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    old_umask = os.umask(0o177)  # the socket is born private: no window where others connect
    try:
        await web.UnixSite(runner, str(home.agent_socket)).start()
    finally:
        os.umask(old_umask)
    home.agent_socket.chmod(0o600)
    await pages.tick()  # the restored fleets' ui_listen pages are open once we say ready
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    healer = asyncio.create_task(supervisor.run())
    pusher = asyncio.create_task(supervisor.lb.run())
    watching = asyncio.create_task(watchdog.run())
    showing = asyncio.create_task(pages.run())
    log.info("agent %s serving %s", os.getpid(), home.agent_socket)
    if ready is not None:
        ready(None)
    try:
        await stop.wait()
    finally:
        healer.cancel()
        pusher.cancel()
        watching.cancel()
        showing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await showing
        await pages.close()
        await supervisor.shutdown(stop_instances=app[STOP_INSTANCES][0])
        await runner.cleanup()
        db.close()
        log.info("agent %s stopped", os.getpid())


def _daemonize(home: Home) -> int:
    """Fork; the parent reports the child's readiness (or its error) and exits."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ok":
            print(child)
            return 0
        sys.stderr.write(message or f"the agent exited at once; see {log_path(home)}\n")
        return 1
    os.close(read_end)
    os.setsid()
    os.umask(0o077)
    home.agent_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.chdir(home.agent_dir)  # never hold on to the starter's directory
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    cap_log(log_path(home), AGENT_LOG_MAX)
    out = os.open(log_path(home), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)

    pending = [True]

    def ready(error: str | None) -> None:
        if pending.pop() if pending else False:
            os.write(write_end, b"ok" if error is None else error.encode())
            os.close(write_end)

    try:
        serve(home, ready)
    except KilnError as exc:
        hint = f"\nhint: {exc.hint}" if exc.hint else ""
        ready(f"{exc.message}{hint}\n")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.local.agent")
    parser.add_argument("--home", required=True)
    parser.add_argument("--daemon", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    home = Home.resolve(args.home)
    if args.daemon:
        return _daemonize(home)
    try:
        serve(home)
    except KilnError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
