"""How fleets, deployments and their results look to people (rich, stdout/stderr)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from kiln.cli.output import console, err_console
from kiln.deploy import Result
from kiln.durations import format_duration


def indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


def print_result(result: Result) -> None:
    if result.resumed is not None:
        print_result(result.resumed)
    took = f" in {format_duration(result.duration)}" if result.duration else ""
    if result.outcome == "unchanged":
        # a settings change applied without replacing any instance is not "nothing"
        done = f"no instance replaced; {result.message}" if result.message else "nothing to do"
        console.print(f"{result.fleet} already serves {result.to_image}: {escape(done)}")
        return
    if result.outcome == "succeeded":
        console.print(f"[green]✓[/] {escape(result.message or '')}{took} ({result.deployment})")
        return
    if result.ok:  # rolled back as the user asked
        console.print(
            f"[green]✓[/] deployment {result.deployment} rolled back{took}, as asked: the fleet "
            f"serves {escape(result.from_image or 'nothing')} again"
        )
        return
    verb = "rolled back" if result.outcome == "rolled back" else "FAILED"
    headline = f"✗ deployment {result.deployment} {verb}{took}:"
    err_console.print(f"[bold red]{headline}[/] {escape(result.message or '')}")
    if result.log:
        err_console.print(f"  log tail of {result.instance}:", style="dim")
        err_console.print(indent(result.log), markup=False, style="dim")
    if result.outcome == "rolled back":
        err_console.print(f"  the fleet serves {result.from_image or 'nothing'} again")
    elif result.gate == "release":
        err_console.print("  fix the release command (try it with 'kiln run'), then deploy again")
    else:
        err_console.print("  run 'kiln status' to see what runs, then deploy a known-good image")


def print_environments(rows: list[dict[str, Any]]) -> None:
    """``kiln status --all-envs``: what runs where, which code, since when."""
    table = Table(box=None, header_style="bold")
    for column in ("ENV", "FLEET", "ENDPOINT", "IMAGE", "CODE", "SERVING", "DEPLOYED"):
        table.add_column(column)
    for row in rows:
        health = "" if row["healthy"] or not row["serving"] else " [red](unhealthy)[/]"
        age = f"{format_duration(row['age'])} ago" if row["age"] is not None else "-"
        table.add_row(
            row["environment"],
            row["fleet"] or "-",
            row["endpoint"] or "-",
            row["image"] or "-",
            row["code"] or "-",
            f"{row['serving']}{health}",
            age,
        )
    console.print(table)
    codes = {row["code"] for row in rows if row["code"]}
    if len(codes) == 1 and len(rows) > 1 and all(row["code"] for row in rows):
        console.print(f"every environment runs the same code ({codes.pop()})", style="dim")


def _print_certificate(data: dict[str, Any]) -> None:
    """An ACME certificate: what it covers, until when, and a renewal that failed."""
    if "certificate" not in data:
        return
    cert = data["certificate"]
    if cert is None:
        console.print("certificate: not issued yet")
        return
    if "names" in cert:
        console.print(
            f"certificate {', '.join(cert['names'])}  valid until {_clock(cert['not_after'])}"
            f"  renewed from {_clock(cert['renew_at'])}"
        )
    if cert.get("error"):
        console.print(f"[yellow]certificate: {escape(cert['error'])}[/]")


def print_status(data: dict[str, Any]) -> None:
    size = data.get("desired_size", "-")
    console.print(
        f"[bold]fleet {data['fleet']}[/] ({data['provider']})  endpoint "
        f"{data['endpoint'] or '-'}  desired {size}  serving {data.get('serving', '-')}"
    )
    if "current_image" in data:
        console.print(
            f"image {data['current_image'] or '-'}  previous {data['previous_image'] or '-'}"
        )
    if data.get("image_age") is not None:
        base = data.get("base_age")
        based = f", its base image {format_duration(base)} old" if base is not None else ""
        console.print(f"image age {format_duration(data['image_age'])}{based}")
    for warning in data.get("warnings", []):
        console.print(f"[yellow]{escape(warning)}[/]")
    for group in data.get("groups", []):
        attached = "attached" if group.get("attached") else "detached"
        version = f", template v{group['template_version']}" if "template_version" in group else ""
        console.print(
            f"group {group['name']}: {group['image']} x{group['desired']} ({attached}{version})"
        )
    warm = data.get("warm_standby")
    if warm:
        until = _clock(warm["until"]) if warm["until"] else "?"
        console.print(f"warm standby {warm['image']} x{len(warm['instances'])} until {until}")
    _print_certificate(data)
    _print_instances(data["instances"])
    for i in data["instances"]:
        if i.get("stale"):
            more = f" (and {len(i['stale']) - 2} more)" if len(i["stale"]) > 2 else ""
            console.print(
                f"[yellow]{i['id']} runs host files replaced since it started: "
                f"{escape(', '.join(i['stale'][:2]))}{more}[/]: 'kiln refresh' replaces it"
            )
    dep = data.get("deployment_in_progress")
    lock = data.get("lock")
    if dep:
        console.print(deployment_line(dep, lock, time.time()))
    if lock:
        beat, expires = lock.get("heartbeat"), lock.get("expires")
        ago = f", heartbeat {format_duration(max(0.0, time.time() - beat))} ago" if beat else ""
        if expires:
            ago += f", expires in {format_duration(max(0.0, expires - time.time()))}"
        stale = lock.get("stale")
        if stale:  # nobody deploys: say so rather than "locked"
            ago += f": {stale}, so the next command takes the lock over"
        console.print(f"[yellow]locked by {escape(str(lock.get('holder')))}{ago}[/]")


def deployment_line(dep: dict[str, Any], lock: dict[str, Any] | None, now: float) -> str:
    """The unfinished deployment, and what to do about it: nothing yet while its
    holder still runs it (resuming or rolling back would only meet its lock)."""
    from kiln.deploy.plan import span

    shown = f"{span(dep['from'], dep['to'])}, {dep['strategy']}"
    held = lock is not None and (lock.get("expires") or 0) > now and not lock.get("stale")
    if dep["outcome"] == "running" and held:
        advice = "wait for it (or add --wait to the next command)"
    else:
        advice = "finish it with 'kiln deploy --resume' or undo it with 'kiln rollback'"
    return f"[yellow]deployment {dep['id']} ({shown}) is {dep['outcome']}[/]: {advice}"


# Ended instances stay listed (their logs are kept for log_retention), but a
# crash-looping release would otherwise bury the live ones under dozens of rows.
SHOWN_ENDED = 3


def _print_instances(instances: list[dict[str, Any]]) -> None:
    if not instances:
        console.print("no instances")
        return
    ended = [i for i in instances if i["state"] in ("failed", "terminated")]
    hidden = ended[:-SHOWN_ENDED] if len(ended) > SHOWN_ENDED else []
    instances = [i for i in instances if i not in hidden]
    table = Table(box=None, header_style="bold")
    # ids are what users copy into `kiln logs`: never cut them short. STATE says
    # whether it is healthy; IN LB whether the load balancer sends it traffic.
    widths = {"INSTANCE": 14, "IMAGE": 16, "STATE": 9, "ADDRESS": 15}
    for column in ("INSTANCE", "IMAGE", "STATE", "IN LB", "AGE", "ADDRESS"):
        table.add_column(column, no_wrap=True, min_width=widths.get(column, 4))
    for i in instances:
        table.add_row(
            i["id"],
            i["image"],
            i["state"] + (" (warm)" if i.get("warm") else ""),
            "yes" if i["in_service"] and i["state"] not in ("failed", "terminated") else "no",
            format_duration(i["age"]),
            i["address"] or "-",
        )
    console.print(table)
    if hidden:
        console.print(
            f"{len(hidden)} older failed instance(s) not shown, kept for their logs: "
            "'kiln status --json' lists them, 'kiln logs ID' says why each ended"
        )


def print_history(entries: list[dict[str, Any]]) -> None:
    """A table on a wide terminal; one line per deployment (reason below) otherwise."""
    rows = [_history_row(e) for e in entries]
    if console.width < 140:
        for row in rows:
            head = "  ".join(
                [row["id"], row["started"], row["change"], row["how"], row["outcome"],
                 row["took"], row["who"]]
            )  # fmt: skip
            console.print(head, markup=True)
            if row["why"]:
                console.print(f"    {row['why']}", markup=True)
        return
    table = Table(box=None, header_style="bold")
    widths = {"DEPLOYMENT": 12, "STARTED": 11, "OUTCOME": 11}
    for column in ("DEPLOYMENT", "STARTED", "FROM → TO", "STRATEGY", "OUTCOME", "TOOK", "WHO"):
        table.add_column(column, no_wrap=column in widths, min_width=widths.get(column))
    table.add_column("REASON", overflow="fold")
    for row in rows:
        table.add_row(
            row["id"], row["started"], row["change"], row["how"], row["outcome"],
            row["took"], row["who"], row["why"],
        )  # fmt: skip
    console.print(table)


def _history_row(e: dict[str, Any]) -> dict[str, str]:
    outcome = e.get("outcome") or "-"
    style = {"succeeded": "green", "rolled back": "yellow", "failed": "red"}.get(outcome)
    kind = e.get("kind") or "deploy"
    duration = e.get("duration")
    return {
        "id": e.get("id") or "-",
        "started": _short_clock(e["started"]) if e.get("started") else "-",
        "change": f"{e.get('from') or '-'} → {e.get('to') or '-'}",
        "how": (e.get("strategy") or "-") if kind == "deploy" else kind,
        "outcome": f"[{style}]{outcome}[/]" if style else outcome,
        "took": format_duration(duration) if duration is not None else "-",
        "who": escape(
            (e.get("who") or "-") + (f" ({e['commit'][:10]})" if e.get("commit") else "")
        ),
        "why": escape(_why(e)),
    }


def _why(entry: dict[str, Any]) -> str:
    """The user's reason; for a deployment that did not succeed, what went wrong."""
    reason = entry.get("reason") or ""
    if entry.get("outcome") in ("rolled back", "failed") and entry.get("message"):
        return f"{reason}: {entry['message']}" if reason else str(entry["message"])
    return reason


def _short_clock(ts: float) -> str:
    """UTC month-day hour:minute: fits the table; --json has the full timestamp."""
    return datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M")


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")
