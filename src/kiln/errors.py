"""Every error a user can cause, in one place.

The CLI turns a ``KilnError`` into one line (plus an optional hint) and its
``exit_code``; anything else is a bug and keeps its traceback.

    KilnError
    ├── ConfigError            kiln.toml missing, malformed or invalid
    ├── HomeError              KILN_HOME unusable
    ├── StoreError             image store problems
    │   ├── ImageNotFound
    │   ├── CorruptObject      an object no longer matches its hash
    │   └── UnsafeImage        a manifest whose tree reaches outside its directory
    ├── BuildError             a bake step failed
    ├── AgentError             the local agent cannot be reached or refused
    ├── ProviderError          a provider could not do what was asked
    │   ├── InstanceNotFound
    │   └── CertificateError   an ACME CA did not issue a certificate (unreachable, refused)
    ├── DeployError            a deployment could not proceed
    │   ├── GateFailed         a health/progress/canary gate tripped
    │   ├── LockHeld           another deployment holds the fleet's lock
    │   ├── DeployInterrupted  stopped by Ctrl-C; says how to finish
    │   ├── UnverifiedImage    an AMI no boot test has passed
    │   ├── PromotionRefused   code never healthy where [environments] require says
    │   └── FleetNotFound
    ├── AwsError               AWS refused or failed (credentials, permissions)
    └── CiError                a CI pipeline cannot be written as asked
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AwsError",
    "BuildError",
    "CiError",
    "CommandNotFound",
    "ConfigError",
    "CorruptObject",
    "DeployError",
    "DeployInterrupted",
    "FleetNotFound",
    "GateFailed",
    "HomeError",
    "ImageNotFound",
    "InstanceNotFound",
    "KilnError",
    "LockHeld",
    "ProviderError",
    "StoreError",
    "UnsafeImage",
    "UnverifiedImage",
    "UsageError",
]


class KilnError(Exception):
    """Base class: a failure the user can understand and act on."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(KilnError):
    exit_code = 2


class UsageError(KilnError):
    """A command line click refused (an unknown option, a missing argument)."""

    exit_code = 2


class CommandNotFound(KilnError):
    """`kiln run`'s command is nowhere to be run: 127, as a shell says it."""

    exit_code = 127


class HomeError(KilnError):
    exit_code = 2


class StoreError(KilnError):
    pass


class ImageNotFound(StoreError):
    pass


class CorruptObject(StoreError):
    exit_code = 3


class UnsafeImage(StoreError):
    exit_code = 3


class BuildError(KilnError):
    pass


class AgentError(KilnError):
    pass


class ProviderError(KilnError):
    pass


class InstanceNotFound(ProviderError):
    pass


class CertificateError(ProviderError):
    pass


class DeployError(KilnError):
    pass


class GateFailed(DeployError):
    exit_code = 4


class LockHeld(DeployError):
    exit_code = 5


class DeployInterrupted(DeployError):
    exit_code = 130


class UnverifiedImage(DeployError):
    pass


class PromotionRefused(DeployError):
    """Code not (or not now) healthy in the environment a promotion or require names."""

    exit_code = 7


class FleetNotFound(DeployError):
    pass


class AwsError(KilnError):
    pass


class CiError(KilnError):
    pass
