"""Settings: a frozen dataclass, resolved explicit > ``ENVKIT_*`` > ``[tool.envkit]`` > default.

Nothing is read at import time: :meth:`Settings.resolve` reads the environment and the project file
when it is called, so tests (and monkeypatching) see what they set. "Explicit" means library
arguments and CLI options, which callers merge before calling; ``None`` means "not given", so an
explicit ``0`` or ``""`` still wins.
"""

from __future__ import annotations

import getpass
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from envkit.durations import parse_duration
from envkit.errors import ConfigError

PROVIDERS = ("local", "aws")


def default_home(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/envkit``, else ``~/.local/state/envkit``."""
    xdg = env.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".local" / "state"
    return base / "envkit"


def default_owner(env: Mapping[str, str]) -> str:
    """Who owns new environments: the CI job when there is one, else user@host."""
    if env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID"):
        return f"github:{env['GITHUB_REPOSITORY']}/{env['GITHUB_RUN_ID']}"
    if env.get("CI_PROJECT_PATH") and env.get("CI_JOB_ID"):
        return f"gitlab:{env['CI_PROJECT_PATH']}/{env['CI_JOB_ID']}"
    if env.get("BUILD_TAG"):
        return f"jenkins:{env['BUILD_TAG']}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _provider(value: str) -> str:
    if value not in PROVIDERS:
        raise ConfigError(
            f"Unknown provider {value!r}.", hint=f"Choose one of: {', '.join(PROVIDERS)}."
        )
    return value


def _path(value: str) -> Path:
    if not value:
        raise ConfigError("An empty path was given where a directory is needed.")
    return Path(value).expanduser()


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        return parse_duration(value, what="timeout").total_seconds()
    if seconds < 0:
        raise ConfigError(f"A timeout of {value!r} seconds is negative.")
    return seconds


def _spares(value: str) -> int:
    problem = (
        "The spare pool size (ENVKIT_SPARES, spares) must be a whole number from 0 (no pool) "
        f"to 64, not {value!r}."
    )
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(problem) from None
    if not 0 <= count <= 64:
        raise ConfigError(problem)
    return count


@dataclass(frozen=True)
class _Field:
    name: str
    parse: Callable[[str], Any]
    env: str


# The one table of settings: field name, parser for text values, environment variable.
_TABLE: tuple[_Field, ...] = (
    _Field("home", _path, "ENVKIT_HOME"),
    _Field("provider", _provider, "ENVKIT_PROVIDER"),
    _Field("ttl", lambda v: parse_duration(v, what="TTL"), "ENVKIT_TTL"),
    _Field("preserve_ttl", lambda v: parse_duration(v, what="TTL"), "ENVKIT_PRESERVE_TTL"),
    _Field("template_ttl", lambda v: parse_duration(v, what="TTL"), "ENVKIT_TEMPLATE_TTL"),
    _Field("spares", _spares, "ENVKIT_SPARES"),
    _Field("dataset", str, "ENVKIT_DATASET"),
    _Field("seeds_dir", _path, "ENVKIT_SEEDS_DIR"),
    _Field("seed_scale", float, "ENVKIT_SEED_SCALE"),
    _Field("stacks_dir", _path, "ENVKIT_STACKS_DIR"),
    _Field("pg_bindir", _path, "ENVKIT_PG_BINDIR"),
    _Field("data_dir", _path, "ENVKIT_DATA_DIR"),
    _Field("pg_user", str, "ENVKIT_PG_USER"),
    _Field("owner", str, "ENVKIT_OWNER"),
    _Field("lock_timeout", _seconds, "ENVKIT_LOCK_TIMEOUT"),
    _Field("health_timeout", _seconds, "ENVKIT_HEALTH_TIMEOUT"),
    _Field("pulumi_backend", str, "ENVKIT_PULUMI_BACKEND"),
    _Field("aws_region", str, "ENVKIT_AWS_REGION"),
    _Field("pulumi_secrets_provider", str, "ENVKIT_PULUMI_SECRETS_PROVIDER"),
    _Field("pulumi_base_stack", str, "ENVKIT_PULUMI_BASE_STACK"),
    _Field("spec_file", _path, "ENVKIT_SPEC"),
)
_BY_NAME = {f.name: f for f in _TABLE}


@dataclass(frozen=True)
class Settings:
    """Everything envkit's behaviour depends on, resolved once per command or library call."""

    home: Path
    provider: str = "local"
    ttl: timedelta = timedelta(hours=4)
    preserve_ttl: timedelta = timedelta(hours=24)
    template_ttl: timedelta = timedelta(days=7)  # reap removes templates unused this long
    spares: int = 2  # ready copies per template at rest (local provider); 0: no pool
    dataset: str | None = None
    seeds_dir: Path | None = None
    seed_scale: float = 1.0
    stacks_dir: Path | None = None
    pg_bindir: Path | None = None
    data_dir: Path | None = None
    pg_user: str | None = None
    owner: str = ""
    lock_timeout: float = 300.0
    health_timeout: float = 120.0
    pulumi_backend: str | None = None
    aws_region: str | None = None
    pulumi_secrets_provider: str | None = None  # e.g. awskms://alias/envkit; else passphrase
    pulumi_base_stack: str | None = None  # shared-network mode: the long-lived base stack
    spec_file: Path | None = None  # the environment spec; else envkit.toml found from the cwd
    project_file: Path | None = None

    @classmethod
    def resolve(
        cls,
        explicit: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Settings:
        """Build settings from explicit values, the environment and the project's pyproject."""
        environ = os.environ if env is None else env
        project_file, project = _project_table(cwd or Path.cwd())
        values: dict[str, Any] = {}
        for spec in _TABLE:
            given = (explicit or {}).get(spec.name)
            if given is not None:
                values[spec.name] = spec.parse(given) if isinstance(given, str) else given
            elif environ.get(spec.env):
                values[spec.name] = spec.parse(environ[spec.env])
            elif spec.name in project:
                raw = project[spec.name]
                values[spec.name] = spec.parse(str(raw))
        unknown = set(explicit or {}) - set(_BY_NAME)
        if unknown:
            raise ConfigError(f"Unknown setting(s): {', '.join(sorted(unknown))}.")
        values.setdefault("home", default_home(environ))
        values.setdefault("owner", default_owner(environ))
        from envkit.spec import spec_defaults  # [defaults] of envkit.toml: below all of the above

        for key, value in spec_defaults(values.get("spec_file"), cwd or Path.cwd()).items():
            values.setdefault(key, value)
        if project_file is not None:
            values["project_file"] = project_file
            for key in ("seeds_dir", "stacks_dir"):
                # Relative paths in pyproject are relative to the project, not to the cwd.
                path = values.get(key)
                if key in project and isinstance(path, Path) and not path.is_absolute():
                    values[key] = project_file.parent / path
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields replaced."""
        return replace(self, **changes)


def _project_table(start: Path) -> tuple[Path | None, dict[str, Any]]:
    """The scalar settings of ``[tool.envkit]`` in the nearest pyproject.toml above ``start``."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"Cannot read {candidate}: {exc}") from exc
            table = data.get("tool", {}).get("envkit", {})
            if not isinstance(table, dict):
                raise ConfigError(f"[tool.envkit] in {candidate} must be a table.")
            # Nested tables (services, databases) belong to the environment spec, not settings.
            scalars = {k: v for k, v in table.items() if k in _BY_NAME}
            return candidate, scalars
    return None, {}


def setting_names() -> tuple[str, ...]:
    """Names of every setting, in table order."""
    return tuple(f.name for f in fields(Settings))
