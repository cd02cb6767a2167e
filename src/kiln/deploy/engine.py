"""The deploy engine: plan, journal, apply, gate, roll back. Provider-agnostic.

It depends only on a Provider, a Clock and the state database, so the same
code drives the local agent, AWS, and the FakeProvider in fast tests.

Every operation holds the fleet's lock from start to finish. A deployment is
journaled before its first step; on a tripped gate the rollback plan is
journaled before the rollback acts. Nothing rolls back a rollback: when the
previous image cannot be restored either, the deployment is marked failed
and the user is told what is running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from kiln.deploy.clock import Clock, SystemClock
from kiln.deploy.gates import Gates, Trip
from kiln.deploy.history import USER_GATE, Result, who_am_i
from kiln.deploy.journal import Deployment, DeploymentKind, Journal, JournalEvent, Outcome, Who
from kiln.deploy.lock import HEARTBEAT_TTL, DeployLock
from kiln.deploy.plan import (
    STRATEGIES,
    Knobs,
    Plan,
    Step,
    StepKind,
    make_plan,
    rollback_plan,
    unreplaced_failures,
)
from kiln.deploy.records import majority, next_record, result_of, standby, summary
from kiln.deploy.replace import replacement_plan
from kiln.deploy.settings import Settings
from kiln.deploy.state import FleetRecord, StateDb
from kiln.deploy.steps import StepRunner
from kiln.errors import (
    DeployError,
    DeployInterrupted,
    FleetNotFound,
    ImageNotFound,
    KilnError,
)
from kiln.providers.protocol import FleetState, Provider, Releaser, TrafficSplitter


class EventKind(StrEnum):
    """How the CLI shows an engine event: plain, yellow, a numbered step, a status line, a trip."""

    INFO = "info"
    WARNING = "warning"
    STEP = "step"
    PROGRESS = "progress"
    TRIP = "trip"


@dataclass(frozen=True)
class Event:
    """Narration for whoever drives the engine (the CLI shows it live)."""

    kind: EventKind
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        provider: Provider,
        db: StateDb,
        settings: Settings,
        fleet: str,
        *,
        clock: Clock | None = None,
        who: Who | None = None,
        pid: int | None = None,
        lock_ttl: float = HEARTBEAT_TTL,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.provider, self.db, self.settings, self.fleet = provider, db, settings, fleet
        self.clock = clock or SystemClock()
        self.who = who or who_am_i()
        self.journal = Journal(db)
        self.on_event = on_event or (lambda _e: None)
        self.lock = DeployLock(
            db,
            fleet,
            self.clock,
            user=self.who.user,
            host=self.who.host,
            pid=pid,
            ttl=lock_ttl,
            warn=lambda m: self._emit(EventKind.WARNING, m),
        )
        self._figures: dict[str, Any] = {}
        # failures from before a resume (say, instances an agent killed mid-launch
        # left behind) are history, not a verdict on the image
        self._resumed_at = 0.0
        self._where = ""

    # read-only -----------------------------------------------------------------

    def plan(self, image: str, strategy: str | None = None) -> Plan:
        """What ``deploy`` would do now (``--dry-run``): no lock, nothing written."""
        self._check_image(image)
        dep = self.journal.unfinished(self.fleet)
        if dep is not None:
            self._emit(
                EventKind.WARNING,
                f"deployment {dep.id} ({dep.span}) is unfinished: "
                "'kiln deploy' finishes it first, so this plan may change",
            )
        return self._plan(image, self._strategy(strategy), self.provider.launch_print())

    # operations ----------------------------------------------------------------

    def deploy(
        self,
        image: str,
        *,
        strategy: str | None = None,
        reason: str | None = None,
        wait: float | None = None,
    ) -> Result:
        """Move the fleet to ``image``; first finish any deployment a kill left behind.

        Settings that change how instances run (secrets, isolation) are part of
        what "the fleet serves this image" means: instances launched otherwise
        are replaced. Fleet-wide settings (where it listens) are applied first.
        """
        chosen = self._strategy(strategy)
        self._check_image(image)
        launch = self.provider.launch_print()  # a missing secret stops here: nothing changed
        with self._locked(wait):
            resumed = self._resume_unfinished()
            if resumed and resumed.to_image == image and resumed.outcome is not Outcome.SUCCEEDED:
                return resumed  # that very deployment just failed: no second attempt here
            self._reap_warm()
            changes = self.provider.apply_settings(self.fleet)
            for change in changes:
                self._emit(EventKind.INFO, change)
            plan = self._plan(image, chosen, launch)
            if plan.relaunch:
                self._emit(EventKind.INFO, plan.relaunch_note, {"instances": list(plan.relaunch)})
            if plan.empty:
                self._save_unchanged(plan)
                applied = "; ".join(changes) if changes else None  # not "nothing to do"
                return Result(
                    self.fleet, Outcome.UNCHANGED, to_image=image, resumed=resumed, message=applied
                )
            return replace(self._start(plan, DeploymentKind.DEPLOY, reason), resumed=resumed)

    def resume(self, *, wait: float | None = None) -> Result | None:
        """Finish (or finish rolling back) an interrupted deployment; None if there is none."""
        with self._locked(wait):
            return self._resume_unfinished()

    def rollback(
        self, to: str | None = None, *, reason: str | None = None, wait: float | None = None
    ) -> Result:
        """Back to the previous good image (or ``to``), from a warm standby when one exists."""
        with self._locked(wait):
            dep = self.journal.unfinished(self.fleet)
            if dep is not None:
                return self._abort(dep, to, reason)
            self._reap_warm()
            rec = self._record()
            target = to or rec.previous_image
            if target is None:
                raise DeployError(
                    f"fleet {self.fleet} has no previous image to roll back to",
                    hint="name one with 'kiln rollback --to IMAGE'",
                )
            self._check_image(target)
            state = self.provider.describe(self.fleet)
            size = rec.desired_size(self.settings.size)
            plan = rollback_plan(state, target, size, "rollback", rec.current_image)
            if plan.empty:
                return Result(
                    self.fleet, Outcome.UNCHANGED, kind=DeploymentKind.ROLLBACK, to_image=target
                )
            return self._start(plan, DeploymentKind.ROLLBACK, reason)

    def scale(self, size: int, *, wait: float | None = None) -> Result:
        """Change the desired size; new instances come from the current image.

        Size 0 stops every instance (the listener closes with the last one) but
        keeps the fleet: a later scale or deploy brings it back.
        """
        if size < 0:
            raise DeployError("a fleet cannot have fewer than 0 instances", hint="kiln scale 0")
        if size == 0:
            self._emit(
                EventKind.WARNING,
                f"scaling {self.fleet} to 0: every instance stops and nothing serves its "
                "endpoint; 'kiln scale N' brings it back, 'kiln destroy' removes the fleet",
            )
        with self._locked(wait):
            self._refuse_unfinished()
            self._reap_warm()
            rec = self._record()
            image = rec.current_image
            assert image is not None
            state = self._without_standby(self.provider.describe(self.fleet), rec)
            plan = make_plan(state, image, "rolling", size, self._knobs(settle=0), image)
            if plan.empty:
                self._save(replace(rec, size=size, config_size=self.settings.size))
                return Result(
                    self.fleet, Outcome.UNCHANGED, kind=DeploymentKind.SCALE, to_image=image
                )
            return self._start(plan, DeploymentKind.SCALE, f"scale to {size}")

    def destroy(self, *, reason: str | None = None, wait: float | None = None) -> Result:
        """Remove the fleet: drain and stop every instance, forget its record, keep history.

        An unfinished deployment is abandoned (marked failed); the warm standby
        goes too. The provider closes the fleet's listener with its last
        instance. A later ``deploy`` of the same app starts a fresh fleet.
        """
        with self._locked(wait):
            dep = self.journal.unfinished(self.fleet)
            if dep is not None:
                why = f"abandoned by kiln destroy ({self.who})"
                self.journal.finish(
                    dep.id, Outcome.FAILED, why, dict(dep.figures), self.clock.now()
                )
            rec = self.db.fleet(self.fleet)
            state = self.provider.describe(self.fleet)
            doomed = tuple(i.id for i in state.live() + unreplaced_failures(state))
            current = rec.current_image if rec else majority(state)
            steps = (
                (Step(StepKind.TERMINATE, instances=doomed, why="fleet destroyed"),)
                if doomed
                else ()
            )
            plan = Plan(self.fleet, "rolling", None, current, 0, steps)
            result = self._start(plan, DeploymentKind.DESTROY, reason or "kiln destroy")
            if result.ok:
                self.db.delete_fleet(self.fleet)
            return result

    def replace_instances(
        self,
        ids: Sequence[str],
        *,
        kind: DeploymentKind,
        why: str,
        reason: str | None = None,
        wait: float | None = None,
    ) -> Result:
        """Replace these instances with fresh ones from their own image (recycle, drift).

        Launch first, prove healthy, then drain and terminate, ``max_surge`` at a
        time: journaled, gated and rolled back like any deployment.
        """
        with self._locked(wait):
            self._resume_unfinished()
            rec = self._record()
            state = self.provider.describe(self.fleet)
            wanted = set(ids)
            doomed = [i for i in state.live() if i.id in wanted]
            plan = replacement_plan(
                state, doomed, rec.desired_size(self.settings.size), self._knobs(), why
            )
            if plan.empty:
                return Result(self.fleet, Outcome.UNCHANGED, kind=kind, to_image=rec.current_image)
            return self._start(plan, kind, reason)

    # lock ----------------------------------------------------------------------

    @contextmanager
    def _locked(self, wait: float | None) -> Iterator[None]:
        """Hold the lock; a kill (any other BaseException) leaves it for takeover."""
        self.lock.acquire(wait)
        try:
            yield
        except (Exception, KeyboardInterrupt, SystemExit):
            self.lock.release()
            raise
        self.lock.release()

    # planning ------------------------------------------------------------------

    def _strategy(self, strategy: str | None) -> str:
        chosen = strategy or self.settings.strategy
        if chosen not in STRATEGIES:
            raise DeployError(f"unknown strategy {chosen!r}: use one of {', '.join(STRATEGIES)}")
        return chosen

    def _check_image(self, image: str) -> None:
        if not self.provider.image_exists(image):
            raise ImageNotFound(
                f"image {image} does not exist in the {self.provider.name} provider",
                hint="'kiln images' lists the images; 'kiln bake' makes one",
            )

    def _knobs(self, settle: float | None = None) -> Knobs:
        knobs = self.settings.knobs(self._desired_size(), settle)
        if isinstance(self.provider, TrafficSplitter):  # canaries get shares by weight
            knobs = replace(knobs, canary_traffic=self.provider.traffic_steps())
        return knobs

    def _desired_size(self) -> int:
        rec = self.db.fleet(self.fleet)
        return rec.desired_size(self.settings.size) if rec else self.settings.size

    def _plan(self, image: str, strategy: str, launch: Mapping[str, str]) -> Plan:
        rec = self.db.fleet(self.fleet)
        state = self.provider.describe(self.fleet)
        current = rec.current_image if rec else majority(state)
        size, knobs = self._desired_size(), self._knobs()
        if rec and rec.warm_ids:
            rest = self._without_standby(state, rec)
            # deploying anything but the standby's own image leaves the standby alone: it is
            # what `kiln rollback` switches back to, whatever becomes of this deployment
            if image != rec.warm_image or make_plan(rest, image, strategy, size, knobs).empty:
                return make_plan(rest, image, strategy, size, knobs, current, launch)
        return make_plan(state, image, strategy, size, knobs, current, launch)

    @staticmethod
    def _without_standby(state: FleetState, rec: FleetRecord | None) -> FleetState:
        """The fleet as a plan should see it when the warm standby is not its business."""
        warm = standby(rec, state)
        return replace(state, instances=tuple(i for i in state.instances if i.id not in warm))

    def _record(self) -> FleetRecord:
        rec = self.db.fleet(self.fleet)
        if rec is None or rec.current_image is None:
            raise FleetNotFound(
                f"fleet {self.fleet} has not been deployed yet", hint="run 'kiln deploy' first"
            )
        return rec

    def _refuse_unfinished(self) -> None:
        dep = self.journal.unfinished(self.fleet)
        if dep is not None:
            raise DeployError(
                f"deployment {dep.id} ({dep.span}) is unfinished",
                hint="finish it with 'kiln deploy --resume' or undo it with 'kiln rollback'",
            )

    # running -------------------------------------------------------------------

    def _start(self, plan: Plan, kind: DeploymentKind, reason: str | None) -> Result:
        dep = self.journal.create(plan, kind, self.who, reason, self.clock.now())
        self._emit(EventKind.INFO, f"deployment {dep.id}", {"plan": plan.to_json()})
        self.lock.beat(dep.id)
        return self._drive(dep, self._execute)

    def _resume_unfinished(self) -> Result | None:
        dep = self.journal.unfinished(self.fleet)
        if dep is None:
            return None
        _ = dep.plan, dep.rollback_plan  # an unknown journal format stops here, unchanged
        self._emit(
            EventKind.WARNING,
            f"resuming deployment {dep.id} ({dep.span}, "
            f"{'rolling back' if dep.phase == 'rollback' else dep.strategy}) left unfinished",
        )
        self._resumed_at = self.clock.now()
        self.journal.set_outcome(dep.id, Outcome.RUNNING, self.clock.now())
        self.lock.beat(dep.id)
        return self._drive(dep, self._execute)

    def _abort(self, dep: Deployment, to: str | None, reason: str | None) -> Result:
        """``kiln rollback`` during an unfinished deployment rolls that one back.

        An unfinished rollback (or a deployment already rolling back) is finished
        instead: undoing an undo would be a loop.
        """
        _ = dep.plan, dep.rollback_plan
        finishing = dep.kind is DeploymentKind.ROLLBACK or dep.phase == "rollback"
        allowed = dep.to_image if dep.kind is DeploymentKind.ROLLBACK else dep.from_image
        if to is not None and to != allowed:
            raise DeployError(
                f"deployment {dep.id} ({dep.span}) is unfinished; "
                f"'kiln rollback' can only take the fleet to {allowed} now",
                hint="run 'kiln rollback' without --to first",
            )
        self.journal.set_outcome(dep.id, Outcome.RUNNING, self.clock.now())
        self.lock.beat(dep.id)
        if finishing:
            return self._drive(dep, self._execute)
        why = f"rollback requested by {self.who}" + (f": {reason}" if reason else "")
        return self._drive(dep, lambda d: self._begin_rollback(d, Trip(USER_GATE, why)))

    def _drive(self, dep: Deployment, body: Callable[[Deployment], Result]) -> Result:
        """Run, turning Ctrl-C or a provider failure into a journaled stop and next steps.

        A provider that cannot be reached is no verdict on the image, so it does
        not roll back: the deployment waits, journaled, for ``--resume``.
        """
        try:
            return body(dep)
        except KeyboardInterrupt:
            self.journal.set_outcome(dep.id, Outcome.INTERRUPTED, self.clock.now())
            raise DeployInterrupted(self._how_to_finish(dep)) from None
        except KilnError as exc:
            self.journal.set_outcome(dep.id, Outcome.INTERRUPTED, self.clock.now())
            raise DeployError(
                f"{exc.message}; {self._how_to_finish(dep)}",
                hint=exc.hint or "fix the cause first",
            ) from exc
        except Exception:  # anything else stops it too: never left "running" by nobody
            self.journal.set_outcome(dep.id, Outcome.INTERRUPTED, self.clock.now())
            raise

    def _execute(self, dep: Deployment) -> Result:
        self._figures = dict(dep.figures)
        if dep.phase == "rollback":
            return self._run_rollback(dep)
        if dep.kind is DeploymentKind.DEPLOY and not self._released(dep):
            failed = self._release(dep)
            if failed is not None:
                return failed
        gates = self._gates(dep, dep.plan)
        try:
            gates.observe()
            self._run(dep, dep.plan, "forward", gates)
            _check_serving(gates.observe(), dep.plan)
        except Trip as trip:
            return self._begin_rollback(dep, trip)
        return self._succeed(dep)

    def _released(self, dep: Deployment) -> bool:
        """Whether this deployment's release ran already (it is resumed)."""
        return any(e["event"] == "release" for e in self.journal.entries(dep.id))

    def _release(self, dep: Deployment) -> Result | None:
        """Run the new image's release command before anything changes; a Result if it failed.

        Journaled once it succeeded, so a resumed deployment does not run it again.
        """
        image = dep.plan.image
        if image is None or not isinstance(self.provider, Releaser):
            return None  # a provider without releases refuses [app] release up front
        self._where = "its release command"
        done = self.provider.release(self.fleet, image)
        if done is None:
            return None
        figures = {
            "command": done.command,
            "exit_code": done.exit_code,
            "seconds": done.seconds,
        }
        self._figures["release"] = figures
        if done.ok:
            self.journal.event(dep.id, "forward", JournalEvent.RELEASE, self.clock.now(), figures)
            self._emit(EventKind.INFO, f"release ran in {done.seconds:g}s: {done.command}", figures)
            return None
        how = f"exited with status {done.exit_code}" if done.exit_code > 0 else "was killed"
        message = (
            f"release command {how}: {done.command}; nothing changed, "
            f"the fleet serves {dep.from_image or 'nothing'} as before"
        )
        self._figures.update(gate="release", instance="the release command", log_tail=done.output)
        self.journal.finish(dep.id, Outcome.FAILED, message, self._figures, self.clock.now())
        return self._result(self.journal.get(dep.id))

    def _gates(self, dep: Deployment, plan: Plan) -> Gates:
        gates = Gates(
            self.provider,
            self.clock,
            self.fleet,
            self.settings,
            deadline=self.clock.now() + self.settings.progress_deadline,
            tick=self._tick,
            warn=self._warn,
            image=plan.image,
            since=max(dep.started, self._resumed_at),
        )
        for step in plan.steps:
            gates.forget(list(step.instances))
        return gates

    def _run(self, dep: Deployment, plan: Plan, phase: str, gates: Gates) -> None:
        done = self.journal.done_steps(dep.id, phase)
        runner = StepRunner(self.provider, self.fleet, gates)
        total = len(plan.steps)
        for k, step in enumerate(plan.steps):
            if k in done:
                continue
            started = self.clock.now()
            self.journal.begin(dep.id, phase, k, started, step.to_json())
            label = "rollback " if phase == "rollback" else ""
            self._where = f"{label}step {k + 1} of {total} ({step.describe()})"
            self._emit(
                EventKind.STEP, f"{label}[{k + 1}/{total}] {step.describe()}", step.to_json()
            )
            result = runner.apply(step, plan)
            result["seconds"] = round(self.clock.now() - started, 3)
            if step.kind is StepKind.CANARY:
                self._figures["canary"] = dict(result)
            self.journal.done(dep.id, phase, k, self.clock.now(), result)

    def _warn(self, message: str) -> None:
        """What an instance showed that is no failure (kept with the outcome for --json)."""
        self._figures.setdefault("warnings", []).append(message)
        self._emit(EventKind.WARNING, message)

    def _tick(self, state: FleetState) -> None:
        self.lock.beat()
        self._emit(EventKind.PROGRESS, summary(state), {"instances": len(state.instances)})

    # endings -------------------------------------------------------------------

    def _succeed(self, dep: Deployment) -> Result:
        plan = dep.plan
        state = self.provider.describe(self.fleet)
        rec = self.db.fleet(self.fleet)
        warm: list[str] = []
        if plan.strategy == "blue-green" and self.settings.keep_warm > 0:
            warm = [
                i.id for i in state.live(dep.from_image or "") if not i.in_service and i.healthy
            ]
        if warm and rec and rec.warm_ids:  # a newer standby replaces the older one
            idle = {i.id for i in state.live() if not i.in_service}
            older = sorted(i for i in standby(rec, state) if i in idle and i not in warm)
            if older:
                self._emit(EventKind.INFO, f"discarding the older warm standby of {rec.warm_image}")
                self.provider.terminate(self.fleet, older)
                state = self.provider.describe(self.fleet)
        scaled = dep.kind is DeploymentKind.SCALE
        self._save_ending(state, rec, plan.image, dep.from_image, plan.size, warm, scaled=scaled)
        now = self.clock.now()
        message = f"{self.fleet} serves {plan.image} on {plan.size} instance(s)"
        if dep.kind is DeploymentKind.DESTROY:
            message = f"{self.fleet} destroyed: its instances stopped, its listener closed"
        elif plan.size == 0:
            message = f"{self.fleet} scaled to 0: nothing serves {self.fleet}"
        if warm:
            message += f"; {dep.from_image} kept warm for {self.settings.keep_warm:g}s"
        self.journal.finish(dep.id, Outcome.SUCCEEDED, message, self._figures, now)
        return self._result(self.journal.get(dep.id))

    def _begin_rollback(self, dep: Deployment, trip: Trip) -> Result:
        self._emit(EventKind.TRIP, trip.message, {"gate": trip.gate, "log": trip.log})
        state = self.provider.describe(self.fleet)
        target = dep.from_image
        rec = self.db.fleet(self.fleet)
        size = rec.size if rec and rec.current_image else dep.size
        figures = {**self._figures, **trip.figures, "gate": trip.gate, "instance": trip.instance}
        if trip.log:
            figures["log_tail"] = trip.log
        self._figures = figures
        if target is not None and not self.provider.image_exists(target):
            message = f"{trip.message}; cannot roll back: image {target} no longer exists"
            self.journal.finish(dep.id, Outcome.FAILED, message, figures, self.clock.now())
            return self._result(self.journal.get(dep.id))
        if rec is not None and target != rec.warm_image:
            state = self._without_standby(state, rec)  # a failed deploy keeps the standby
        plan = rollback_plan(state, target, size, dep.strategy, dep.to_image)
        self.journal.start_rollback(dep.id, plan, trip.message, figures, self.clock.now())
        self._emit(
            EventKind.WARNING, f"rolling back to {target or 'nothing'}", {"plan": plan.to_json()}
        )
        return self._run_rollback(self.journal.get(dep.id))

    def _run_rollback(self, dep: Deployment) -> Result:
        plan = dep.rollback_plan
        assert plan is not None
        gates = self._gates(dep, plan)
        rec = self.db.fleet(self.fleet)
        try:
            self._run(dep, plan, "rollback", gates)
        except Trip as second:
            message = f"{dep.message}; the rollback to {plan.image} failed too: {second.message}"
            figures = {**self._figures, "rollback_gate": second.gate}
            self.journal.finish(dep.id, Outcome.FAILED, message, figures, self.clock.now())
            return self._result(self.journal.get(dep.id), log=second.log)
        state = self.provider.describe(self.fleet)
        previous = rec.previous_image if rec else None
        self._save_ending(state, rec, plan.image, previous, plan.size, [], keep_previous=True)
        self.journal.finish(
            dep.id, Outcome.ROLLED_BACK, dep.message, self._figures, self.clock.now()
        )
        return self._result(self.journal.get(dep.id))

    def _save_ending(
        self,
        state: FleetState,
        rec: FleetRecord | None,
        current: str | None,
        from_image: str | None,
        size: int,
        warm: list[str],
        keep_previous: bool = False,
        *,
        scaled: bool = False,
    ) -> None:
        if scaled:
            config_size = self.settings.size  # `kiln scale` holds until [fleet] size changes
        elif rec is not None and size == rec.size and rec.size != rec.config_size:
            config_size = rec.config_size  # an earlier `kiln scale` still holds
        else:
            # The size followed kiln.toml when the plan was made. A resumed plan
            # may predate an edit of [fleet] size: stamping today's size on it
            # would read as a `kiln scale` and pin the old size for good.
            config_size = size
        record = next_record(
            state,
            rec,
            fleet=self.fleet,
            current=current,
            from_image=from_image,
            size=size,
            config_size=config_size,
            warm=warm,
            warm_until=self.clock.now() + self.settings.keep_warm,
            keep_previous=keep_previous,
        )
        self._save(record)

    def _save_unchanged(self, plan: Plan) -> None:
        rec = self.db.fleet(self.fleet)
        if rec is None or rec.current_image != plan.image:
            state = self.provider.describe(self.fleet)
            self._save_ending(state, rec, plan.image, plan.from_image, plan.size, [])

    def _save(self, rec: FleetRecord) -> None:
        self.db.save_fleet(rec, self.clock.now())

    def _reap_warm(self) -> None:
        """Discard a blue-green standby whose keep_warm has run out."""
        rec = self.db.fleet(self.fleet)
        if rec is None or not rec.warm_ids or (rec.warm_until or 0) > self.clock.now():
            return
        state = self.provider.describe(self.fleet)
        idle = {i.id for i in state.live() if not i.in_service}
        doomed = sorted(i for i in standby(rec, state) if i in idle)
        if doomed:
            self._emit(
                EventKind.INFO,
                f"discarding the warm standby of {rec.warm_image}: keep_warm is over",
            )
            self.provider.terminate(self.fleet, doomed)
        self._save(replace(rec, warm_image=None, warm_ids=(), warm_until=None))

    def _result(self, dep: Deployment, log: str | None = None) -> Result:
        return result_of(dep, log)

    def _how_to_finish(self, dep: Deployment) -> str:
        try:
            running = summary(self.provider.describe(self.fleet))
        except Exception:
            running = "(could not be observed)"
        back = f"return to {dep.from_image}" if dep.from_image else "undo it"
        return (
            f"deployment {dep.id} stopped at {self._where or 'its start'}; the fleet runs "
            f"{running}. Run 'kiln deploy --resume' to finish it, or 'kiln rollback' to {back}"
        )

    def _emit(self, kind: EventKind, message: str, data: dict[str, Any] | None = None) -> None:
        self.on_event(Event(kind, message, data or {}))


def _check_serving(state: FleetState, plan: Plan) -> None:
    """Success means the whole fleet serves the new image, healthy: say so or trip."""
    serving = [i for i in state.serving() if i.image == plan.image]
    others = [i for i in state.serving() if i.image != plan.image]
    if len(serving) < plan.size or others:
        raise Trip(
            "stability",
            f"stability gate: at the end {len(serving)} of {plan.size} instances of "
            f"{plan.image} serve" + (f", and {len(others)} of other images" if others else ""),
        )
