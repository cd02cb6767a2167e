"""``kiln deploy``, ``status``, ``history``, ``rollback``, ``scale``, ``unlock``."""

from __future__ import annotations

import math
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click
from rich.markup import escape
from rich.status import Status

from kiln.cli.app import State, cli, environment_option, pass_state, provider_option
from kiln.cli.fleetviews import (
    indent,
    print_environments,
    print_history,
    print_result,
    print_status,
)
from kiln.cli.output import console, emit_json, err_console
from kiln.deploy import Event, Plan, Result, StateDb
from kiln.deploy.journal import Journal
from kiln.deploy.lock import unlock as unlock_fleet
from kiln.durations import parse_duration
from kiln.errors import ConfigError, DeployError, GateFailed, ImageNotFound
from kiln.image.store import Store, short_code
from kiln.platform import Capability, Deployer, Platform, Promotion
from kiln.promotion import check_required, environments_status, healthy_now, with_note

PROVIDER = provider_option("Where the fleet runs.")
JSON = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
WAIT = click.option(
    "--wait",
    "wait",
    metavar="[TIMEOUT]",
    is_flag=False,
    flag_value="forever",
    default=None,
    help="If another deployment holds the fleet, wait for it (up to TIMEOUT, e.g. 10m).",
)


def _wait_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    if value == "forever":
        return math.inf
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wait") from exc


