"""``kiln ui``: the fleet, its images and its deployments in a browser."""

from __future__ import annotations

import asyncio
import webbrowser

import click

from kiln.cli.app import State, cli, pass_state, provider_option
from kiln.cli.output import console, emit_json
from kiln.errors import ConfigError


@cli.command("ui")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Loopback port (0: any free)."
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to serve on."
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the agent's page address as JSON (ui_listen)."
)
@provider_option("Where the fleet runs.")
@pass_state
def ui_command(
    state: State, port: int, host: str, open_browser: bool, as_json: bool, provider: str
) -> None:
    """Serve a read-only page of the fleet, its images and deployments, live, until Ctrl-C.

    It listens on a loopback address only and answers only a browser that
    opened the printed address (it carries a token): from another machine,
    use an SSH tunnel. With [provider.local] ui_listen the agent serves the
    page all the time: kiln ui then prints (and with --open opens) its address
    and exits.
    """
    from kiln.ui.server import serve

    platform = state.platform(provider)
    app = state.config().config.app.name
    served_by_agent = platform.served_page()
    if served_by_agent is not None:
        if as_json:
            emit_json({"url": served_by_agent, "served_by": "agent"})
        else:
            console.print(f"kiln ui for {app} at {served_by_agent}", markup=False, soft_wrap=True)
            console.print("served by the agent (ui_listen), read-only", style="dim")
        if open_browser:
            webbrowser.open(served_by_agent)
        return
    if as_json:
        raise ConfigError(
            "kiln ui --json prints the address of the page the agent serves",
            hint="set [provider.local] ui_listen, or run kiln ui without --json",
        )

    async def run() -> None:
        async with serve(platform, app, host=host, port=port) as served:
            console.print(f"kiln ui for {app} at {served.url}", markup=False, soft_wrap=True)
            console.print("read-only; Ctrl-C stops it", style="dim")
            if open_browser:
                webbrowser.open(served.url)
            await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        console.print("stopped")
