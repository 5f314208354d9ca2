"""envkit: ephemeral test environments keyed by CI pipeline ID.

``import envkit`` is cheap: it loads no Pulumi, boto3, Faker or psycopg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from envkit.errors import (
    ConfigError,
    EnvkitError,
    HealthCheckTimeoutError,
    LockedError,
    PrerequisiteError,
    ProvisionError,
    SeedError,
    TeardownError,
)

if TYPE_CHECKING:
    from envkit.api import Environment, attach, environment

__version__ = "0.1.0"

# The library API, loaded on first use: envkit.api pulls in the lifecycle and the state store,
# which the CLI's fast paths and the pytest plugin (loaded in every pytest run) do not need.
_LAZY = {"Environment", "attach", "environment"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from envkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'envkit' has no attribute {name!r}")

__all__ = [
    "ConfigError",
    "Environment",
    "EnvkitError",
    "HealthCheckTimeoutError",
    "LockedError",
    "PrerequisiteError",
    "ProvisionError",
    "SeedError",
    "TeardownError",
    "__version__",
    "attach",
    "environment",
]
