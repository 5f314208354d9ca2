"""Settings: a frozen dataclass, resolved explicit > ``ENVKIT_*`` > ``[tool.envkit]`` > default.

Nothing is read at import time: :meth:`Settings.resolve` reads the environment and the project file
when it is called, so tests (and monkeypatching) see what they set. "Explicit" means library
arguments and CLI options, which callers merge before calling; ``None`` means "not given", so an
explicit ``0`` or ``""`` still wins.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from envkit.durations import parse_duration
from envkit.errors import ConfigError
from envkit.spec_files import spec_defaults

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


def _postgres_version(value: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?", value.strip()):
        raise ConfigError(
            f"ENVKIT_POSTGRES_VERSION (--postgres) must be a PostgreSQL version such as 15, 18 "
            f"or 18.6, not {value!r}."
        )
    return value.strip()


def _flag(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"Expected true or false (1/0, yes/no, on/off), not {value!r}.")


def _path(value: str) -> Path:
    if not value:
        raise ConfigError("An empty path was given where a directory is needed.")
    return Path(value).expanduser()


# Limits of the numeric settings. Every one is finite and in a named range; a value outside
# it is a ConfigError naming the variable, the option and the range (exit 2, nothing created).
MAX_SCALE = 1000.0
"""The largest ``--scale``: the shipped dataset is 10,000 rows at 1, so 1000 is 10 million rows,
about a minute of loading and gigabytes of data: beyond any test fixture (and ``/dev/shm``).
Above it a typo (``1e9``) would run for hours."""
MAX_TIMEOUT = 24 * 3600.0
"""The longest lock or health timeout, in seconds: a CI job that waits a day is stuck."""
MAX_SPARES = 64
MAX_TTL = timedelta(days=366)  # parse_duration's limit too


@dataclass(frozen=True)
class _Range:
    """The allowed values of a numeric setting."""

    low: float
    high: float
    low_included: bool = True
    integer: bool = False
    unit: str = ""
    note: str = ""

    def describe(self) -> str:
        kind = "a whole number" if self.integer else "a number"
        unit = f" {self.unit}" if self.unit else ""
        note = f" ({self.note})" if self.note else ""
        if self.low_included:
            return f"{kind} from {self.low:g} to {self.high:g}{unit}{note}"
        return f"{kind} greater than {self.low:g} and at most {self.high:g}{unit}{note}"


_RANGES: dict[str, _Range] = {
    "seed_scale": _Range(
        0.0, MAX_SCALE, low_included=False, note="it multiplies the dataset's row counts"
    ),
    "lock_timeout": _Range(0.0, MAX_TIMEOUT, unit="seconds", note="0: do not wait"),
    "health_timeout": _Range(0.0, MAX_TIMEOUT, unit="seconds", note="0: check once"),
    "spares": _Range(0, MAX_SPARES, integer=True, note="0: no pool"),
}
_ENV_VARS = {
    "seed_scale": "ENVKIT_SEED_SCALE",
    "lock_timeout": "ENVKIT_LOCK_TIMEOUT",
    "health_timeout": "ENVKIT_HEALTH_TIMEOUT",
    "spares": "ENVKIT_SPARES",
    "ttl": "ENVKIT_TTL",
    "preserve_ttl": "ENVKIT_PRESERVE_TTL",
    "template_ttl": "ENVKIT_TEMPLATE_TTL",
}
_OPTIONS = {"seed_scale": "--scale", "health_timeout": "--timeout", "ttl": "--ttl"}


def _label(name: str) -> str:
    """How a message names a setting: its variable and its CLI option (or setting name)."""
    return f"{_ENV_VARS[name]} ({_OPTIONS.get(name) or name})"


def _check_number(name: str, value: Any, given: str | None = None) -> Any:
    """``value`` when it is a finite number in the range of setting ``name``, else ConfigError
    (naming ``given``, the text it was parsed from, when there was one)."""
    limits = _RANGES[name]
    shown = given if given is not None else repr(value)
    problem = f"{_label(name)} must be {limits.describe()}, not {shown}."
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(problem)
    if limits.integer:
        if value != int(value):
            raise ConfigError(problem)
        value = int(value)
    above_low = value >= limits.low if limits.low_included else value > limits.low
    if not (above_low and value <= limits.high):
        raise ConfigError(problem)
    return value


def _parse_number(name: str, text: str) -> Any:
    """A numeric setting given as text (environment, pyproject, the text of an option)."""
    limits = _RANGES[name]
    try:
        value: float = int(text) if limits.integer else float(text)
    except ValueError:
        if limits.unit != "seconds":
            problem = f"{_label(name)} must be {limits.describe()}, not {text!r}."
            raise ConfigError(problem) from None
        try:  # a duration such as 30s or 2m
            value = parse_duration(text, what="timeout").total_seconds()
        except ConfigError:
            raise ConfigError(
                f"{_label(name)} must be {limits.describe()}, or a duration such as 30s or 2m, "
                f"not {text!r}."
            ) from None
    return _check_number(name, value, repr(text))


def _number(name: str) -> Callable[[str], Any]:
    return lambda text: _parse_number(name, text)


def _check_ttl(name: str, value: Any) -> None:
    if not isinstance(value, timedelta) or not timedelta(0) < value <= MAX_TTL:
        raise ConfigError(
            f"{_label(name)} must be a duration longer than zero and at most 366 days, "
            f"not {value!r}."
        )


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
    _Field("spares", _number("spares"), "ENVKIT_SPARES"),
    _Field("dataset", str, "ENVKIT_DATASET"),
    _Field("seeds_dir", _path, "ENVKIT_SEEDS_DIR"),
    _Field("seed_scale", _number("seed_scale"), "ENVKIT_SEED_SCALE"),
    _Field("stacks_dir", _path, "ENVKIT_STACKS_DIR"),
    _Field("pg_bindir", _path, "ENVKIT_PG_BINDIR"),
    _Field("postgres_version", _postgres_version, "ENVKIT_POSTGRES_VERSION"),
    _Field("data_dir", _path, "ENVKIT_DATA_DIR"),
    _Field("pg_user", str, "ENVKIT_PG_USER"),
    _Field("owner", str, "ENVKIT_OWNER"),
    _Field("lock_timeout", _number("lock_timeout"), "ENVKIT_LOCK_TIMEOUT"),
    _Field("health_timeout", _number("health_timeout"), "ENVKIT_HEALTH_TIMEOUT"),
    _Field("pulumi_backend", str, "ENVKIT_PULUMI_BACKEND"),
    _Field("aws_region", str, "ENVKIT_AWS_REGION"),
    _Field("pulumi_secrets_provider", str, "ENVKIT_PULUMI_SECRETS_PROVIDER"),
    _Field("pulumi_base_stack", str, "ENVKIT_PULUMI_BASE_STACK"),
    _Field("spec_file", _path, "ENVKIT_SPEC"),
    _Field("redis", _flag, "ENVKIT_REDIS"),
    _Field("database_server", str, "ENVKIT_DATABASE_SERVER"),
    # The aws provider's network and database options, kept as given: that provider checks them
    # (envkit.providers.aws.options), naming the variable when one is wrong.
    *(
        _Field(f"aws_{name}", str, f"ENVKIT_AWS_{name.upper()}")
        for name in (
            "egress",
            "public",
            "ci_cidr",
            "azs",
            "engine_version",
            "instance_class",
            "spot",
            "vpc_cidr",
            "redis_engine",
            "redis_node_type",
            "shared_database",
            "shared_instance_class",
        )
    ),
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
    postgres_version: str | None = None  # picks among the installations found (envkit.pgbin)
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
    aws_egress: str | None = None  # public | nat | endpoints
    aws_public: str | None = None
    aws_ci_cidr: str | None = None
    aws_azs: str | None = None
    aws_engine_version: str | None = None
    aws_instance_class: str | None = None
    aws_spot: str | None = None
    aws_vpc_cidr: str | None = None
    aws_redis_engine: str | None = None
    aws_redis_node_type: str | None = None
    aws_shared_database: str | None = None
    aws_shared_instance_class: str | None = None
    project_file: Path | None = None
    redis: bool = False  # a Redis server with the spec's defaults when the spec has no [redis]
    # The admin DSN of a shared PostgreSQL server (a secret: kept out of repr and output).
    database_server: str | None = field(default=None, repr=False)

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
        # [defaults] of envkit.toml: below all of the above.
        defaults = spec_defaults(values.get("spec_file"), cwd or Path.cwd(), setting_names())
        for key, value in defaults.items():
            values.setdefault(key, value)
        if project_file is not None:
            values["project_file"] = project_file
            for key in ("seeds_dir", "stacks_dir"):
                # Relative paths in pyproject are relative to the project, not to the cwd.
                path = values.get(key)
                if key in project and isinstance(path, Path) and not path.is_absolute():
                    values[key] = project_file.parent / path
        return cls(**values)

    def __post_init__(self) -> None:
        # However a Settings was made (resolve, a library call, with_), its numbers are finite
        # and in range: a NaN timeout or an infinite scale never reaches the code using them.
        for name in _RANGES:
            object.__setattr__(self, name, _check_number(name, getattr(self, name)))
        for name in ("ttl", "preserve_ttl", "template_ttl"):
            _check_ttl(name, getattr(self, name))
        if self.postgres_version is not None:  # a library caller may pass 15, not "15"
            version = _postgres_version(str(self.postgres_version))
            object.__setattr__(self, "postgres_version", version)

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
