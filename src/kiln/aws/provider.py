"""The AWS provider: a fleet is a set of Auto Scaling groups behind one ALB target group.

Each image runs in its own server group (``kiln-<fleet>-vNNN``). ``launch``
creates the image's group, or grows it; ``set_in_service`` attaches or
detaches whole groups when it can and registers single targets otherwise;
``terminate`` drains for the target group's deregistration delay, then
terminates inside the group with its desired count lowered, so autoscaling
does not bring the instance back. Emptied groups are kept, scaled down, for
rollback (``keep_server_groups``); older ones and failed releases are deleted.

Health is ELB's target health plus kiln's own HTTP probe of every instance it
can reach (:mod:`kiln.aws.health`).
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from kiln.aws import alarms, canary, carry, sticky
from kiln.aws import groups as g
from kiln.aws import targets as t
from kiln.aws.boottest import is_verified
from kiln.aws.health import GONE, Probe, Prober
from kiln.aws.images import RELEASE_TAG, RUNTIME_TAG
from kiln.aws.oneoff import run_release
from kiln.aws.session import Aws, aws_errors, connect, tag_map
from kiln.config import LoadedConfig
from kiln.deploy.clock import Clock, SystemClock
from kiln.deploy.gates import Trip
from kiln.errors import (
    ConfigError,
    ImageNotFound,
    InstanceNotFound,
    ProviderError,
    UnverifiedImage,
)
from kiln.home import Home
from kiln.providers.protocol import CommandResult, FleetState, Instance, InstanceStats

LAUNCH_WAIT = 120.0  # longest wait for Auto Scaling to show instances it was asked for
ACTIVITY_EVERY = 5.0  # how often a launch wait reads the group's scaling activities
ATTACH_WAIT = 300.0  # longest wait for ELB to call attached instances healthy


class AwsProvider:
    """Server groups on EC2 Auto Scaling; see the module docstring."""

    name = "aws"

    def __init__(
        self,
        home: Home,
        loaded: LoadedConfig,
        *,
        aws: Aws | None = None,
        resolve: t.Resolver | None = None,
        clock: Clock | None = None,
    ) -> None:
        settings = loaded.config.provider.aws
        if settings is None:
            raise ProviderError(
                "the aws provider is not configured",
                hint="add a [provider.aws] table to kiln.toml (target_group_arn, subnet_ids, ...)",
            )
        self.home, self.loaded, self.settings = home, loaded, settings
        self.app = loaded.config.app.name
        self.health = loaded.config.health
        self.aws = aws or connect(settings)
        self.clock = clock or SystemClock()
        self.prober = Prober(self.health, settings.port, self.clock, resolve or t.private_address)
        self._amis: dict[str, str] = {}
        self._drain_until: dict[str, float] = {}
        self._delay: float | None = None
        self._endpoint: tuple[str | None] | None = None
        self.on_wait: Callable[[], None] = lambda: None  # called while waiting (lock heartbeat)
        self.attach_wait = ATTACH_WAIT
        self.release_poll = 3.0  # how often the release runner's result is looked for

    # Provider: observe ----------------------------------------------------------

    def describe(self, fleet: str) -> FleetState:
        groups = g.list_groups(self.aws, fleet, self.settings.target_group_arn)
        members = {m.id: (grp, m) for grp in groups for m in grp.members}
        raw = g.describe_instances(self.aws, list(members)) if members else {}
        health = self.target_health()
        probed = self.prober.observe(members, raw)
        instances = tuple(
            self._instance(fleet, grp, m, raw.get(m.id), health.get(m.id), probed.get(m.id))
            for grp, m in members.values()
        )
        sizes: dict[str, int] = {}
        for grp in groups:
            if grp.desired > 0:
                sizes[grp.release] = sizes.get(grp.release, 0) + grp.desired
        return FleetState(
            name=fleet,
            endpoint=self._fleet_endpoint() if sizes else None,
            groups=sizes,
            instances=instances,
        )

    def image_exists(self, image: str) -> bool:
        try:
            self._ami(image)
        except ImageNotFound:
            return False
        return True

    def launch_print(self) -> Mapping[str, str]:
        """Not tracked: an instance reads its secrets from SSM itself when it boots."""
        return {}

    def apply_settings(self, fleet: str) -> list[str]:
        """[fleet] sticky on kiln.toml's target groups (kiln.aws.sticky); the load balancer
        itself is the user's own."""
        config = self.loaded.config.fleet
        wanted = sticky.attributes(config.sticky, config.sticky_duration)
        s = self.settings
        if wanted is None or not s.target_group_arn:
            return []
        changes = []
        for tg in (s.target_group_arn, s.canary_target_group_arn):
            if tg and sticky.ensure(self.aws, tg, wanted):
                name = tg.rsplit(":", 1)[-1]
                changes.append(f"{name} is {sticky.describe(wanted)} from now on")
        return changes

    def log_tail(self, instance: str, lines: int = 20) -> str:
        """The instance's console output (boot log and the service's journal on the console)."""
        ec2 = self.aws.ec2
        try:
            found = ec2.get_console_output(InstanceId=instance, Latest=True)
        except ec2.exceptions.ClientError as exc:
            if "NotFound" in str(exc.response.get("Error", {}).get("Code", "")):
                raise InstanceNotFound(f"no instance {instance}") from None
            with aws_errors(f"reading the console of {instance}"):
                raise
        text = _decode(str(found.get("Output") or ""))
        return "\n".join(text.splitlines()[-lines:])

    def stats(self, fleet: str) -> Mapping[str, InstanceStats]:
        """Empty: CloudWatch counts an ALB's requests per target group, not per instance.

        The canary gate judges AWS canaries by target group instead: see
        :meth:`split` and :meth:`split_stats` (a :class:`TrafficSplitter`).
        """
        return {}

    # Provider: canary by weight (TrafficSplitter) -------------------------------

    def traffic_steps(self) -> tuple[int, ...]:
        return tuple(self.settings.canary_traffic)

    def metrics_lag(self) -> float:
        return float(self.settings.metrics_lag)

    def check_canary(self) -> None:
        """Refuse a canary deployment that has nowhere to split, before anything changes."""
        self._target_group()
        self._listener()

    def split(self, fleet: str, image: str, percent: int) -> None:
        """``percent`` of the listener's requests to ``image``'s group, behind its own target
        group (attached first, and healthy there per ELB, before any request goes to it).

        0 sends every request to the fleet's target group and detaches the
        fleet's groups from the canaries' one.
        """
        canary_tg = self._canary_target_group()
        if percent <= 0:
            self._end_split(fleet, canary_tg)
            return
        groups = g.list_groups(self.aws, fleet, canary_tg)
        group = next((grp for grp in groups if grp.release == image), None)  # a release
        live = {m.id for m in group.members if m.lifecycle not in GONE} if group else set()
        if group is None or not live:
            raise InstanceNotFound(f"no canary instances of {image} in fleet {fleet}")
        if not group.attached:
            g.set_attached(self.aws, group.name, canary_tg, True)
        self._await_canaries(group.name, canary_tg, live)
        listener = self._listener()
        weights = canary.weights_for(self._target_group(), canary_tg, percent)
        config = self.loaded.config.fleet
        pinned = sticky.group_stickiness(config.sticky, config.sticky_duration)
        canary.set_split(self.aws, listener, weights, pinned)

    def traffic(self, since: float) -> list[list[float]] | None:
        """The fleet's per-minute requests and 5xx from CloudWatch (``kiln ui``).

        None without a listener_arn: the deploy policy grants the metric read only with
        one (it is the canary's), and without it kiln does not know the balancer.
        """
        s = self.settings
        if not (s.listener_arn and s.target_group_arn):
            return None
        groups = [s.target_group_arn]
        if s.canary_target_group_arn:
            groups.append(s.canary_target_group_arn)
        balancer = canary.listener_balancer(self.aws, s.listener_arn)
        return canary.read_traffic(self.aws, balancer, groups, since, self.clock.now())

    def split_stats(self, fleet: str, since: float) -> tuple[InstanceStats, InstanceStats]:
        """(canaries, fleet) from CloudWatch, per target group, from ``since`` to now."""
        listener = self._listener()
        sides = {"canary": self._canary_target_group(), "fleet": self._target_group()}
        found = canary.read_sides(self.aws, listener.balancer, sides, since, self.clock.now())
        return found["canary"], found["fleet"]

    def end_leftover_split(self, fleet: str) -> bool:
        """A split an interrupted deployment left: every request back to the fleet.

        True when there was one. Nothing to do (no call made) without a canary setup.
        """
        s = self.settings
        if not (s.canary_target_group_arn and s.listener_arn and s.target_group_arn):
            return False
        return self._end_split(fleet, s.canary_target_group_arn)

    def _end_split(self, fleet: str, canary_tg: str) -> bool:
        listener = self._listener()
        changed = canary.set_split(
            self.aws, listener, canary.weights_for(self._target_group(), canary_tg, 0)
        )
        for grp in g.list_groups(self.aws, fleet, canary_tg):
            if grp.attached:
                g.set_attached(self.aws, grp.name, canary_tg, False)
                changed = True
        return changed

    def _await_canaries(self, group: str, canary_tg: str, ids: set[str]) -> None:
        """Until ELB calls every canary healthy in their target group; else detach and trip."""
        deadline = self.clock.now() + self.attach_wait
        while True:
            states = t.target_health(self.aws, canary_tg)
            if all(states.get(i) == "healthy" for i in ids):
                return
            if self.clock.now() > deadline:
                break
            self.on_wait()
            self.clock.sleep(1.0)
        g.set_attached(self.aws, group, canary_tg, False)
        seen = ", ".join(f"{i} {states.get(i, 'not registered')}" for i in sorted(ids))
        raise Trip(
            "target-health",
            f"the canaries were not all healthy in the canary target group after "
            f"{self.attach_wait:g}s ({seen}); no request was sent to them",
        )

    # Provider: change -----------------------------------------------------------

    def launch(self, fleet: str, image: str, count: int, *, in_service: bool = True) -> list[str]:
        """``image`` is a release (``img-…@ami-…``): each release has its own group."""
        ami = self._ami(image)
        if count < 1:
            return []
        tg = self._target_group()
        groups = g.list_groups(self.aws, fleet, tg)
        release = g.release_id(g.split_release(image)[0], ami)
        group = next((grp for grp in groups if grp.release == release), None)
        if group is None:
            plain = g.split_release(image)[0]
            name = self._create_group(fleet, plain, ami, count, groups, in_service)
            before: set[str] = set()
        else:
            name, before = group.name, {m.id for m in group.members}
            if group.attached and not in_service and not before:
                g.set_attached(self.aws, name, tg, False)  # a standby-to-be: out of the TG
                group = replace(group, attached=False)
            g.resize(self.aws, _bounded(group), group.desired + count)
        new = self._await_members(name, before, count)
        attached = group.attached if group else in_service
        if in_service != attached:
            t.register(self.aws, tg, new, self.settings.port, add=in_service)
        self._prune(fleet)
        return new

    def set_in_service(self, fleet: str, add: Sequence[str], remove: Sequence[str]) -> None:
        """Attach first, prove it in the target group, only then take the old ones out.

        A group attached here switches to ELB health checks (so Auto Scaling
        replaces what the load balancer finds unhealthy), and nothing leaves the
        target group until ELB reports every added instance healthy: a runner
        that cannot reach private addresses judged them by EC2 status alone.
        If they never are, they are taken out again and the gate trips.
        """
        tg = self._target_group()
        groups = g.list_groups(self.aws, fleet, tg)
        owner = {m.id: grp for grp in groups for m in grp.members}
        unknown = [i for i in [*add, *remove] if i not in owner]
        if unknown:
            raise InstanceNotFound(f"no instance {unknown[0]} in fleet {fleet}")
        registered = set(self.target_health())
        adding, removing = set(add), set(remove)
        attached: list[str] = []
        for grp in groups:
            live = {m.id for m in grp.members if m.lifecycle not in GONE}
            if live and not grp.attached and live <= adding:
                g.set_attached(self.aws, grp.name, tg, True)
                g.use_elb_health(self.aws, grp.name, int(self.health.grace) + 30)
                attached.append(grp.name)
                adding -= live
        singles = sorted(adding)
        t.register(self.aws, tg, singles, self.settings.port, add=True)
        if add:
            self._await_in_target_group(set(add), attached, singles)
        for grp in groups:
            live = {m.id for m in grp.members if m.lifecycle not in GONE}
            serving = live & registered
            if grp.attached and serving and serving <= removing and not live & set(add):
                g.set_attached(self.aws, grp.name, tg, False)
                removing -= live
                self._draining(serving)
        t.register(self.aws, tg, sorted(removing & registered), self.settings.port, add=False)
        self._draining(removing & registered)

    def _await_in_target_group(self, ids: set[str], groups: list[str], singles: list[str]) -> None:
        """Until ELB says every one of ``ids`` is healthy; else undo the attach and trip."""
        deadline = self.clock.now() + self.attach_wait
        while True:
            states = self.target_health()
            if all(states.get(i) == "healthy" for i in ids):
                return
            if self.clock.now() > deadline:
                break
            self.on_wait()
            self.clock.sleep(1.0)
        tg = self._target_group()
        for name in groups:
            g.set_attached(self.aws, name, tg, False)
        t.register(self.aws, tg, singles, self.settings.port, add=False)
        seen = ", ".join(f"{i} {states.get(i, 'not registered')}" for i in sorted(ids))
        raise Trip(
            "target-health",
            f"the new instances were not all healthy in the target group after "
            f"{self.attach_wait:g}s ({seen}); they were taken out again and the "
            "previous release kept serving",
        )

    def terminate(self, fleet: str, ids: Sequence[str]) -> None:
        tg = self._target_group()
        groups = g.list_groups(self.aws, fleet, tg)
        owner = {m.id: grp for grp in groups for m in grp.members if m.lifecycle not in GONE}
        doomed = [i for i in ids if i in owner]  # already gone: nothing to do
        if not doomed:
            return
        emptied = [grp for grp in groups if _all_leaving(grp, set(doomed))]
        for grp in groups:  # first: resizing may re-register a group's members
            leaving = sum(1 for i in doomed if owner[i].name == grp.name)
            if leaving and grp not in emptied:
                g.lower_min(self.aws, grp, grp.desired - leaving)
        registered = set(self.target_health()) & set(doomed)
        t.register(self.aws, tg, sorted(registered), self.settings.port, add=False)
        self._draining(registered)
        self._wait_drained(doomed)
        for grp in emptied:  # a whole group goes: one scale-in, not one call per instance
            g.resize(self.aws, replace(grp, min_size=0), 0)
        gone = {m.id for grp in emptied for m in grp.members}
        g.terminate_members(self.aws, [i for i in doomed if i not in gone])
        lingering = set(self.target_health()) & set(doomed)  # AWS deregisters; moto does not
        t.register(self.aws, tg, sorted(lingering), self.settings.port, add=False)
        self._prune(fleet)

    # groups -----------------------------------------------------------------------

    def _create_group(
        self,
        fleet: str,
        image: str,
        ami: str,
        count: int,
        groups: list[g.ServerGroup],
        in_service: bool,
    ) -> str:
        """A new release: its own template version and group, sized like the current one."""
        s = self.settings
        subnets = s.subnet_ids or ([s.subnet_id] if s.subnet_id else [])
        if not subnets:
            raise ProviderError(
                "no subnets for the server groups",
                hint="set [provider.aws] subnet_ids (or subnet_id) in kiln.toml",
            )
        current = next((grp for grp in groups if grp.desired > 0), None)
        low = current.min_size if current else 0
        high = max(current.max_size if current else count, count)
        number = max((grp.number for grp in groups), default=0) + 1
        name = g.group_name(fleet, number)
        tags = {g.APP_TAG: self.app, g.FLEET_TAG: fleet, g.IMAGE_TAG: image}
        data = g.launch_data(
            ami=ami,
            instance_type=s.instance_type,
            tags=tags,
            security_groups=s.security_group_ids,
            instance_profile=s.instance_profile,
        )
        inherited = self._carried(current)  # first: a hook kiln may not carry stops it here
        version = g.add_template_version(self.aws, fleet, data, f"{name} {image} {ami}", tags)
        hooked = bool(inherited.hooks)  # created empty, so its first instances meet the hooks
        g.create_group(
            self.aws,
            fleet,
            name,
            version,
            desired=0 if hooked else count,
            min_size=0 if hooked else min(low, count),
            max_size=high,
            subnets=subnets,
            target_group=self._target_group() if in_service else None,
            grace=int(self.health.grace) + 30,
            tags={**tags, g.AMI_TAG: ami, "kiln:min": str(low), "kiln:max": str(high)},
        )
        try:
            carry.put_hooks(self.aws, name, inherited)
            carry.put_policies_and_pool(self.aws, name, inherited)
        except BaseException:
            # undone, so the next attempt makes the group again with all it inherits
            # (a retry finding it would only resize it, without the hooks it lacks)
            alarms.retire(self.aws, name)
            g.delete_group(self.aws, name)
            raise
        if hooked:
            g.set_size(self.aws, name, desired=count, min_size=min(low, count))
        return name

    def _carried(self, current: g.ServerGroup | None) -> carry.Carried:
        """The serving group's policies, hooks and warm pool; kiln.toml's warm_pool wins."""
        now = datetime.datetime.now(datetime.UTC)
        found = carry.read(self.aws, current.name, current.warm_pool, now) if current else None
        inherited = found or carry.Carried()
        carry.check_hook_roles(inherited, self.settings.hook_roles)
        if self.settings.warm_pool is not None:
            inherited = replace(inherited, warm_pool=carry.configured(self.settings.warm_pool))
        return inherited

    def _await_members(self, name: str, before: set[str], count: int) -> list[str]:
        """Auto Scaling launches asynchronously: wait until the new instances are listed.

        A launch Auto Scaling gave up on (no PassRole, no capacity, no
        service-linked role) is said only in its scaling activities: read them
        while waiting, and trip the gate with their cause rather than go on
        with fewer instances.
        """
        started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=30)
        deadline = self.clock.now() + LAUNCH_WAIT
        next_look = self.clock.now() + ACTIVITY_EVERY
        client = self.aws.client("autoscaling")
        while True:
            with aws_errors(f"reading server group {name}"):
                found = client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
            members = [
                m["InstanceId"]
                for raw in found["AutoScalingGroups"]
                for m in raw.get("Instances", [])
                if m["InstanceId"] not in before
            ]
            if len(members) >= count:
                return sorted(members)
            now = self.clock.now()
            if now >= next_look or now > deadline:
                next_look = now + ACTIVITY_EVERY
                cause = g.launch_failure(self.aws, name, started)
                if cause or now > deadline:
                    why = cause or f"no more within {LAUNCH_WAIT:g}s, and no activity says why"
                    raise Trip(
                        "launch",
                        f"Auto Scaling launched {len(members)} of {count} instance(s) "
                        f"into {name}: {why}",
                    )
            self.on_wait()
            self.clock.sleep(1.0)

    def _prune(self, fleet: str) -> None:
        """Delete empty groups: failed releases, and standbys beyond ``keep_server_groups``."""
        groups = g.list_groups(self.aws, fleet, self.settings.target_group_arn)
        running = [grp for grp in groups if grp.desired > 0 or grp.members]
        if not running:
            return
        newest = running[0].number
        keep = self.settings.keep_server_groups - len(running)
        for grp in groups:
            if grp in running:
                continue
            if grp.number > newest or keep <= 0:
                alarms.retire(self.aws, grp.name)  # the alarms kiln made for it
                g.delete_group(self.aws, grp.name)
            else:
                keep -= 1

    # health -----------------------------------------------------------------------

    def _instance(
        self,
        fleet: str,
        grp: g.ServerGroup,
        member: g.Member,
        raw: Any,
        target: str | None,
        probe: Probe | None,
    ) -> Instance:
        launched = raw["LaunchTime"].timestamp() if raw else self.clock.now()
        ip = raw.get("PrivateIpAddress") if raw else None
        return Instance(
            id=member.id,
            fleet=fleet,
            image=grp.release,
            state=self.prober.state(member, raw, target, probe, launched),
            launched_at=launched,
            address=f"{ip}:{self.settings.port}" if ip else None,
            in_service=target is not None and target != "draining",
            details={
                "group": grp.name,
                "ami": raw.get("ImageId") if raw else None,
                "lifecycle": member.lifecycle,
                "target_health": target,
                "zone": raw.get("Placement", {}).get("AvailabilityZone") if raw else None,
            },
        )

    def target_health(self) -> dict[str, str]:
        tg = self.settings.target_group_arn
        return t.target_health(self.aws, tg) if tg else {}

    # draining ---------------------------------------------------------------------

    def _draining(self, ids: set[str]) -> None:
        until = self.clock.now() + self._deregistration_delay()
        self._drain_until.update(dict.fromkeys(ids, until))

    def _deregistration_delay(self) -> float:
        if self._delay is None:
            self._delay = t.deregistration_delay(self.aws, self._target_group())
        return self._delay

    def _wait_drained(self, ids: Sequence[str]) -> None:
        """Until ELB has drained them: its delay, or sooner once ELB says they are gone."""
        deadline = max((self._drain_until.get(i, 0.0) for i in ids), default=0.0)
        seen_draining = False
        while self.clock.now() < deadline:
            states = self.target_health()
            if any(states.get(i) == "draining" for i in ids):
                seen_draining = True
            elif seen_draining:
                break
            self.on_wait()
            self.clock.sleep(min(1.0, max(0.0, deadline - self.clock.now())))

    # lookups ----------------------------------------------------------------------

    def _canary_target_group(self) -> str:
        tg = self.settings.canary_target_group_arn
        if not tg:
            raise ConfigError(
                "the canary strategy on AWS needs a second target group for the canaries",
                hint="set [provider.aws] canary_target_group_arn and listener_arn in kiln.toml "
                "(see docs/aws.md, Canary on AWS)",
            )
        return tg

    def _listener(self) -> canary.Listener:
        canary_tg = self._canary_target_group()
        arn = self.settings.listener_arn
        if not arn:
            raise ConfigError(
                "the canary strategy on AWS needs the listener to weight",
                hint="set [provider.aws] listener_arn (the listener forwarding to "
                "target_group_arn) in kiln.toml",
            )
        return canary.read_listener(self.aws, arn, self._target_group(), canary_tg)

    def _target_group(self) -> str:
        tg = self.settings.target_group_arn
        if not tg:
            raise ProviderError(
                "no target group to deploy behind",
                hint="set [provider.aws] target_group_arn in kiln.toml",
            )
        return tg

    def _fleet_endpoint(self) -> str | None:
        if self._endpoint is None:
            tg = self.settings.target_group_arn
            self._endpoint = (t.endpoint(self.aws, tg) if tg else None,)
        return self._endpoint[0]

    def ami_of(self, image: str) -> str:
        """The AMI of a release, or an image's newest available one; ImageNotFound if none."""
        return self._ami(image)

    def release_of(self, ref: str) -> str:
        """The release ``ref`` names: a bare image on its newest AMI, or a release as given."""
        return g.release_id(g.split_release(ref)[0], self._ami(ref))

    def _ami(self, ref: str) -> str:
        if ref not in self._amis:
            self._amis[ref] = str(self._ami_of(ref)["ImageId"])
        return self._amis[ref]

    def _ami_of(self, ref: str) -> dict[str, Any]:
        """The AMI of a release, or an image's newest available AMI."""
        image, ami = g.split_release(ref)
        filters: list[Any] = [
            {"Name": "tag:kiln:image", "Values": [image]},
            {"Name": "state", "Values": ["available"]},
        ]
        if ami is not None:
            filters.append({"Name": "image-id", "Values": [ami]})
        with aws_errors(f"looking up the AMI of {ref}"):
            found = self.aws.ec2.describe_images(Owners=["self"], Filters=filters)["Images"]
        if not found:
            what = f"{ami} is not an AMI of {image}" if ami else f"image {image} has no AMI"
            raise ImageNotFound(
                f"{what} in {self.aws.region}",
                hint="'kiln images --provider aws' lists them; 'kiln bake --provider aws' "
                "makes one",
            )
        images: list[dict[str, Any]] = [dict(a) for a in found]
        return max(images, key=lambda a: str(a.get("CreationDate", "")))

    # Releaser ---------------------------------------------------------------------

    def release(self, fleet: str, image: str) -> CommandResult | None:
        """The image's release command, once, on a runner launched from its AMI.

        Which command is the AMI's ``kiln:release`` tag (the image's own, as
        locally); the runner reports the full command, its status and output.
        """
        ami = self._ami_of(image)
        tags = tag_map(ami.get("Tags"))
        command = tags.get(RELEASE_TAG)
        if not command:
            if self.loaded.config.app.release and int(tags.get(RUNTIME_TAG, "0") or 0) < 4:
                raise ProviderError(
                    f"{ami['ImageId']} (image {image}) was baked by an older kiln that "
                    "cannot run [app] release",
                    hint="bake it again with this kiln ('kiln bake --provider aws')",
                )
            return None
        return run_release(
            self.aws,
            self.settings,
            self.app,
            fleet,
            str(ami["ImageId"]),
            command,
            timeout=self.loaded.config.fleet.progress_deadline,
            note=lambda _msg: None,
            on_wait=self.on_wait,
            poll=self.release_poll,
        )

    def require_verified(self, image: str) -> None:
        """Refuse an AMI that no boot test has passed (no ``kiln:verified`` tag)."""
        ami = self._ami_of(image)
        if not is_verified(tag_map(ami.get("Tags"))):
            raise UnverifiedImage(
                f"{ami['ImageId']} (image {g.split_release(image)[0]}) has not passed a boot test",
                hint="bake with 'kiln bake --provider aws --boot-test' (or [provider.aws] "
                "boot_test = true), or deploy anyway with --allow-unverified",
            )


def _all_leaving(group: g.ServerGroup, doomed: set[str]) -> bool:
    """Every instance the group has, or will launch, is being terminated."""
    live = {m.id for m in group.members if m.lifecycle not in GONE}
    return bool(live) and live <= doomed and group.desired == len(live)


def _bounded(group: g.ServerGroup) -> g.ServerGroup:
    """The group with the min/max kiln copied from the release it replaced."""
    low = int(group.tags.get("kiln:min", group.min_size))
    high = int(group.tags.get("kiln:max", group.max_size))
    return replace(group, min_size=low, max_size=high)


def _decode(output: str) -> str:
    try:
        return base64.b64decode(output, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return output
