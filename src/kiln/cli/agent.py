"""``kiln agent start|stop|status|run`` and ``kiln logs``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.table import Table

from kiln.cli.app import State, cli, pass_state
from kiln.cli.output import console, emit_json, note
from kiln.errors import KilnError
from kiln.local.agent import log_path, read_pid, serve
from kiln.local.client import AgentClient, agent_status, start_agent, stop_agent
from kiln.local.procs import log_tail
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
        console.print(f"balancer running, pid {status['balancer_pid']}")
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
@click.argument("instance")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Lines to show first.",
)
@pass_state
def logs(state: State, instance: str, follow: bool, lines: int) -> None:
    """Show an instance's log (stdout and stderr)."""
    path = instance_log(state.home(), instance)
    text = log_tail(path, lines)
    if text:
        click.echo(text)
    if follow:
        _follow(path, lambda: _still_running(state, instance))


def _still_running(state: State, instance: str) -> bool:
    """Ask the agent whether the instance may still write; no agent, no writer."""
    try:
        info = AgentClient(state.home()).get(f"/v1/instances/{instance}", timeout=5.0)
    except KilnError:
        return False
    return str(info.get("state")) not in ("failed", "terminated")


def _follow(path: Path, running: Callable[[], bool]) -> None:
    """Print what gets appended, surviving the size cap's truncation, until the instance ends."""
    offset = path.stat().st_size
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
