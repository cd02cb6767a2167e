"""Where kiln.toml is: found without validating it (and without importing pydantic).

Commands that only need to know which file they would read (a no-change
``kiln bake`` recognising an unchanged app, ``kiln init`` refusing to
overwrite) stay fast; ``kiln.config`` validates it.
"""

from __future__ import annotations

from pathlib import Path

from kiln.errors import ConfigError

CONFIG_NAME = "kiln.toml"


def find_config(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """The config to use: ``-c PATH`` or ``kiln.toml`` in the current directory."""
    if explicit is not None:
        path = Path(explicit)
        if path.is_dir():
            path = path / CONFIG_NAME
    else:
        path = (cwd or Path.cwd()) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(
            f"no {CONFIG_NAME} at {path}",
            hint="run 'kiln init' in your app's directory, or pass -c PATH",
        )
    return path.absolute()
