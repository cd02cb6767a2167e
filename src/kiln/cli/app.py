"""The ``kiln`` command group and what every subcommand shares."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kiln import __version__
from kiln.errors import KilnError, UsageError
from kiln.home import Home
from kiln.oserrors import explain_failure
from kiln.platform import PLATFORM_NAMES

if TYPE_CHECKING:
    from kiln.config import LoadedConfig
    from kiln.platform import Platform

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class State:
    """Options given before the subcommand, resolved lazily."""

    home_override: str | None = None
    config_path: str | None = None
    environment: str | None = None  # --env: one of kiln.toml's [environments]
    _home: Home | None = field(default=None, repr=False)
    _config: LoadedConfig | None = field(default=None, repr=False)
    made_home: bool = field(default=False, repr=False)  # this command created KILN_HOME

    def home(self) -> Home:
        if self._home is None:
            home = Home.resolve(self.home_override)
            self.made_home = not home.root.exists()
            self._home = home.ensure()
        return self._home

    def unmake_home(self) -> None:
        """A home this command made and left empty, gone again: ``kiln deploy`` outside
        an app directory left an empty ~/.kiln behind its "no kiln.toml" error."""
        home = self._home
        if home is None or not self.made_home:
            return
        with contextlib.suppress(OSError):
            for sub in (home.store, home.tmp):
                sub.rmdir()  # only when empty
            home.root.rmdir()

    def has_config(self) -> bool:
        """Whether a kiln.toml was named or is here (image commands work without one)."""
        from kiln.configfile import CONFIG_NAME

        return self.config_path is not None or (Path.cwd() / CONFIG_NAME).is_file()

    def platform(self, name: str, environment: str | None = None) -> Platform:
        """The one place a command's provider is chosen; everything after delegates.

        ``environment`` opens another environment's platform than ``--env``'s
        (``kiln promote`` reads one and deploys to the other).
        """
        from kiln.configfile import find_config
        from kiln.platform import open_platform

        config = self.config if environment is None else lambda: self.config_for(environment)
        chosen = self.environment if environment is None else environment
        return open_platform(
            name,
            self.home(),
            config,
            has_config=self.has_config(),
            source=lambda: (find_config(self.config_path), chosen),
        )

    def config(self) -> LoadedConfig:
        """kiln.toml as ``--env`` selects it (no --env: the file as it is)."""
        if self._config is None:
            self._config = self.config_for(self.environment)
        return self._config

    def config_for(self, environment: str | None) -> LoadedConfig:
        from kiln.config import load_config  # pydantic: paid only by commands that read it

        return load_config(self.config_path, environment=environment)


pass_state = click.make_pass_decorator(State)


def provider_option(help: str) -> Callable[[F], F]:
    """``--provider`` among the registered providers, ``local`` by default; and ``--env``."""
    provider = click.option(
        "--provider",
        type=click.Choice(sorted(PLATFORM_NAMES)),
        default="local",
        show_default=True,
        help=help,
    )

    def both(fn: F) -> F:
        return provider(environment_option(fn))

    return both


def _select_environment(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(State).environment = value


def environment_option(fn: F) -> F:
    """``--env NAME``: act on the fleet of kiln.toml's [environments.NAME]."""
    return click.option(
        "--env",
        "environment",
        metavar="NAME",
        expose_value=False,
        callback=_select_environment,
        help="Environment of kiln.toml ([environments.NAME]) to act on; default: none, "
        "the file as it is.",
    )(fn)


JSON_KEY = "kiln.json"  # ctx.meta: the command run was asked for --json


