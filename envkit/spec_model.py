"""The environment spec's model: frozen dataclasses of databases and services, and the
``{PLACEHOLDER}`` templating their commands and env use.

Pure: nothing here reads files, imports a provider or starts anything. Parsing is
:mod:`envkit.spec_parse`; finding and loading the spec file is :mod:`envkit.spec`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from envkit.errors import ConfigError

DEFAULT_GRACE = 5.0
# `{NAME}` placeholders (upper case only, so JSON such as {"a": 1} stays literal); `{{`/`}}` escape.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Z][A-Z0-9_]*)\}")


@dataclass(frozen=True)
class HealthCheck:
    """How to tell a service is ready: ``http`` (GET path → 2xx/3xx), ``tcp``, ``command``
    (exit 0), or ``running`` (still alive after a short settle time)."""

    kind: str
    path: str = "/health"
    command: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "command": list(self.command)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthCheck:
        return cls(str(data["kind"]), str(data.get("path", "/health")), tuple(data["command"]))


@dataclass(frozen=True)
class ServiceSpec:
    """One service under test; ``port`` ``None`` means none, ``0`` means "auto"."""

    name: str
    command: tuple[str, ...] | None = None
    image: str | None = None
    port: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    health: HealthCheck = HealthCheck("running")
    depends_on: tuple[str, ...] = ()
    stop_grace: float = DEFAULT_GRACE
    run_as: str = "invoker"

    @property
    def key(self) -> str:
        """The name as it appears in output keys: ``SERVICE_<KEY>_URL``."""
        return output_key(self.name)

    @property
    def url_output(self) -> str:
        return f"SERVICE_{self.key}_URL"


@dataclass(frozen=True)
class DatabaseSpec:
    """One database; the first of a spec is the default one (``DATABASE_URL``)."""

    name: str
    dataset: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def url_output(self) -> str:
        return f"DATABASE_{output_key(self.name)}_URL"


@dataclass(frozen=True)
class RedisSpec:
    """A Redis server for the environment (``[redis]``; ``envkit up --redis`` asks for the
    defaults): ``REDIS_URL``, ``REDIS_HOST`` and ``REDIS_PORT`` in the outputs."""

    version: str | None = None  # the major version wanted ("7"); None: what is installed
    maxmemory: str = "64mb"
    persistence: bool = False  # off: no RDB/AOF file is ever written


@dataclass(frozen=True)
class Defaults:
    """Defaults of the spec for settings not given elsewhere."""

    provider: str | None = None
    ttl: timedelta | None = None
    seeds_dir: Path | None = None  # relative to the spec's folder
    postgres_version: str | None = None  # the PostgreSQL major version to run (local)
    database_server: str | None = None  # a shared server's admin DSN, without its password


@dataclass(frozen=True)
class EnvSpec:
    """The whole environment; ``services`` are in dependency order (dependencies first)."""

    source: Path | None
    databases: tuple[DatabaseSpec, ...] = (DatabaseSpec("main"),)
    services: tuple[ServiceSpec, ...] = ()
    defaults: Defaults = Defaults()
    redis: RedisSpec | None = None

    @property
    def project_dir(self) -> Path:
        return self.source.parent if self.source is not None else Path.cwd()

    @property
    def dataset(self) -> str | None:
        """The dataset of the default database."""
        return self.databases[0].dataset if self.databases else None

    def service(self, name: str) -> ServiceSpec:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


def spec_error(
    source: Path | None, field_path: str, problem: str, *, hint: str | None = None
) -> ConfigError:
    """A ``ConfigError`` naming the spec file (or "the environment spec") and the field."""
    where = str(source) if source is not None else "the environment spec"
    return ConfigError(
        f"{where}: {field_path} {problem}",
        hint=hint or "Fix the spec (see 'Services under test' in the README).",
    )


def render_known(template: str, values: Mapping[str, str]) -> str:
    """Like :func:`render`, but leaves placeholders missing from ``values`` (and escapes) as
    they are, for a later :func:`render` with the rest."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        return values[name] if name and name in values else match.group(0)

    return _PLACEHOLDER.sub(substitute, template)


def output_key(name: str) -> str:
    """``my-api`` → ``MY_API`` (for output keys)."""
    return name.upper().replace("-", "_")


def placeholders(template: str) -> list[str]:
    """The ``{NAME}`` placeholders used in ``template``."""
    return [m.group(1) for m in _PLACEHOLDER.finditer(template) if m.group(1)]


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace ``{NAME}`` by ``values[NAME]``; ``{{``/``}}`` give literal braces.

    Raises ``KeyError`` naming an unknown placeholder (the spec parser checks them beforehand).
    """

    def substitute(match: re.Match[str]) -> str:
        text = match.group(0)
        if text in ("{{", "}}"):
            return text[0]
        return values[match.group(1)]

    return _PLACEHOLDER.sub(substitute, template)
