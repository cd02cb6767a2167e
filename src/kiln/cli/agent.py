"""``kiln agent start|stop|status|run`` and ``kiln logs``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import click
from rich.table import Table

from kiln.cli.app import State, cli, environment_option, pass_state
from kiln.cli.output import console, emit_json, note
from kiln.durations import parse_duration
from kiln.errors import KilnError
from kiln.home import Home
from kiln.local.agent import log_path, read_pid, serve
from kiln.local.client import AgentClient, agent_status, ensure_agent, start_agent, stop_agent
from kiln.local.compiled import mapped_in
from kiln.local.logtimes import timed_lines
from kiln.local.procs import log_end, log_tail
from kiln.local.provider import instance_log


@cli.group()
def agent() -> None:
    """The local agent: runs instances, balances load, checks health."""


@agent.command("start")
@click.option("--json", "as_json", is_flag=True, help="Print the agent's status as JSON.")
@pass_state
def agent_start(state: State, as_json: bool) -> None:
    """Start the agent in the background (nothing happens if it runs already)."""
    status, started = start_agent(state.home())
    if as_json:
        emit_json({"started": started, **status})
    elif started:
        console.print(f"agent started (pid {status['pid']}), log: {log_path(state.home())}")
    else:
        console.print(f"agent already running (pid {status['pid']})")


@agent.command("stop")
@click.option("--all", "stop_all", is_flag=True, help="Also stop every instance it runs.")
@pass_state
def agent_stop(state: State, stop_all: bool) -> None:
    """Stop the agent. Instances keep running and are re-adopted at the next start."""
    pid = stop_agent(state.home(), stop_instances=stop_all)
    if pid is None:
        console.print("agent not running")
    else:
        what = "agent and its instances" if stop_all else "agent (instances keep running)"
        console.print(f"stopped the {what}, pid {pid}")


@agent.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_state
def agent_status_cmd(state: State, as_json: bool) -> None:
    """Show whether the agent runs and what it serves (exit 3 when it does not run)."""
    home = state.home()
    status = agent_status(home)
    if status is not None and status.get("balancer_pid"):
        # which form of the hot path the running balancer loaded (kiln.local.compiled)
        status["balancer_compiled"] = mapped_in(int(str(status["balancer_pid"])))
    if as_json:
        emit_json({"running": status is not None, **(status or {})})
    elif status is None:
        stale = read_pid(home)
        extra = f" (stale pid file names pid {stale})" if stale else ""
        console.print(f"agent not running{extra}")
    else:
        _print_status(status)
    if status is None:
        sys.exit(3)


def _print_status(status: dict[str, object]) -> None:
    console.print(f"agent running, pid {status['pid']}, up {status['uptime_seconds']}s")
    if status.get("balancer_pid"):
        compiled = status.get("balancer_compiled")
        form = (
            "its hot path unknown"  # another user's process: its memory map is private
            if not isinstance(compiled, list)
            else "hot path compiled: " + ", ".join(compiled)
            if compiled
            else "hot path pure Python"
        )
        console.print(f"balancer running, pid {status['balancer_pid']}, {form}")
    fleets = status.get("fleets") or {}
    assert isinstance(fleets, dict)
    if not fleets:
        console.print("no fleets")
        return
    table = Table("fleet", "endpoint", "groups", "instances")
    for name, info in fleets.items():
        groups = ", ".join(f"{n}x {img}" for img, n in info["groups"].items()) or "-"
        states = ", ".join(f"{n} {s}" for s, n in sorted(info["instances"].items())) or "-"
        table.add_row(name, info["endpoint"], groups, states)
    console.print(table)


@agent.command("run")
@pass_state
def agent_run(state: State) -> None:
    """Run the agent in the foreground (for systemd or another service manager)."""
    note(f"agent serving {state.home().agent_socket}; Ctrl-C stops it")
    serve(state.home())


@cli.command()
@click.argument("instance", required=False)
@environment_option
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Lines to show first.",
)
@click.option("--since", metavar="AGE", help="Only lines written in the last AGE, e.g. 10m.")
@pass_state
def logs(state: State, instance: str | None, follow: bool, lines: int, since: str | None) -> None:
    """Show logs (stdout and stderr): one instance's, or every instance of the fleet.

    Without INSTANCE, the lines of every instance of this app's fleet (ended
    ones too, for [provider.local] log_retention) are interleaved by time,
    each prefixed with its time (UTC) and instance id.
    """
    try:
        cutoff = time.time() - parse_duration(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    home = state.home()
    if instance is not None:
        path = instance_log(home, instance)
        # following: where from, taken before reading, so what is written meanwhile is
        # followed; without -f a half-written last line is shown as it is
        end = log_end(path) if follow else None
        if cutoff is None:
            text = log_tail(path, lines, end)
        else:
            recent = [line for at, line in timed_lines(path, end) if at >= cutoff]
            text = "\n".join(recent[-lines:] if lines else [])
        if text:
            click.echo(text)
        if end is not None:
            _follow(path, end, lambda: _still_running(state, instance))
        return
    fleet = state.config().config.fleet_name
    known = _fleet_logs(home, fleet, start=True) or {}
    if not known:
        note(
            f"fleet {fleet} has no instance with logs: it was not deployed on this host, "
            "or its instances ended longer ago than [provider.local] log_retention"
        )
    ends = {iid: log_end(path) for iid, (path, _live) in known.items()} if follow else {}
    # by time, then instance; an instance's lines that share a time keep their order
    # (a traceback's lines are written at once: sorting them by text scrambled them)
    merged = sorted(
        (
            (at, iid, line)
            for iid, (path, _live) in known.items()
            for at, line in timed_lines(path, ends.get(iid))
            if cutoff is None or at >= cutoff
        ),
        key=lambda row: (row[0], row[1]),
    )
    for at, iid, line in merged[-lines:] if lines else []:
        click.echo(f"{_clock(at)} {iid}  {line}")
    if follow:
        _follow_fleet(home, fleet, known, ends)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}"


def _fleet_logs(
    home: Home, fleet: str, *, start: bool = False
) -> dict[str, tuple[Path, bool]] | None:
    """Every instance of the fleet the agent still knows: its log, and whether it is live;
    None when the agent did not answer. With ``start``, an agent that is not running is
    started, as `kiln status` does (it knows which instances are the fleet's), and its
    errors are the user's: `kiln logs` printed nothing and succeeded without one."""
    path = f"/v1/fleets/{quote(fleet, safe='')}"
    if start:
        data = ensure_agent(home).get(path, timeout=10.0)
    else:
        try:
            data = AgentClient(home).get(path, timeout=10.0)
        except KilnError:
            return None
    return {
        i["id"]: (Path(i["log"]), i["state"] not in ("failed", "terminated"))
        for i in data.get("instances", [])
        if i.get("log")
    }


def _follow_fleet(
    home: Home, fleet: str, known: dict[str, tuple[Path, bool]], offsets: dict[str, int]
) -> None:
    """Print each instance's new lines past ``offsets`` as they come, prefixed; new
    instances join in.

    Ends once the fleet has no live instance left and everything is printed. An
    instance the agent no longer lists (its log expired after it ended) has ended
    too: before, the last word known of it (live) was kept, and a fleet whose logs
    all expired between two looks was followed for ever.
    """
    partial: dict[str, bytes] = {}
    polls = 0
    while True:
        if polls % 10 == 0:
            listed = _fleet_logs(home, fleet)
            if listed is not None:  # the agent answered: whoever it no longer lists ended
                known = {iid: (path, False) for iid, (path, _live) in known.items()} | listed
            for iid in known:
                offsets.setdefault(iid, 0)  # started since: all of it is new
        printed = False
        for iid, (path, _live) in known.items():
            size = _size(path)
            if size < offsets[iid]:
                offsets[iid] = 0  # capped: it starts again
            if size > offsets[iid]:
                with path.open("rb") as f:
                    f.seek(offsets[iid])
                    data = partial.pop(iid, b"") + f.read(size - offsets[iid])
                offsets[iid] = size
                *complete, rest = data.split(b"\n")
                if rest:
                    partial[iid] = rest
                for raw in complete:
                    text = raw.rstrip(b"\r").decode("utf-8", "replace")
                    click.echo(f"{_clock(time.time())} {iid}  {text}")
                printed = True
        if not printed and polls % 10 == 0 and not any(live for _p, live in known.values()):
            return
        polls += 1
        time.sleep(0.2)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _still_running(state: State, instance: str) -> bool:
    """Ask the agent whether the instance may still write; no agent, no writer."""
    try:
        info = AgentClient(state.home()).get(f"/v1/instances/{instance}", timeout=5.0)
    except KilnError:
        return False
    return str(info.get("state")) not in ("failed", "terminated")


def _follow(path: Path, offset: int, running: Callable[[], bool]) -> None:
    """Print what gets appended past ``offset``, surviving the size cap's truncation,
    until the instance ends."""
    polls = 0
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        if size < offset:
            offset = 0
        if size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(size - offset)
            offset = size
            sys.stdout.write(data.decode("utf-8", "replace"))
            sys.stdout.flush()
        elif polls % 10 == 0 and not running():
            return  # it has ended and everything it wrote is printed
        polls += 1
        time.sleep(0.2)
