"""``kiln bake``, ``kiln images`` and ``kiln image show|verify``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from kiln.bake import BakeProgress, BakeResult, bake
from kiln.cli.app import State, cli, pass_state, provider_option
from kiln.cli.output import console, emit_json, err_console, note
from kiln.errors import CorruptObject
from kiln.store import Store


class _ConsoleProgress(BakeProgress):
    """Build output streamed as it comes, a bar while files are stored."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def step(self, index: int, total: int, command: str) -> None:
        self._stop_bar()
        if not self.quiet:
            err_console.print(f"[bold]step {index}/{total}[/] {command}", markup=True)

    def output(self, line: str) -> None:
        if not self.quiet:
            err_console.print(f"  [dim]{line}[/]" if line else "", markup=False)

    def files(self, done: int, total: int) -> None:
        if self.quiet or total < 500:
            return
        if self.bar is None:
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


def _bake_local(state: State, quiet: bool) -> BakeResult:
    progress = _ConsoleProgress(quiet)
    try:
        return bake(state.config(), state.home(), progress)
    finally:
        progress._stop_bar()


PROVIDER = provider_option(
    "local: the image store in KILN_HOME; aws: also an AMI (reused by digest)."
)


@cli.command("bake")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@PROVIDER
@pass_state
def bake_command(state: State, as_json: bool, provider: str) -> None:
    """Bake the app into an immutable, content-addressed image."""
    if provider == "aws":
        _bake_aws(state, as_json)
        return
    result = _bake_local(state, quiet=as_json)
    if as_json:
        emit_json(result.as_dict())
        return
    how = "reused, nothing changed" if result.reused else f"{result.seconds:.2f}s"
    console.print(
        f"[bold green]{result.image}[/]  {result.app}  {result.files} files, "
        f"{_size(result.bytes)}  ({how})",
        markup=True,
    )


def _bake_aws(state: State, as_json: bool) -> None:
    from kiln.aws.ami import bake_ami

    progress = _ConsoleProgress(quiet=as_json)
    try:
        result = bake_ami(
            state.config(),
            state.home(),
            progress=note,  # stderr: CI logs show minutes of AWS work, stdout stays JSON
            bake_progress=progress,
        )
    finally:
        progress._stop_bar()
    if as_json:
        emit_json(result.summary())
        return
    how = "reused, no builder launched" if result.reused else f"{result.seconds:.0f}s"
    console.print(
        f"[bold green]{result.ami}[/]  {result.image}  {result.app}  {result.region}  ({how})",
        markup=True,
    )


def _images_aws(state: State, app: str | None, as_json: bool) -> None:
    from kiln.aws.images import list_amis
    from kiln.aws.session import connect
    from kiln.cli.aws import aws_settings

    amis = list_amis(connect(aws_settings(state)), app)
    if as_json:
        emit_json([a.summary() for a in amis])
        return
    if not amis:
        console.print("no AMIs baked by kiln in this region: run 'kiln bake --provider aws'")
        return
    table = Table(box=None, header_style="bold")
    for column in ("AMI", "IMAGE", "APP", "STATE", "CREATED", "COMMIT"):
        table.add_column(column)
    for a in amis:
        commit = (a.summary().get("commit") or "-")[:10]
        table.add_row(a.id, a.image, a.app, a.state, a.created, commit)
    console.print(table)


@cli.command("images")
@click.option("--app", help="Only this app's images.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@provider_option("local: the image store in KILN_HOME; aws: kiln's AMIs in the region.")
@pass_state
def images_command(state: State, app: str | None, as_json: bool, provider: str) -> None:
    """List baked images, newest first."""
    if provider == "aws":
        _images_aws(state, app, as_json)
        return
    records = Store(state.home()).list_images(app)
    if as_json:
        emit_json([r.summary() for r in records])
        return
    if not records:
        console.print("no images yet: run 'kiln bake' in your app's directory")
        return
    table = Table(box=None, header_style="bold")
    for column in ("IMAGE", "APP", "CREATED", "SIZE", "FILES", "COMMIT"):
        table.add_column(column)
    for r in records:
        commit = (r.meta.get("commit") or "-")[:10] + ("+dirty" if r.meta.get("dirty") else "")
        table.add_row(
            r.id,
            r.app,
            _when(r.created),
            _size(r.manifest.size),
            str(len(r.manifest.files)),
            commit,
        )
    console.print(table)


@cli.group("image")
def image_group() -> None:
    """Inspect one image."""


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
    console.print(f"{'size':>8}: {_size(record.manifest.size)}")
    console.print(f"{'created':>8}: {_when(record.created)}")
    console.print(f"{'run':>8}: {record.manifest.run}")
    for name, value in sorted(record.manifest.env.items()):
        console.print(f"{'env':>8}: {name}={value}")


@image_group.command("verify")
@click.argument("image")
@pass_state
def image_verify(state: State, image: str) -> None:
    """Re-hash every object of an image; names any corrupted file."""
    store = Store(state.home())
    record = store.get(image)
    started = time.monotonic()
    bad = store.verify(image)
    if bad:
        listed = "\n".join(f"  {path}" for path in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise CorruptObject(
            f"{record.id}: {len(bad)} corrupted file(s):\n{listed}{more}",
            hint="bake the app again to restore the objects, or prune the image",
        )
    console.print(
        f"{record.id}: ok, {len(record.manifest.files)} files verified "
        f"in {time.monotonic() - started:.2f}s"
    )


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(ts: float) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
