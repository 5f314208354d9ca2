"""The one exception hierarchy of envkit.

Every expected failure is an :class:`EnvkitError`. Messages say what was tried, what failed and
what to do next, and never contain a secret. ``exit_code`` is what the CLI exits with: 2 for bad
input or a missing prerequisite (nothing was created), 1 for an operation that failed.
"""

from __future__ import annotations


class EnvkitError(Exception):
    """Root of every error envkit raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class ConfigError(EnvkitError):
    """Bad input: an invalid pipeline ID, option, duration or spec (exit 2)."""

    exit_code = 2


class PrerequisiteError(EnvkitError):
    """A missing prerequisite: PostgreSQL binaries, the Pulumi CLI, credentials (exit 2)."""

    exit_code = 2


class ProvisionError(EnvkitError):
    """Creating or repairing a component failed (exit 1)."""


class HealthCheckTimeoutError(EnvkitError):
    """Components did not become healthy before the deadline (exit 1)."""


class SeedError(EnvkitError):
    """Loading a dataset failed (exit 1)."""


class TeardownError(EnvkitError):
    """Destroying a component failed (exit 1)."""


class StateError(EnvkitError):
    """Reading or writing envkit's state under ENVKIT_HOME failed mid-way (exit 1); a home that
    is unusable from the start is a ``ConfigError`` (exit 2, nothing created)."""


class LockedError(EnvkitError):
    """Another envkit process holds the pipeline's lock for longer than we may wait (exit 1)."""
