"""Providers: where an environment's components live (see :mod:`envkit.providers.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from envkit.errors import ConfigError
from envkit.providers.base import Provider, ProvisionRequest, RetainsExpiry

if TYPE_CHECKING:
    from envkit.settings import Settings

__all__ = ["Provider", "ProvisionRequest", "RetainsExpiry", "get_provider"]


def get_provider(name: str, settings: Settings) -> Provider:
    """The provider called ``name`` (imported lazily: the aws one pulls in Pulumi and boto3)."""
    if name == "local":
        from envkit.providers.local.provider import LocalProvider

        return LocalProvider(settings)
    if name == "aws":
        from envkit.providers.aws.provider import AwsProvider

        return AwsProvider(settings)
    raise ConfigError(f"Unknown provider {name!r}.", hint="Choose 'local' or 'aws'.")
