"""``kiln ui``: the fleet, its images and its deployments in a browser."""

from __future__ import annotations

import asyncio
import webbrowser

import click

from kiln.cli.app import State, cli, pass_state, provider_option
from kiln.cli.output import console


@cli.command("ui")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Loopback port (0: any free)."
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Loopback address to serve on."
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@provider_option("Where the fleet runs.")
@pass_state
def ui_command(state: State, port: int, host: str, open_browser: bool, provider: str) -> None:
    """Serve a read-only page of the fleet, its images and deployments, live, until Ctrl-C.

    It listens on a loopback address only and answers only a browser that
    opened the printed address (it carries a token): from another machine,
    use an SSH tunnel.
    """
    from kiln.ui.server import serve

    platform = state.platform(provider)
    app = state.config().config.app.name

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