class KilnGroup(click.Group):
    """Turns user errors into one line and an exit code, never a traceback.

    Commands named in ``lazy_commands`` are registered by importing their
    module the first time they are looked up, so a command pays only for the
    libraries it uses.
    """

    lazy_commands: dict[str, str] = {}
    summaries: dict[str, str] = {}  # command -> its help's first paragraph, for `kiln --help`

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy_commands))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from ``summaries``: `kiln --help` imports no command module."""
        names = self.list_commands(ctx)
        if not names or any(n not in self.commands and n not in self.summaries for n in names):
            super().format_commands(ctx, formatter)
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is not None and command.hidden:
                continue
            # a stand-in command shortens the summary exactly as the real one would
            shown = command or click.Command(name, help=self.summaries[name])
            text = shown.get_short_help_str(limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """An unknown command is an error naming the nearest ones (`kiln deplyo`)."""
        # the command line as the group has it: what ``invoke`` reports failures by
        ctx.meta[JSON_KEY] = self.wants_json(ctx, args)
        name = args[0] if args else ""
        if args and not name.startswith("-") and self.get_command(ctx, name) is None:
            import difflib

            near = difflib.get_close_matches(name, self.list_commands(ctx), n=2)
            if near:
                ctx.fail(f"No such command '{name}'. Did you mean {' or '.join(near)}?")
        return super().resolve_command(ctx, args)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            importlib.import_module(self.lazy_commands[cmd_name])
        return self.commands.get(cmd_name)

    def wants_json(self, ctx: click.Context, args: list[str]) -> bool:
        """The command run takes ``--json`` and was given it (before any ``--``): the
        one `kiln run -- tool --json` passes on is not kiln's to read."""
        if "--" in args:
            args = args[: args.index("--")]
        group: click.Group = self
        command: click.Command | None = None
        for arg in args:
            if arg.startswith("-"):
                continue
            command = group.get_command(ctx, arg)
            if not isinstance(command, click.Group):
                break
            group = command
        return (
            command is not None
            and "--json" in args
            and any("--json" in param.opts for param in command.params)
        )

    def invoke(self, ctx: click.Context) -> Any:
        # a script that asked for --json gets a JSON document on stdout even on failure
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option or argument: click reports it
            if ctx.meta.get(JSON_KEY):
                emit_error_json(UsageError(exc.format_message()))
            raise
        except KilnError as exc:
            from kiln.cli.output import report_error  # rich: paid only when printing

            state = ctx.find_object(State)
            if state is not None:
                state.unmake_home()
            report_error(exc)
            if ctx.meta.get(JSON_KEY):
                emit_error_json(exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            from kiln.cli.output import err_console

            err_console.print("[yellow]interrupted[/]")
            ctx.exit(130)
        except Exception as exc:
            explained = explain_failure(exc)  # a full disk, a path kiln may not use
            if explained is not None:
                from kiln.cli.output import report_error

                report_error(explained)
                if ctx.meta.get(JSON_KEY):
                    emit_error_json(explained)
                ctx.exit(explained.exit_code)
            if not type(exc).__module__.startswith("botocore"):
                raise
            # a safety net: AWS failures the library did not translate still get one line
            from kiln.cli.output import report_error

            report_error(
                KilnError(
                    f"AWS: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                    hint="check credentials, region and AWS_ENDPOINT_URL",
                )
            )
            ctx.exit(1)


@click.group(cls=KilnGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    "home",
    metavar="PATH",
    envvar="KILN_HOME",
    help="State directory (default: $KILN_HOME or ~/.kiln).",
)
@click.option(
    "-c", "--config", "config", metavar="PATH", help="kiln.toml to use (default: ./kiln.toml)."
)
@click.version_option(__version__, prog_name="kiln")
@click.pass_context
def cli(ctx: click.Context, home: str | None, config: str | None) -> None:
    """Immutable infrastructure for web apps: bake images, deploy by replacement."""
    # a file name that is not UTF-8 prints escaped (as stderr already does), never a traceback
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    ctx.obj = State(home_override=home, config_path=config)


def emit_error_json(exc: KilnError) -> None:
    """``{"ok": false, "error": {...}}`` on stdout: with --json, stdout is always one
    JSON document (the error line and hint still go to stderr)."""
    from kiln.cli.output import emit_json

    emit_json(
        {
            "ok": False,
            "error": {
                "type": type(exc).__name__,
                "message": exc.message,
                "hint": exc.hint,
                "exit_code": exc.exit_code,
            },
        }
    )
