"""envkit: ephemeral test environments keyed by CI pipeline ID.

``import envkit`` is cheap: it loads no Pulumi, boto3, Faker or psycopg.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EnvkitError",
    "HealthCheckTimeoutError",
    "LockedError",
    "PrerequisiteError",
    "ProvisionError",
    "SeedError",
    "TeardownError",
    "__version__",
]
