"""``kiln demo``: the whole immutable-deploy story on this machine, narrated.

Every step runs the real ``kiln`` command (shown as ``$ kiln ...``) against
a private KILN_HOME, on a copy of examples/acebook, while a load loop keeps
hitting the load balancer: the summary's "failed requests" is measured, not
claimed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import tomli_w
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

import kiln
from kiln.cli.app import cli
from kiln.cli.output import console
from kiln.durations import format_duration
from kiln.errors import KilnError
from kiln.loadgen import LoadLoop

BROKEN = 'raise SystemExit("acebook: cannot start: migration 0042 missing")\n\n\n'
MAIN_GUARD = 'if __name__ == "__main__":'
POSTS = ("Hello from v1!", "Immutable servers never drift.", "Deploys are just launches.")


def example_app() -> Path:
    """examples/acebook of the checkout kiln runs from."""
    return Path(kiln.__file__).resolve().parents[2] / "examples" / "acebook"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Demo:
    work: Path
    port: int
    app: Path = field(init=False)
    home: Path = field(init=False)
    db: Path = field(init=False)
    timings: list[tuple[str, float, str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)
    load: LoadLoop | None = None

    def __post_init__(self) -> None:
        self.app = self.work / "acebook"
        self.home = self.work / "home"
        self.db = self.work / "acebook.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # setup ---------------------------------------------------------------------

    def prepare(self, source: Path) -> None:
        ignore = shutil.ignore_patterns("tests", ".github", "__pycache__", "*.db", "deps")
        shutil.copytree(source, self.app, ignore=ignore)
        config = tomllib.loads((self.app / "kiln.toml").read_text())
        config["provider"] = {"local": {"listen": f"127.0.0.1:{self.port}"}}
        config["health"].update(interval="250ms", healthy_threshold=2, grace="10s")
        config["fleet"].update(size=3, drain="2s", settle="1s", keep_warm="1m")
        (self.app / "kiln.toml").write_text(tomli_w.dumps(config))

    # running kiln ----------------------------------------------------------------

    def kiln(self, *args: str, expect: int = 0, quiet: bool = False) -> str:
        """Run a real kiln command; show it and its output; check its exit code."""
        console.print(f"[bold cyan]$ kiln {' '.join(args)}[/]", markup=True)
        env = {
            **os.environ,
            "KILN_HOME": str(self.home),
            "DATABASE_URL": f"sqlite:///{self.db}",
            "COLUMNS": os.environ.get("COLUMNS", "110"),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "kiln.cli", *args],
            cwd=self.app,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if not quiet and proc.stdout.strip():
            console.print(proc.stdout.rstrip(), markup=False, highlight=False)
        if proc.returncode != expect:
            raise KilnError(
                f"demo step 'kiln {' '.join(args)}' exited {proc.returncode}, expected {expect}",
                hint=f"its state is kept in {self.work} for a look",
            )
        return proc.stdout

    def step(self, title: str, action: Any) -> Any:
        console.print(Rule(f"[bold]{escape(title)}[/]", align="left"))
        started = time.monotonic()
        result = action()
        self.timings.append((title, time.monotonic() - started, self._load_note()))
        return result

    def _load_note(self) -> str:
        if self.load is None:
            return "-"
        return f"{self.load.sent} sent, {self.load.failed} failed"

    def deploy(self, *args: str, expect: int = 0) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            self.kiln("deploy", "--json", *args, expect=expect, quiet=True)
        )
        outcome = data.get("outcome")
        console.print(
            f"  outcome: [bold]{outcome}[/]  {data.get('from') or '-'} -> {data.get('to')}"
            f"  ({data.get('duration', 0):.1f}s)",
            markup=True,
        )
        if data.get("message"):
            console.print(f"  {data['message']}", markup=False)
        if data.get("to") and outcome == "succeeded":
            self.images.append((data["to"], " ".join(args) or "deploy"))
        return data

    # http ----------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            body = response.read().decode()
        return json.loads(body) if path.startswith("/api") else body

    def post(self, text: str) -> None:
        data = json.dumps({"author": "demo", "body": text}).encode()
        request = urllib.request.Request(
            self.url + "/api/posts", data, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    # the story -------------------------------------------------------------------------

    def run(self) -> None:
        self.step("1. bake v1: an immutable, content-addressed image", lambda: self.kiln("bake"))
        self.step("2. deploy 3 instances behind kiln's load balancer", self._first_deploy)
        self.step("3. create posts (stored outside the image)", self._create_posts)
        self.load = LoadLoop("127.0.0.1", self.port, "/", workers=2).start()
        console.print(f"[dim]load loop started against {self.url}/[/]", markup=True)
        self.step("4. change the code, bake v2, rolling deploy under load", self._code_change)
        self.step("5. change config ([env]), blue-green deploy under load", self._config_change)
        self.step("6. a broken v3 is rolled back automatically", self._broken_release)
        self.step("7. tamper with an instance: drift finds it, --replace fixes it", self._drift)
        self.load.stop()
        self.step("8. status and history", self._status)

    def _first_deploy(self) -> None:
        self.deploy()
        info = self.get("/api/info")
        console.print(f"  {self.url} answers: version {info['version']}, image {info['image']}")

    def _create_posts(self) -> None:
        for text in POSTS:
            self.post(text)
        count = self.get("/api/info")["posts"]
        console.print(f"  {count} posts in {self.db} (a secret: DATABASE_URL, not in the image)")

    def _code_change(self) -> None:
        app_py = self.app / "app.py"
        app_py.write_text(app_py.read_text().replace("<h1>acebook</h1>", "<h1>acebook 2</h1>"))
        console.print("  edited app.py: <h1>acebook</h1> -> <h1>acebook 2</h1>")
        self.deploy()
        assert "acebook 2" in self.get("/")

    def _config_change(self) -> None:
        toml = self.app / "kiln.toml"
        config = tomllib.loads(toml.read_text())
        config["env"]["APP_VERSION"] = "v2"
        toml.write_text(tomli_w.dumps(config))
        console.print('  edited kiln.toml: [env] APP_VERSION = "v2" (a new image, not a push)')
        self.deploy("--strategy", "blue-green")
        console.print(f"  now serving version {self.get('/api/info')['version']}")

    def _broken_release(self) -> None:
        app_py = self.app / "app.py"
        good = app_py.read_text()
        app_py.write_text(good.replace(MAIN_GUARD, BROKEN + MAIN_GUARD, 1))
        console.print("  edited app.py: it now exits at start")
        try:
            self.deploy(expect=4)
        finally:
            app_py.write_text(good)
        console.print(f"  still serving version {self.get('/api/info')['version']}")

    def _drift(self) -> None:
        status = json.loads(self.kiln("status", "--json", quiet=True))
        victim = next(  # one that serves: a warm standby is out of the balancer
            i for i in status["instances"] if i["state"] == "healthy" and i["in_service"]
        )
        target = self.home / "instances" / victim["id"] / "posts.py"
        target.write_text(target.read_text() + "\n# hotfix applied by hand over ssh\n")
        console.print(f"  someone edited {victim['id']}'s posts.py in place")
        self.kiln("drift", expect=6)
        self.kiln("drift", "--replace")

    def _status(self) -> None:
        self.kiln("status")
        self.kiln("history")

    # ending ------------------------------------------------------------------------------

    def summary(self, total: float) -> None:
        load = self.load
        posts = self.get("/api/info")["posts"]
        console.print(Rule("[bold]summary[/]", align="left"))
        table = Table(box=None, header_style="bold")
        for column in ("STEP", "TOOK", "LOAD SO FAR"):
            table.add_column(column)
        for title, seconds, note in self.timings:
            table.add_row(escape(title), format_duration(seconds), note)
        console.print(table)
        if load is not None:
            console.print(
                f"requests served: [bold]{load.sent - load.failed}[/]   "
                f"failed: [bold]{load.failed}[/]   "
                f"p99: {load.percentile(0.99) * 1000:.1f} ms",
                markup=True,
            )
            for error in load.errors[:5]:
                console.print(f"  failure: {error}", markup=False)
        for image, how in self.images:
            console.print(f"image {image}  ({how})", markup=False)
        console.print(f"posts created at the start, still there: {posts}/{len(POSTS)}+")
        console.print(f"whole demo: {format_duration(total)}")

    def stop(self) -> None:
        self.kiln("agent", "stop", "--all", quiet=True)


@cli.command("demo")
@click.option("--keep", is_flag=True, help="Leave the app running at the end (prints its URL).")
@click.option("--port", type=int, help="Load balancer port (default: a free one).")
@click.option(
    "--app",
    "source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="App to demo (default: examples/acebook of this checkout).",
)
def demo_command(keep: bool, port: int | None, source: Path | None) -> None:
    """The whole story on this machine: bake, deploy, roll, roll back, drift."""
    source = source or example_app()
    if not (source / "kiln.toml").is_file():
        raise KilnError(
            f"no example app at {source}",
            hint="run the demo from a kiln checkout (make demo), or pass --app PATH",
        )
    demo = Demo(Path(tempfile.mkdtemp(prefix="kiln-demo-")), port or free_port())
    started = time.monotonic()
    ok = False
    try:
        demo.prepare(source)
        console.print(
            f"[bold]kiln demo[/]: {source.name} on {demo.url}, state in {demo.home}", markup=True
        )
        demo.run()
        demo.summary(time.monotonic() - started)
        ok = demo.load is not None and demo.load.failed == 0
    finally:
        if demo.load is not None:
            demo.load.stop()
        if keep:
            console.print(
                f"\nthe app keeps running at [bold]{demo.url}[/]\n"
                f"  KILN_HOME={demo.home} kiln status   # look around\n"
                f"  KILN_HOME={demo.home} kiln agent stop --all && rm -rf {demo.work}",
                markup=True,
            )
        else:
            demo.stop()
            if ok:
                shutil.rmtree(demo.work, ignore_errors=True)
            else:
                console.print(f"state kept for a look: {demo.work}")
    if not ok:
        raise KilnError("the demo saw failed requests: see the summary above")
