"""Engine operations on an AWS fleet, with every piece of state kept in AWS.

The deploy engine keeps its fleet record, journal and lock in a SQLite
database it is handed. For AWS that database is scratch: each operation

1. takes the fleet's lock in AWS (:class:`~kiln.aws.awsstate.AwsLock`),
2. rebuilds the fleet record from the server groups and the history,
3. runs the unchanged engine on a throwaway database, the lock's heartbeat
   driven by the engine's own observation of the fleet,
4. writes the outcome back: group tags and a history version.

A deployment killed half-way is therefore not resumed from a journal; the
next ``kiln deploy`` re-plans from what AWS shows (every plan step is
idempotent against the observed fleet), after the dead holder's lock expires.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.aws import awsstate as st
from kiln.aws import groups as g
from kiln.aws import targets as t
from kiln.aws.provider import AwsProvider
from kiln.aws.session import Aws, aws_errors
from kiln.aws.targets import Resolver
from kiln.config import LoadedConfig
from kiln.deploy.clock import Clock, SystemClock
from kiln.deploy.engine import Engine, Event, EventKind
from kiln.deploy.history import Result, who_am_i
from kiln.deploy.journal import DeploymentKind, Who
from kiln.deploy.plan import Plan
from kiln.deploy.settings import Settings
from kiln.deploy.state import FleetRecord, StateDb
from kiln.durations import format_duration
from kiln.errors import DeployError
from kiln.home import Home
from kiln.providers.protocol import CommandResult, FleetState, InstanceStats

LOCK_TTL = 120.0
LEFTOVER_SPLIT = (
    "a canary split left by an interrupted deployment was ended: every request goes to "
    "the fleet's target group"
)


class _Heartbeat:
    """The provider, with the AWS lock's heartbeat on every observation of the fleet."""

    def __init__(self, provider: AwsProvider, lock: st.AwsLock) -> None:
        self.inner, self.lock = provider, lock
        self.name = provider.name
        provider.on_wait = lock.beat  # long drains and launches keep the lock too

    def describe(self, fleet: str) -> FleetState:
        self.lock.beat()
        return self.inner.describe(fleet)

    def launch(self, fleet: str, image: str, count: int, *, in_service: bool = True) -> list[str]:
        return self.inner.launch(fleet, image, count, in_service=in_service)

    def set_in_service(self, fleet: str, add: Sequence[str], remove: Sequence[str]) -> None:
        self.inner.set_in_service(fleet, add, remove)

    def terminate(self, fleet: str, ids: Sequence[str]) -> None:
        self.inner.terminate(fleet, ids)

    def image_exists(self, image: str) -> bool:
        return self.inner.image_exists(image)

    def launch_print(self) -> Mapping[str, str]:
        return self.inner.launch_print()

    def apply_settings(self, fleet: str) -> list[str]:
        return self.inner.apply_settings(fleet)

    def log_tail(self, instance: str, lines: int = 20) -> str:
        return self.inner.log_tail(instance, lines)

    def release(self, fleet: str, image: str) -> CommandResult | None:
        self.lock.beat()
        return self.inner.release(fleet, image)

    def stats(self, fleet: str) -> Mapping[str, InstanceStats]:
        return self.inner.stats(fleet)

    def traffic_steps(self) -> tuple[int, ...]:
        return self.inner.traffic_steps()

    def metrics_lag(self) -> float:
        return self.inner.metrics_lag()

    def split(self, fleet: str, image: str, percent: int) -> None:
        self.inner.split(fleet, image, percent)

    def split_stats(self, fleet: str, since: float) -> tuple[InstanceStats, InstanceStats]:
        return self.inner.split_stats(fleet, since)


@dataclass(frozen=True)
class Drift:
    """Instances that are not what the fleet's server groups say they should be."""

    not_current: tuple[dict[str, Any], ...]  # wrong image, AMI or template version
    unmanaged: tuple[str, ...]  # in the target group, not launched by kiln

    @property
    def clean(self) -> bool:
        return not self.not_current and not self.unmanaged

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "not_current": list(self.not_current),
            "unmanaged": list(self.unmanaged),
        }


