"""The agent's control API: JSON over HTTP on a private Unix socket, plus /metrics.

Paths are versioned (``/v1/...``). A ``KilnError`` raised by an operation
comes back as ``{"error": {"type", "message", "hint"}}`` with status 400/404,
and the client raises the same class again, so users see the same message
whether the agent or the command found the problem.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kiln import __version__
from kiln.errors import ImageNotFound, InstanceNotFound, KilnError
from kiln.local.codeid import kiln_code
from kiln.local.model import FleetSettings
from kiln.local.supervisor import Supervisor
from kiln.local.watchdog import LoopWatchdog

if TYPE_CHECKING:
    from kiln.local.uipages import FleetPages  # it talks to the agent through the client

log = logging.getLogger("kiln.agent")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SUPERVISOR = web.AppKey("supervisor", Supervisor)
STOP = web.AppKey("stop", asyncio.Event)
STARTED = web.AppKey("started", float)
STOP_INSTANCES = web.AppKey("stop_instances", list)
WATCHDOG = web.AppKey("watchdog", LoopWatchdog)
PAGES: web.AppKey[FleetPages] = web.AppKey("pages")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except KilnError as exc:
        status = 404 if isinstance(exc, ImageNotFound | InstanceNotFound) else 400
        body = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        return web.json_response({"error": body}, status=status)
    except (KeyError, TypeError, ValueError) as exc:
        body = {"type": "AgentError", "message": f"bad request: {exc}", "hint": None}
        return web.json_response({"error": body}, status=400)
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug: say so in JSON, keep serving, keep the trace in the log
        log.exception("error handling %s %s", request.method, request.path)
        body = {
            "type": "AgentError",
            "message": f"the agent failed on {request.method} {request.path}: {exc}",
            "hint": "see the agent's log (KILN_HOME/agent/agent.log)",
        }
        return web.json_response({"error": body}, status=500)


def make_app(
    supervisor: Supervisor,
    stop: asyncio.Event,
    watchdog: LoopWatchdog | None = None,
    pages: FleetPages | None = None,
) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[WATCHDOG] = watchdog or LoopWatchdog()
    app[SUPERVISOR] = supervisor
    app[STOP] = stop
    app[STARTED] = time.time()
    app[STOP_INSTANCES] = [False]
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/fleets/{fleet}", describe)
    app.router.add_get("/v1/fleets/{fleet}/stats", stats)
    app.router.add_get("/v1/fleets/{fleet}/series", traffic_series)
    app.router.add_post("/v1/fleets/{fleet}/launch", launch)
    app.router.add_post("/v1/fleets/{fleet}/settings", fleet_settings)
    app.router.add_post("/v1/fleets/{fleet}/in-service", in_service)
    app.router.add_post("/v1/fleets/{fleet}/terminate", terminate)
    app.router.add_get("/v1/instances/{instance}", instance)
    app.router.add_post("/v1/shutdown", shutdown)
    app.router.add_get("/metrics", metrics)
    if pages is not None:  # the kiln ui page, read-only: /ui/<fleet>/ (kiln.local.uipages)
        app[PAGES] = pages
        pages.add_to(app)
        app.router.add_get("/v1/ui", ui_pages)
    return app


async def status(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    fleets = {}
    for name, fleet in sup.fleets.items():
        states: dict[str, int] = {}
        for rec in sup.instances.values():
            if rec.fleet == name:
                states[rec.state] = states.get(rec.state, 0) + 1
        fleets[name] = {
            "endpoint": fleet.settings.endpoint,
            "listening": fleet.listening,
            "groups": fleet.groups,
            "instances": states,
        }
    return web.json_response(
        {
            "pid": os.getpid(),
            "version": __version__,
            "code": kiln_code(),
            "started": request.app[STARTED],
            "uptime_seconds": round(time.time() - request.app[STARTED], 3),
            "fleets": fleets,
            "balancer_pid": (sup.lb.info or {}).get("pid"),
        }
    )


async def describe(request: web.Request) -> web.Response:
    return web.json_response(request.app[SUPERVISOR].describe(request.match_info["fleet"]))


async def stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SUPERVISOR].stats(request.match_info["fleet"]))


async def traffic_series(request: web.Request) -> web.Response:
    """``[[at, seconds, requests, errors], ...]`` since ``?since=`` (epoch seconds)."""
    try:
        since = float(request.query.get("since", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="since must be a number of seconds") from None
    buckets = await request.app[SUPERVISOR].db.series(request.match_info["fleet"], since)
    return web.json_response([b.to_json() for b in buckets])


async def _body(request: web.Request) -> dict[str, Any]:
    data = await request.json()
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


async def launch(request: web.Request) -> web.Response:
    data = await _body(request)
    count = int(data["count"])
    if count < 1:
        raise ValueError("count must be at least 1")
    ids = await request.app[SUPERVISOR].launch(
        request.match_info["fleet"],
        FleetSettings.from_json(data["settings"]),
        str(data["image"]),
        count,
        bool(data.get("in_service", True)),
        {str(k): str(v) for k, v in data.get("secrets", {}).items()},
    )
    return web.json_response({"ids": ids})


async def fleet_settings(request: web.Request) -> web.Response:
    data = await _body(request)
    changes = await request.app[SUPERVISOR].apply_settings(
        request.match_info["fleet"],
        FleetSettings.from_json(data["settings"]),
        {str(k): str(v) for k, v in data.get("secrets", {}).items()},
    )
    return web.json_response({"changes": changes})


async def in_service(request: web.Request) -> web.Response:
    data = await _body(request)
    await request.app[SUPERVISOR].set_in_service(
        request.match_info["fleet"], list(data.get("add", [])), list(data.get("remove", []))
    )
    return web.json_response({"ok": True})


async def terminate(request: web.Request) -> web.Response:
    data = await _body(request)
    await request.app[SUPERVISOR].terminate(request.match_info["fleet"], list(data["ids"]))
    return web.json_response({"ok": True})


async def instance(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    wanted = request.match_info["instance"]
    matches = [r for i, r in sup.instances.items() if i.startswith(wanted)]
    if len(matches) != 1:
        problem = "no instance" if not matches else f"{len(matches)} instances match"
        raise InstanceNotFound(f"{problem} {wanted}", hint="see 'kiln status'")
    return web.json_response(matches[0].public())


async def ui_pages(request: web.Request) -> web.Response:
    """Where each fleet's page is served on loopback, with the token to open it."""
    pages = request.app[PAGES]
    await pages.tick()  # settings pushed a moment ago are listened on now, not in a second
    return web.json_response(pages.describe())


async def shutdown(request: web.Request) -> web.Response:
    data = await _body(request)
    request.app[STOP_INSTANCES][0] = bool(data.get("stop_instances", False))
    request.app[STOP].set()
    return web.json_response({"ok": True})


async def metrics(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    lines = [
        "# HELP kiln_instances Instances the agent knows, by fleet and state.",
        "# TYPE kiln_instances gauge",
    ]
    counts: dict[tuple[str, str], int] = {}
    for rec in sup.instances.values():
        counts[(rec.fleet, rec.state)] = counts.get((rec.fleet, rec.state), 0) + 1
    lines += [f'kiln_instances{{fleet="{f}",state="{s}"}} {n}' for (f, s), n in counts.items()]
    lines += request.app[WATCHDOG].metrics()
    text = "\n".join(lines) + "\n" + await sup.lb.metrics()  # its counters outlive the agent
    return web.Response(text=text, content_type="text/plain")