class _Narrator:
    """Live progress on stderr: one line per step, a spinner while waiting."""

    def __init__(self) -> None:
        self.status: Status | None = None
        self.gone = False  # stderr went away (a closed pipe, a dropped ssh): the deploy goes on

    def __call__(self, event: Event) -> None:
        if self.gone:
            return
        try:
            self._show(event)
        except OSError:  # BrokenPipeError, EIO: narration is no reason to stop half-way
            self.gone = True

    def _show(self, event: Event) -> None:
        if event.kind == "progress":
            if self.status is not None:
                self.status.update(f"[dim]{escape(event.message)}[/]")
            return
        style = {"warning": "yellow", "trip": "bold red", "step": "bold"}.get(event.kind, "")
        text = escape(event.message)
        err_console.print(f"[{style}]{text}[/]" if style else text)
        if "plan" in event.data:  # the plan, before anything acts on it
            lines = Plan.from_json(event.data["plan"]).describe()
            err_console.print("\n".join(lines), markup=False, style="dim")
        if event.kind == "trip" and event.data.get("log"):
            err_console.print(indent(event.data["log"]), markup=False, style="dim")

    @contextmanager
    def live(self, enabled: bool) -> Iterator[None]:
        if not enabled or not err_console.is_terminal:
            yield
            return
        with err_console.status("observing the fleet") as status:
            self.status = status
            try:
                yield
            finally:
                self.status = None


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """CI cancels jobs with SIGTERM: stop as safely as on Ctrl-C."""

    def handler(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:  # SIGHUP too: a dropped ssh session stops it as safely, journaled
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def _resolve_image(state: State, engine: Deployer, ref: str) -> str:
    """A store reference (short id, prefix) becomes the image id; others go as given."""
    try:
        record = Store(state.home()).get(ref)
    except ImageNotFound:
        return ref
    app = state.config().config.app.name
    if record.app != app:
        raise DeployError(
            f"image {record.id} was baked for app {record.app}, not {app}",
            hint="deploy it from that app's directory, or pick another with 'kiln images'",
        )
    return record.id


def _required(state: State, provider: str, image: str, override: bool) -> str | None:
    """[environments.X] require: refuse code never healthy there (or note the override)."""
    config = state.config().config
    name = config.environment
    required = config.environments[name].require if name else None
    if name is None or required is None:
        if override:
            raise click.UsageError(
                "--override-require applies to an environment whose [environments.NAME] "
                "sets require; this deploy has none"
            )
        return None
    return check_required(
        state.platform(provider),
        name,
        image,
        state.platform(provider, environment=required),
        required,
        override=override,
    )


def _bake(state: State) -> str:
    from kiln.image.bake import bake

    result = bake(state.config(), state.home())
    verb = "reused" if result.reused else "baked"
    err_console.print(f"{verb} {result.image}")
    return result.image


def _finish(result: Result, as_json: bool) -> None:
    """Print the result; a deployment that did not succeed exits non-zero."""
    if as_json:
        emit_json(result.to_json())
    else:
        print_result(result)
    exit_for(result)


def exit_for(result: Result) -> None:
    """A deployment that did not succeed exits non-zero: rolled back 4, failed otherwise."""
    if result.ok:
        return
    code = GateFailed.exit_code if result.outcome == "rolled back" else DeployError.exit_code
    raise click.exceptions.Exit(code)


@cli.command("deploy")
@click.option("--image", metavar="ID", help="Image to deploy (default: bake the app first).")
@click.option(
    "--strategy",
    type=click.Choice(["rolling", "blue-green", "canary"]),
    help="Default: [fleet] strategy.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan; change no instance (without --image it bakes first, to know the image).",
)
@click.option("--resume", is_flag=True, help="Only finish an interrupted deployment.")
@click.option("--reason", help="Why, recorded in the history.")
@click.option(
    "--override-require",
    is_flag=True,
    help="Deploy code never healthy in the environment [environments.NAME] require names "
    "(recorded in the history).",
)
@click.option(
    "--allow-unverified",
    is_flag=True,
    help="aws: deploy an AMI that has not passed a boot test (no kiln:verified tag).",
)
@JSON
@WAIT
@PROVIDER
@pass_state
def deploy_command(
    state: State,
    image: str | None,
    strategy: str | None,
    dry_run: bool,
    resume: bool,
    reason: str | None,
    override_require: bool,
    allow_unverified: bool,
    as_json: bool,
    wait: str | None,
    provider: str,
) -> None:
    """Move the fleet to a new image: plan, launch, prove healthy, shift, discard."""
    narrator = _Narrator()
    platform = state.platform(provider)
    engine = platform.deployer(narrator, allow_unverified=allow_unverified)
    timeout = _wait_seconds(wait)
    with _sigterm_as_ctrl_c(), narrator.live(not dry_run):
        if resume:
            if image or strategy or dry_run:
                raise click.UsageError(
                    "--resume finishes the interrupted deployment as planned: "
                    "it takes no --image, --strategy or --dry-run"
                )
            result = engine.resume(wait=timeout)
            if result is None:
                if as_json:
                    emit_json({"fleet": engine.fleet, "deployment": None, "outcome": "none"})
                else:
                    console.print(f"no interrupted deployment of {engine.fleet} to resume")
                return
            _finish(result, as_json)
            return
        if strategy == "canary":
            platform.require(Capability.CANARY, "the canary strategy")
        target = _resolve_image(state, engine, image) if image else _bake(state)
        reason = with_note(reason, _required(state, provider, target, override_require))
        if dry_run:
            plan = engine.plan(target, strategy)
            if as_json:
                emit_json(plan.to_json())
            else:
                console.print("\n".join(plan.describe()), markup=False)
            return
        _finish(engine.deploy(target, strategy=strategy, reason=reason, wait=timeout), as_json)


@cli.command("rollback")
@click.option("--to", "to", metavar="IMAGE", help="Image to go back to (default: the previous).")
@click.option("--reason", help="Why, recorded in the history.")
@JSON
@WAIT
@PROVIDER
@pass_state
def rollback_command(
    state: State, to: str | None, reason: str | None, as_json: bool, wait: str | None, provider: str
) -> None:
    """Back to the previous good image; from a warm standby in about one health check."""
    narrator = _Narrator()
    engine = state.platform(provider).deployer(narrator)
    target = _resolve_image(state, engine, to) if to else None
    with _sigterm_as_ctrl_c(), narrator.live(True):
        result = engine.rollback(target, reason=reason, wait=_wait_seconds(wait))
    _finish(result, as_json)


@cli.command("scale")
@click.argument("size", type=click.IntRange(min=0))
@JSON
@WAIT
@PROVIDER
@pass_state
def scale_command(state: State, size: int, as_json: bool, wait: str | None, provider: str) -> None:
    """Change the fleet's desired size; new instances come from the current image.

    0 stops every instance but keeps the fleet (a warning says so); 'kiln
    destroy' removes it.
    """
    narrator = _Narrator()
    engine = state.platform(provider).deployer(narrator)
    with _sigterm_as_ctrl_c(), narrator.live(True):
        result = engine.scale(size, wait=_wait_seconds(wait))
    _finish(result, as_json)


@cli.command("promote")
@click.argument("source", metavar="FROM")
@click.argument("target", metavar="TO")
@click.option(
    "--strategy",
    type=click.Choice(["rolling", "blue-green", "canary"]),
    help="Default: TO's [fleet] strategy.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what promoting would do (reuse, share, copy or derive an AMI on AWS) and the "
    "plan; deploy nothing, and share, copy or build nothing.",
)
@click.option("--reason", help="Why, recorded in TO's history (after the promotion note).")
@JSON
@WAIT
@provider_option("Where both environments run.")
@pass_state
def promote_command(
    state: State,
    source: str,
    target: str,
    strategy: str | None,
    dry_run: bool,
    reason: str | None,
    as_json: bool,
    wait: str | None,
    provider: str,
) -> None:
    """Deploy to TO the code FROM serves healthily now: no bake, only TO's env layer.

    e.g. 'kiln promote staging production'. Refused while FROM is mid-deployment
    or any of its serving instances fails its checks.
    """
    if source == target:
        raise click.UsageError(f"promote {source} to {source}? name two environments")
    config = state.config_for(target).config  # both names checked before anything is read
    origin = state.platform(provider, environment=source)
    platform = state.platform(provider, environment=target)
    platform.require(Capability.PROMOTE, "kiln promote")
    if strategy == "canary":
        platform.require(Capability.CANARY, "the canary strategy")
    state.config_for(source)
    serving = healthy_now(origin, source)
    # lookups only: every refusal comes before anything is shared, copied or built
    promotion = platform.plan_promotion(serving.image, origin)
    required = config.environments[target].require
    note = f"promoted from {source} ({serving.image}, {short_code(serving.code)})"
    if required is not None and required != source:
        forced = check_required(
            platform,
            target,
            promotion.image,
            state.platform(provider, environment=required),
            required,
            override=False,
            code=serving.code,  # a promotion keeps the code; its image may not exist yet
        )
        assert forced is None
    if dry_run:
        _promotion_plan(platform, promotion, serving.image, note, strategy, as_json)
        return
    image = platform.promote_image(serving.image, origin, lambda line: err_console.print(line))
    narrator = _Narrator()
    engine = platform.deployer(narrator)
    err_console.print(f"{note}: deploying {image} to {config.fleet_name}")
    with _sigterm_as_ctrl_c(), narrator.live(True):
        result = engine.deploy(
            image, strategy=strategy, reason=with_note(reason, note), wait=_wait_seconds(wait)
        )
    _finish(result, as_json)


def _promotion_plan(
    platform: Platform,
    promotion: Promotion,
    promoted: str,
    note: str,
    strategy: str | None,
    as_json: bool,
) -> None:
    """What 'kiln promote --dry-run' shows: the promotion's actions, then the deployment plan
    (only once the image exists where the target deploys: on AWS, after a copy or derive)."""
    plan = None
    if promotion.ready:
        plan = platform.deployer(_Narrator()).plan(promotion.image, strategy)
    later = "the deployment plan is made once these have run: 'kiln promote' without --dry-run"
    if as_json:
        emit_json(
            {
                "promoted": promoted,
                "image": promotion.image,
                "actions": list(promotion.actions),
                "plan": plan.to_json() if plan is not None else None,
            }
        )
        return
    err_console.print(f"{note}: {promotion.image}", markup=False)
    for action in promotion.actions:
        err_console.print(f"  {action['text']}", markup=False)
    if plan is None:
        console.print(later, markup=False)
    else:
        console.print("\n".join(plan.describe()), markup=False)


@cli.command("status")
@click.option(
    "--all-envs",
    is_flag=True,
    help="One line per environment of kiln.toml: what runs where, which code, how old.",
)
@JSON
@PROVIDER
@pass_state
def status_command(state: State, all_envs: bool, as_json: bool, provider: str) -> None:
    """The fleet now: endpoint, size, image, instances, any deployment in progress."""
    if all_envs:
        _status_of_environments(state, provider, as_json)
        return
    data = state.platform(provider).status()
    if as_json:
        emit_json(data)
        return
    print_status(data)
    config = state.config().config
    if config.environment is None and config.environments:
        names = ", ".join(sorted(config.environments))
        console.print(
            f"this is the fleet without an environment; kiln.toml has {names}: "
            "see 'kiln status --all-envs' or --env NAME",
            style="dim",
        )


def _status_of_environments(state: State, provider: str, as_json: bool) -> None:
    names = sorted(state.config_for(None).config.environments)
    if not names:
        raise ConfigError(
            "kiln.toml has no [environments]: --all-envs has nothing to show",
            hint="'kiln status' shows the fleet; see docs/environments.md to add environments",
        )
    rows = environments_status({n: state.platform(provider, environment=n) for n in names})
    if as_json:
        emit_json(rows)
        return
    print_environments(rows)


@cli.command("history")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--all", "all_fleets", is_flag=True, help="Every fleet, not just this app's.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, newest first.")
@PROVIDER
@pass_state
def history_command(
    state: State, limit: int, all_fleets: bool, as_json: bool, provider: str
) -> None:
    """Deployments, newest first: from → to, strategy, outcome, duration, who, why."""
    entries = state.platform(provider).history(limit, all_fleets=all_fleets)
    if as_json:
        emit_json(entries)
        return
    if not entries:
        console.print("no deployments yet")
        return
    print_history(entries)


@cli.command("unlock")
@click.option("--force", is_flag=True, help="Remove the lock even if its holder looks alive.")
@environment_option
@pass_state
def unlock_command(state: State, force: bool) -> None:
    """Remove a deployment lock left behind by a process that is gone."""
    fleet = state.config().config.fleet_name
    db = StateDb(state.home().state_db)
    holder = unlock_fleet(db, fleet, time.time(), socket.gethostname(), force=force)
    if holder is None:
        console.print(f"fleet {fleet} is not locked")
        return
    console.print(f"removed the lock of fleet {fleet} held by {holder.describe(time.time())}")
    if Journal(db).unfinished(fleet):
        console.print("its deployment is unfinished: run 'kiln deploy --resume'")
