"""An AWS account as a platform: AMIs baked over SSH, fleets of Auto Scaling groups.

Every piece of fleet state (lock, history, groups) is read from AWS itself,
so any CI runner sees the same; see :mod:`kiln.aws.deployments`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kiln.aws.deployments import AwsDeployments, open_deployments
from kiln.aws.session import Aws, connect
from kiln.config import AwsSettings
from kiln.errors import ConfigError, FleetNotFound
from kiln.image.result import BakeProgress
from kiln.platform import (
    DRIFT_FOUND,
    Capability,
    Narrate,
    OnEvent,
    Platform,
    PlatformBase,
    Promotion,
    Report,
)

if TYPE_CHECKING:
    from kiln.aws.relayer import Relayer


class AwsPlatform(PlatformBase):
    name = "aws"
    # canary: weighted listener + CloudWatch per target group; drift is replaced by recycling
    capabilities = frozenset(
        {
            Capability.CANARY,
            Capability.PACKAGES,
            Capability.PROMOTE,
            Capability.REFRESH,
            Capability.RELEASE,
            Capability.RUN,
        }
    )

    def settings(self) -> AwsSettings:
        """[provider.aws] from kiln.toml if there is one; else defaults and the environment."""
        if not self.has_config:
            return AwsSettings()
        return self.loaded.config.provider.aws or AwsSettings()

    def _refuse_unsupported(self) -> None:
        """Settings no AWS health check can honour, refused before anything is baked."""
        if self.has_config and self.loaded.config.health.host is not None:
            self.require(
                Capability.HEALTH_HOST,
                "[health] host",
                hint="ALB health checks send the target's address as their Host: make the app "
                "answer its health path for any Host (Django: add the instances' addresses to "
                "ALLOWED_HOSTS, or answer it in a middleware), then remove [health] host",
            )

    def deployer(
        self, on_event: OnEvent | None = None, *, allow_unverified: bool = False
    ) -> AwsDeployments:
        self._refuse_unsupported()
        return open_deployments(
            self.home, self.loaded, on_event=on_event, allow_unverified=allow_unverified
        )

    def bake(
        self, progress: BakeProgress, narrate: Narrate, *, boot_test: bool | None = None
    ) -> Report:
        from kiln.aws.ami import bake_ami
        from kiln.aws.boottest import BootTestFailed

        self._refuse_unsupported()  # its boot test checks health as the ALB will
        try:
            result = bake_ami(
                self.loaded, self.home, progress=narrate, bake_progress=progress,
                boot_test=boot_test,
            )  # fmt: skip
        except BootTestFailed as exc:
            narrate(f"console output of the test instance:\n{exc.console}")
            raise
        how = "reused, no builder launched" if result.reused else f"{result.seconds:.0f}s"
        verified = "  verified" if result.verified else ""
        headline = f"{result.ami}  {result.image}  {result.app}  {result.region}  ({how}){verified}"
        lines = [headline]
        if result.copies:  # started or pending ones are finished by a later bake
            copies = ", ".join(f"{c.region} {c.ami or '-'} {c.state}" for c in result.copies)
            lines.append(f"copies: {copies}")
        return Report(result.summary(), lines=tuple(lines))

    def images(self, app: str | None) -> Report:
        """kiln's AMIs in the region, with their age and where their copies are."""
        from kiln.aws.images import BASE_CREATED_TAG, Ami, age_of, list_amis
        from kiln.aws.regions import where
        from kiln.durations import format_duration

        settings = self.settings()
        aws = connect(settings)
        amis = list_amis(aws, app)
        copies = where(aws, amis, settings, app) if settings.copy_to_regions else {}
        now = time.time()

        def ages(a: Ami) -> tuple[float | None, float | None]:
            return age_of(a.created, now), age_of(a.tags.get(BASE_CREATED_TAG), now)

        def shown(age: float | None) -> str:
            return "-" if age is None else format_duration(age)

        return Report(
            [
                {
                    **a.summary(),
                    "age": ages(a)[0],
                    "base_age": ages(a)[1],
                    "region": aws.region,
                    "copies": [c.summary() for c in copies.get(a.id, [])],
                }
                for a in amis
            ],
            columns=(
                "AMI",
                "IMAGE",
                "APP",
                "STATE",
                "CREATED",
                "AGE",
                "BASE AGE",
                "COMMIT",
                "REGIONS",
            ),
            rows=tuple(
                (
                    a.id,
                    a.image,
                    a.app,
                    a.state,
                    a.created,
                    shown(ages(a)[0]),
                    shown(ages(a)[1]),
                    (a.summary().get("commit") or "-")[:10],
                    _regions(aws.region, copies.get(a.id, [])),
                )
                for a in amis
            ),
            empty="no AMIs baked by kiln in this region: run 'kiln bake --provider aws'",
        )

    def code_of(self, image: str) -> str | None:
        """From the local store when this machine baked the image, else its AMI's tags."""
        from kiln.aws.images import CODE_TAG
        from kiln.aws.promote import newest_ami
        from kiln.errors import ImageNotFound
        from kiln.image.store import Store

        try:
            return Store(self.home).get(image).manifest.code_digest
        except ImageNotFound:
            pass
        ami = newest_ami(connect(self.settings()), image)
        return ami.tags.get(CODE_TAG) if ami is not None else None

    def promote_image(self, image: str, source: Platform, narrate: Narrate) -> str:
        """The same AMI, reused or copied here; with this environment's [env], one derived."""
        from kiln.aws.promote import promote_ami

        settings = self.settings()
        config = self.loaded.config
        ami, _new = promote_ami(
            *self._promotion(source),
            image,
            env=dict(config.env),
            recipe=_recipe(self),
            timeout=settings.image_timeout,
            note=narrate,
            promote_to=_aws(source).settings().promote_to_accounts,
            encrypt=(settings.encrypted, settings.kms_key_id),
            relayer=self._relayer(),
        )
        return ami.image

    def plan_promotion(self, image: str, source: Platform) -> Promotion:
        """Lookups only (DescribeImages, GetCallerIdentity, the KMS key's policy)."""
        from kiln.aws.promote import plan_promotion

        plan = plan_promotion(
            *self._promotion(source),
            image,
            env=dict(self.loaded.config.env),
            recipe=_recipe(self),
            promote_to=_aws(source).settings().promote_to_accounts,
            relayer=self._relayer(),
        )
        steps = tuple({**s.to_json(), "text": f"would {s.text}"} for s in plan.steps)
        return Promotion(plan.image, steps, ready=plan.ready)

    def _promotion(self, source: Platform) -> tuple[Aws, Aws]:
        """(source session, this environment's session): each through its own profile."""
        return connect(_aws(source).settings()), connect(self.settings())

    def _relayer(self) -> Relayer:
        from kiln.aws.relayer import Relayer

        config = self.loaded.config
        return Relayer(
            app=config.app.name,
            env=dict(config.env),
            settings=self.settings(),
            health=config.health,
            scratch=self.home.tmp,
        )

    def prune(self, keep: int, app: str | None, *, dry_run: bool) -> Report:
        """Deregister old AMIs and delete their snapshots together, never one in use.

        Copies in ``copy_to_regions`` go with their source, unless used there.
        """
        from kiln.aws.images import list_amis, prune_amis
        from kiln.aws.regions import prune_copies

        name = app or self.loaded.config.app.name
        settings = self.settings()
        aws = connect(settings)
        result = prune_amis(aws, name, keep, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        lines = [
            f"{verb} {a.id} ({a.image}) and {len(a.snapshots)} snapshot(s)" for a in result.deleted
        ]
        lines += [f"kept {a.id} ({a.image}): in use" for a in result.in_use]
        copies: list[Any] = []
        if settings.copy_to_regions:
            doomed = {a.id for a in result.deleted}
            kept = {a.id for a in list_amis(aws, name)} - doomed
            found = prune_copies(aws, name, kept, settings.copy_to_regions, dry_run=dry_run)
            copies = [{"region": r, **c.summary()} for r, c in found]
            lines += [f"{verb} copy {c.id} ({c.image}) in {r}" for r, c in found]
        lines.append(f"{len(result.deleted)} AMI(s) {verb}, {len(result.kept)} newest kept")
        summary = {**result.summary(), "copies_deleted": copies, "dry_run": dry_run}
        return Report(summary, lines=tuple(lines))

    def status(self) -> dict[str, Any]:
        return self.deployer().status()

    def history(self, limit: int, *, all_fleets: bool) -> list[dict[str, Any]]:
        return self.deployer().history(limit)

    def run(
        self,
        image: str | None,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        narrate: Narrate | None = None,
    ) -> int:
        """On a fresh instance of the image's AMI, over SSH, attached to this terminal."""
        from kiln.aws.oneoff import run_oneoff, with_env

        deployments = self.deployer()
        app = self.loaded.config.app.name
        if image is None:
            image = deployments.current_image()
            if image is None:
                raise FleetNotFound(
                    f"fleet {app} has not been deployed on AWS yet: no current image",
                    hint="deploy it first, or name an image: kiln run --image ID -- CMD",
                )
        provider = deployments.provider
        ami = provider.ami_of(image)
        return run_oneoff(
            provider.aws, provider.settings, app, deployments.fleet, ami, with_env(argv, env or {}),
            note=narrate or (lambda _msg: None),
        )  # fmt: skip

    def refresh(
        self, *, reason: str | None, wait: float | None, on_event: OnEvent | None
    ) -> Report:
        """Re-bake the running image on the newest base; deploy it if the AMI is new."""
        from kiln.aws.refresh import refresh_fleet

        return refresh_fleet(self.loaded, self.home, reason=reason, wait=wait, on_event=on_event)

    def packages(self, ref: str, match: str | None) -> Report:
        """From SSM, where the bake kept them; ``ref``: an AMI id, image id or release."""
        from kiln.aws.groups import split_release
        from kiln.aws.images import BASE_TAG, describe_ami
        from kiln.aws.packages import read_packages
        from kiln.aws.promote import newest_ami
        from kiln.errors import ImageNotFound

        aws = connect(self.settings())
        image, ami_id = split_release(ref)
        if image.startswith("ami-"):
            ami_id = image
        ami = describe_ami(aws, ami_id) if ami_id else newest_ami(aws, image)
        if ami is None or not ami.app:
            raise ImageNotFound(
                f"no AMI baked by kiln is {ref} in {aws.region}",
                hint="'kiln images --provider aws' lists them",
            )
        found = read_packages(aws, ami.app, ami.id)
        if found is None:
            raise ImageNotFound(
                f"{ami.id} has no recorded package list (baked before kiln kept them)",
                hint="a new bake records one: kiln refresh --provider aws",
            )
        shown = [(n, v) for n, v in found if match is None or match in n]
        base = ami.tags.get(BASE_TAG)
        return Report(
            {
                "ami": ami.id,
                "image": ami.image,
                "base_ami": base,
                "total": len(found),
                "packages": [{"name": n, "version": v} for n, v in shown],
            },
            columns=("PACKAGE", "VERSION"),
            rows=tuple(shown),
            footer=(
                f"{len(shown)} of {len(found)} packages of {ami.id} "
                f"(image {ami.image}, base {base or '?'})",
            ),
            empty=f"no package of {ami.id} has {match!r} in its name",
        )

    def destroy(
        self, *, reason: str | None, wait: float | None, on_event: OnEvent | None
    ) -> Report:
        self.require(Capability.DESTROY, "kiln destroy")
        raise AssertionError("unreachable: DESTROY is not an AWS capability")

    def timeline(self, limit: int) -> list[dict[str, Any]]:
        """History records from AWS: one per operation, without steps (see kiln.ui.timeline)."""
        return [{**entry, "steps": []} for entry in self.history(limit, all_fleets=False)]

    def counters(self) -> dict[str, tuple[int, int]]:
        return {}  # ALB counts are per target group, in CloudWatch: see traffic()

    def traffic(self, since: float) -> list[list[float]] | None:
        return self.deployer().provider.traffic(since)

    def drift(self, *, replace: bool, reason: str | None, on_event: OnEvent | None) -> Report:
        if replace:
            self.require(Capability.DRIFT_REPLACE, "kiln drift --replace (use 'kiln recycle')")
        drift = self.deployer(on_event).drift()
        if drift.clean:
            lines = ["no drift: every serving instance is what its server group launched"]
        else:
            lines = [
                f"{i['id']} ({i['group']}): {'; '.join(i['reasons'])}" for i in drift.not_current
            ]
            lines += [f"{s}: in the target group, not launched by kiln" for s in drift.unmanaged]
        return Report(
            drift.to_json(), lines=tuple(lines), exit_code=0 if drift.clean else DRIFT_FOUND
        )

    def recycle(
        self,
        max_age: float,
        *,
        dry_run: bool,
        reason: str | None,
        wait: float | None,
        on_event: OnEvent | None,
    ) -> Report:
        if dry_run:
            self.require(Capability.RECYCLE_DRY_RUN, "kiln recycle --dry-run")
        result = self.deployer(on_event).recycle(max_age, reason=reason, wait=wait)
        return Report(result.to_json(), result=result)


def _aws(source: Platform) -> AwsPlatform:
    if not isinstance(source, AwsPlatform):
        raise ConfigError(
            f"promotion from --provider {source.name} to aws: both must be aws",
            hint="promote between two environments of one provider",
        )
    return source


def _recipe(platform: AwsPlatform) -> str:
    from kiln.aws.install import recipe

    return recipe(platform.loaded.config, platform.settings())


def _regions(home: str, copies: list[Any]) -> str:
    """'eu-west-1 us-east-1 us-west-2(pending)': where an AMI can be launched."""
    out = [home]
    for copy in copies:
        out.append(copy.region if copy.state == "available" else f"{copy.region}({copy.state})")
    return " ".join(out)
