"""Provider registry: a name from the command line to a Provider, imported lazily.

Each provider module pulls in its own dependencies (aiohttp for the local
agent's client, boto3 for AWS); importing only the one asked for keeps every
command fast and lets one provider be broken without breaking the other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from kiln.errors import ProviderError

if TYPE_CHECKING:
    from kiln.config import LoadedConfig
    from kiln.home import Home
    from kiln.providers.protocol import Provider

# name -> (module, class); each class is constructed as Class(home, loaded)
PROVIDERS: dict[str, tuple[str, str]] = {
    "local": ("kiln.local.provider", "LocalProvider"),
    "aws": ("kiln.aws.provider", "AwsProvider"),
}
PROVIDER_NAMES = frozenset(PROVIDERS)


def open_provider(name: str, home: Home, loaded: LoadedConfig) -> Provider:
    """The provider called ``name`` for this app, ready to use."""
    try:
        module_name, class_name = PROVIDERS[name]
    except KeyError:
        raise ProviderError(
            f"unknown provider {name!r}", hint=f"use one of: {', '.join(PROVIDERS)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ProviderError(f"the {name} provider is not available in this kiln build") from exc
    provider: Provider = getattr(module, class_name)(home, loaded)
    return provider