def open_deployments(
    home: Home,
    loaded: LoadedConfig,
    *,
    on_event: Callable[[Event], None] | None = None,
    aws: Aws | None = None,
    resolve: Resolver | None = None,
    allow_unverified: bool = False,
) -> AwsDeployments:
    """The AWS fleet of this app, its state in AWS: what ``--provider aws`` commands drive."""
    provider = AwsProvider(home, loaded, aws=aws, resolve=resolve)
    settings = Settings.from_config(loaded.config)
    deployments = AwsDeployments(
        provider,
        settings,
        loaded.config.fleet_name,
        on_event=on_event,
        allow_unverified=allow_unverified,
    )
    deployments.max_image_age = loaded.config.fleet.max_image_age
    return deployments


class AwsDeployments:
    """deploy / rollback / scale / recycle / status / history / drift for one AWS fleet."""

    def __init__(
        self,
        provider: AwsProvider,
        settings: Settings,
        fleet: str,
        *,
        who: Who | None = None,
        clock: Clock | None = None,
        lock_ttl: float = LOCK_TTL,
        on_event: Callable[[Event], None] | None = None,
        allow_unverified: bool = False,
    ) -> None:
        self.provider, self.settings, self.fleet = provider, settings, fleet
        self.allow_unverified = allow_unverified  # deploy an AMI without a passed boot test
        self.max_image_age: float | None = None  # [fleet] max_image_age, for status
        self.aws = provider.aws
        self.who = who or who_am_i()
        self.clock = clock or SystemClock()
        self.on_event = on_event or (lambda _e: None)
        self.lock = st.AwsLock(
            self.aws,
            fleet,
            self.clock,
            holder=str(self.who),
            ttl=lock_ttl,
            vpc=self._vpc(),
            warn=lambda m: self.on_event(Event(EventKind.WARNING, m)),
        )

    # engine operations ------------------------------------------------------------

    def plan(self, image: str, strategy: str | None = None) -> Plan:
        """What deploy would do now (``--dry-run``): no lock taken, nothing written."""
        self._check_canary(strategy)
        image = self.provider.release_of(image)
        with tempfile.TemporaryDirectory(prefix="kiln-aws-") as scratch:
            db = StateDb(Path(scratch) / "state.db")
            try:
                self._seed(db)
                return self._engine(db, self.provider).plan(image, strategy)
            finally:
                db.close()

    def deploy(
        self, image: str, *, strategy: str | None = None, reason: str | None = None,
        wait: float | None = None, only_from: str | None = None,
    ) -> Result:  # fmt: skip
        """``only_from``: deploy only if the fleet still serves that release once locked
        (a refresh must not undo a deployment that landed while it baked)."""
        self._check_canary(strategy)
        release = self.provider.release_of(image)  # a bare image: on its newest AMI
        if not self.allow_unverified:
            self.provider.require_verified(release)

        def deploy(engine: Engine) -> Result:
            record = engine.db.fleet(self.fleet)
            now = record.current_image if record else None
            if only_from is not None and now != only_from:
                raise DeployError(
                    f"fleet {self.fleet} moved from {only_from} to {now} meanwhile: "
                    "nothing deployed",
                    hint="run it again: it re-bakes what runs now",
                )
            return engine.deploy(release, strategy=strategy, reason=reason)

        return self._run(deploy, wait)

    def _check_canary(self, strategy: str | None) -> None:
        """A canary needs a second target group and a listener: say so before the lock."""
        if (strategy or self.settings.strategy) == "canary":
            self.provider.check_canary()

    def rollback(
        self, to: str | None = None, *, reason: str | None = None, wait: float | None = None
    ) -> Result:
        """Back to the previous release, or ``to``: a bare image means the newest group of it
        (a rollback goes to what ran before), else its newest AMI."""
        if to is not None and g.split_release(to)[1] is None:
            groups = g.list_groups(self.aws, self.fleet, self.provider.settings.target_group_arn)
            kept = next((grp.release for grp in groups if grp.image == to), None)
            to = kept or self.provider.release_of(to)
        return self._run(lambda e: e.rollback(to, reason=reason), wait)

    def scale(self, size: int, *, wait: float | None = None) -> Result:
        return self._run(lambda e: e.scale(size), wait)

    def resume(self, *, wait: float | None = None) -> Result | None:
        """Always None: no journal outlives an AWS operation; ``deploy`` re-plans from AWS."""
        return None

    def _run(self, op: Callable[[Engine], Result], wait: float | None) -> Result:
        with (
            self.lock.held(wait),
            tempfile.TemporaryDirectory(prefix="kiln-aws-") as scratch,
        ):
            db = StateDb(Path(scratch) / "state.db")
            try:
                if self.provider.end_leftover_split(self.fleet):
                    self.on_event(Event(EventKind.WARNING, LEFTOVER_SPLIT))
                self._seed(db)
                result = op(self._engine(db, _Heartbeat(self.provider, self.lock)))
                self._persist(db, result)
            finally:
                db.close()
        return result

    def _engine(self, db: StateDb, provider: Any) -> Engine:
        return Engine(
            provider, db, self.settings, self.fleet, clock=self.clock, who=self.who,
            on_event=self.on_event,
        )  # fmt: skip

    def _seed(self, db: StateDb) -> None:
        record = self._record()
        if record is not None:
            db.save_fleet(record, self.clock.now())

    def _record(self) -> FleetRecord | None:
        groups = g.list_groups(self.aws, self.fleet, self.provider.settings.target_group_arn)
        serving = set(self.provider.target_health())
        history = st.read_history(self.aws, self.fleet, limit=20)
        return st.fleet_record(self.fleet, groups, serving, history, self.settings.size)

    def current_image(self) -> str | None:
        """The release the fleet serves (``img-…@ami-…``), as a deployment would see it."""
        record = self._record()
        return record.current_image if record else None

    def _persist(self, db: StateDb, result: Result) -> None:
        record = db.fleet(self.fleet)
        groups = g.list_groups(self.aws, self.fleet, self.provider.settings.target_group_arn)
        if record is not None and record.current_image is not None:
            st.save_record(self.aws, groups, record)
        if result.deployment is None:  # unchanged: nothing happened worth a record
            return
        text = st.history_record(result, str(self.who), self.who.commit, self.clock.now())
        st.write_history(self.aws, self.fleet, text, record.current_image if record else None)
        in_use = {grp.template_version for grp in groups}
        in_use |= {m.template_version for grp in groups for m in grp.members}
        g.prune_template_versions(self.aws, self.fleet, in_use)

    # recycle ----------------------------------------------------------------------

    def recycle(
        self, max_age: float, *, reason: str | None = None, wait: float | None = None
    ) -> Result:
        """Replace instances older than ``max_age`` from their own image: the engine's
        ``replace_instances``, as locally, with its batches, gates, settle and rollback."""

        def replace(engine: Engine) -> Result:
            old = engine.provider.describe(self.fleet).older_than(max_age, self.clock.now())
            return engine.replace_instances(
                [i.id for i in old],
                kind=DeploymentKind.RECYCLE,
                why=f"older than {format_duration(max_age)}",
                reason=reason,
            )

        return self._run(replace, wait)

    # read-only ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        state = self.provider.describe(self.fleet)
        groups = g.list_groups(self.aws, self.fleet, self.provider.settings.target_group_arn)
        now = self.clock.now()
        return {
            "fleet": self.fleet,
            "provider": "aws",
            "endpoint": state.endpoint,
            "groups": [
                {
                    "name": grp.name,
                    "image": grp.image,
                    "ami": grp.tags.get(g.AMI_TAG),
                    "release": grp.release,
                    "desired": grp.desired,
                    "min": grp.min_size,
                    "max": grp.max_size,
                    "attached": grp.attached,
                    "template_version": grp.template_version,
                }
                for grp in groups
            ],
            "instances": [
                {
                    "id": i.id,
                    "image": g.split_release(i.image)[0],
                    "release": i.image,
                    "state": i.state.value,
                    "healthy": i.healthy,
                    "in_service": i.in_service,
                    "age": round(now - i.launched_at, 1),
                    "address": i.address,
                    "group": i.details.get("group"),
                }
                for i in state.instances
            ],
            "lock": self._lock_holder(),
            **self._ages(groups, now),
        }

    def _ages(self, groups: list[g.ServerGroup], now: float) -> dict[str, Any]:
        """The serving AMI's age and its base's (``kiln:base-created``), and the warning."""
        from kiln.aws.images import BASE_CREATED_TAG, age_of, describe_ami
        from kiln.platform import image_ages

        current = self.current_image() if groups else None
        ami_id = g.split_release(current)[1] if current else None
        ami = describe_ami(self.aws, ami_id) if ami_id else None
        image_age = age_of(ami.created, now) if ami else None
        base_age = age_of(ami.tags.get(BASE_CREATED_TAG), now) if ami else None
        return {"ami": ami_id, **image_ages(image_age, base_age, self.max_image_age)}

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        return st.read_history(self.aws, self.fleet, limit)

    def drift(self) -> Drift:
        """Serving instances not from the current image, AMI or template version; strangers.

        A warm standby is not drift: it is out of service on purpose.
        """
        tg = self.provider.settings.target_group_arn
        groups = g.list_groups(self.aws, self.fleet, tg)
        members = {m.id: (grp, m) for grp in groups for m in grp.members}
        raw = g.describe_instances(self.aws, list(members)) if members else {}
        registered = set(t.target_health(self.aws, tg)) if tg else set()
        serving = [grp for grp in groups if any(m.id in registered for m in grp.members)]
        current = (serving or groups)[0].release if groups else None
        wrong: list[dict[str, Any]] = []
        for iid, (grp, member) in sorted(members.items()):
            reasons = _drift_reasons(grp, member, raw.get(iid, {}), current)
            if iid not in registered:
                reasons = [r for r in reasons if not r.startswith("runs ")]
            if reasons:
                wrong.append({"id": iid, "group": grp.name, "reasons": reasons})
        strangers = sorted(registered - set(members))
        return Drift(tuple(wrong), tuple(strangers))

    def _lock_holder(self) -> dict[str, Any] | None:
        """The lock as ``kiln status`` shows it on every platform, not its raw tags."""
        with aws_errors("reading the deploy lock"):
            found = self.lock.read()
        if not found:
            return None
        tags = found[1]
        return {
            "holder": tags.get(st.HOLDER_TAG, "?"),
            "deployment": tags.get(st.DEPLOYMENT_TAG),
            "expires": float(tags.get(st.EXPIRES_TAG, "0") or 0),
        }

    def _vpc(self) -> str | None:
        tg = self.provider.settings.target_group_arn
        if not tg:
            return None
        with aws_errors("reading the target group"):
            found = self.aws.client("elbv2").describe_target_groups(TargetGroupArns=[tg])
        groups = found["TargetGroups"]
        return str(groups[0]["VpcId"]) if groups and groups[0].get("VpcId") else None


def _drift_reasons(
    grp: g.ServerGroup, member: g.Member, inst: Any, current: str | None
) -> list[str]:
    tags = {str(x["Key"]): str(x["Value"]) for x in inst.get("Tags", [])}
    reasons = []
    if grp.release != current:
        reasons.append(f"runs {grp.release}, the fleet's current release is {current}")
    if inst and inst.get("ImageId") != grp.tags.get(g.AMI_TAG):
        reasons.append(f"AMI {inst.get('ImageId')} is not {grp.tags.get(g.AMI_TAG)}")
    if tags.get(g.IMAGE_TAG, grp.image) != grp.image:
        reasons.append(f"tagged {tags.get(g.IMAGE_TAG)}, its group runs {grp.image}")
    version = member.template_version
    if grp.release == current and version and version != grp.template_version:
        reasons.append(f"template version {version}, its group uses {grp.template_version}")
    return reasons
