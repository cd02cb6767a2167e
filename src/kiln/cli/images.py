"""``kiln bake``, ``kiln images`` and ``kiln image show|verify``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape

from kiln.cli.app import State, cli, pass_state, provider_option
from kiln.cli.output import console, emit_json, err_console, note, print_report
from kiln.durations import format_size, format_time
from kiln.errors import CorruptObject
from kiln.image.result import BakeProgress, shown_command
from kiln.image.store import Store

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class _ConsoleProgress(BakeProgress):
    """Build output streamed as it comes, a bar while files are stored."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.shows_output = not quiet
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def step(self, index: int, total: int, command: str) -> None:
        self._stop_bar()
        if not self.quiet:
            err_console.print(
                f"[bold]step {index}/{total}[/] {escape(shown_command(command))}", markup=True
            )

    def cached(self, index: int, total: int, command: str) -> None:
        self._stop_bar()
        if not self.quiet:
            err_console.print(
                f"[bold]step {index}/{total}[/] {escape(shown_command(command))} [dim](reused)[/]",
                markup=True,
            )

    def output(self, line: str) -> None:
        if not self.quiet:
            err_console.print(f"  {line}", markup=False, highlight=False, style="dim")

    def files(self, done: int, total: int) -> None:
        if self.quiet or total < 500:
            return
        if self.bar is None:
            # imported here: a bake with nothing to store never pays for rich.progress
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("storing files"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("files", total=total)
        assert self.task is not None
        self.bar.update(self.task, completed=done, total=total)
        if done >= total:
            self._stop_bar()

    def _stop_bar(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


PROVIDER = provider_option(
    "local: the image store in KILN_HOME; aws: also an AMI (reused by digest)."
)


@cli.command("bake")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--boot-test/--no-boot-test",
    default=None,
    help="aws: boot one instance from the new AMI and wait for its health check before "
    "tagging it kiln:verified (default: [provider.aws] boot_test).",
)
@PROVIDER
@pass_state
def bake_command(state: State, as_json: bool, boot_test: bool | None, provider: str) -> None:
    """Bake the app into an immutable, content-addressed image."""
    progress = _ConsoleProgress(quiet=as_json)
    try:
        # narration on stderr: CI logs show minutes of AWS work, stdout stays JSON
        report = state.platform(provider).bake(progress, note, boot_test=boot_test)
    finally:
        progress._stop_bar()
    print_report(report, as_json)


@cli.command("images")
@click.option("--app", help="Only this app's images.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@provider_option("local: the image store in KILN_HOME; aws: kiln's AMIs in the region.")
@pass_state
def images_command(state: State, app: str | None, as_json: bool, provider: str) -> None:
    """List baked images, newest first."""
    print_report(state.platform(provider).images(app), as_json)


@cli.group("image")
def image_group() -> None:
    """Inspect one image."""


@image_group.command("packages")
@click.argument("image")
@click.option("--grep", "match", metavar="TEXT", help="Only packages whose name contains TEXT.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@provider_option("aws: the AMI's list, kept in SSM when it was baked.")
@pass_state
def image_packages(
    state: State, image: str, match: str | None, as_json: bool, provider: str
) -> None:
    """The OS packages an AMI was built with (an AMI id, image id or img-…@ami-…)."""
    print_report(state.platform(provider).packages(image, match), as_json)


@image_group.command("show")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print JSON, with the file list.")
@pass_state
def image_show(state: State, image: str, as_json: bool) -> None:
    """Show an image's identity, metadata and baked config."""
    record = Store(state.home()).get(image)
    summary = record.summary()
    if as_json:
        summary["run"] = record.manifest.run
        summary["env"] = record.manifest.env
        summary["manifest"] = [
            {"path": f.path, "mode": oct(f.mode), "size": f.size, "sha256": f.sha256}
            for f in record.manifest.files
        ]
        emit_json(summary)
        return
    for key in ("image", "digest", "app", "files", "commit", "dirty", "python"):
        value = summary[key]
        console.print(f"{key:>8}: {'-' if value is None else value}")
    console.print(f"{'size':>8}: {format_size(record.manifest.size)}")
    console.print(f"{'created':>8}: {format_time(record.created)}")
    console.print(f"{'run':>8}: {record.manifest.run}")
    for name, value in sorted(record.manifest.env.items()):
        console.print(f"{'env':>8}: {name}={value}")


@image_group.command("verify")
@click.argument("image")
@click.option(
    "--repair",
    is_flag=True,
    help="Store corrupted objects again from --source, and name the images to re-bake.",
)
@click.option(
    "--source",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --repair: the app directory the image was baked from.",
)
@pass_state
def image_verify(state: State, image: str, repair: bool, source: Path | None) -> None:
    """Re-hash every object of an image; names any corrupted file.

    A corrupted object is quarantined: it counts as missing, so baking the app
    again stores it again.
    """
    store = Store(state.home())
    record = store.get(image)
    started = time.monotonic()
    if not repair:
        bad = store.verify(image)
        if bad:
            raise CorruptObject(
                f"{record.id}: {len(bad)} corrupted file(s):\n{_listed(bad)}",
                hint=f"bake the app again to restore them, or run "
                f"'kiln image verify {record.id} --repair --source APP_DIR'",
            )
    else:
        from kiln.image import repair as repairs

        done = repairs.repair(store, image, source)
        if done.restored:
            console.print(f"{record.id}: restored {len(done.restored)} file(s) from {source}")
        if done.rebake:
            left = sorted(set(done.corrupted) - set(done.restored))
            images = "; ".join(
                f"{r.id} ({r.app}, baked from {r.meta.get('source', '?')})" for r in done.rebake
            )
            raise CorruptObject(
                f"{record.id}: {len(left)} corrupted file(s) could not be restored "
                f"and are quarantined:\n{_listed(left)}",
                hint=f"bake again to store them: {images}",
            )
    console.print(
        f"{record.id}: ok, {len(record.manifest.files)} files verified "
        f"in {time.monotonic() - started:.2f}s"
    )


def _listed(paths: list[str]) -> str:
    more = f"\n  ... and {len(paths) - 20} more" if len(paths) > 20 else ""
    return "\n".join(f"  {path}" for path in paths[:20]) + more
