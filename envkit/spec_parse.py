"""Parsing the environment spec: a TOML table (``envkit.toml`` or ``[tool.envkit]``) into an
:class:`~envkit.spec_model.EnvSpec`, or a ``ConfigError`` naming the file and the dotted field.

What a dataset or setting name may be is given by the caller (``known_datasets``,
``extra_keys``): the parser knows neither the datasets nor the settings.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from envkit.durations import parse_duration
from envkit.errors import ConfigError
from envkit.outputs import CONTRACT_KEYS, REDIS_KEYS
from envkit.spec_model import (
    DEFAULT_GRACE,
    DatabaseSpec,
    Defaults,
    EnvSpec,
    HealthCheck,
    RedisSpec,
    ServiceSpec,
    output_key,
    placeholders,
    spec_error,
)

SECTIONS = ("defaults", "databases", "services", "redis")
PROVIDERS = ("local", "aws")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_DB_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RESERVED_SERVICE_NAMES = frozenset({"postgres", "database", "envkit"})
# Placeholders every service may use besides the outputs.
SERVICE_VARIABLES = ("HOST", "PORT", "PROJECT_DIR", "PYTHON", "SERVICE_NAME")
OUTPUT_KEYS = CONTRACT_KEYS
RUN_AS = ("server-user", "invoker")


class _Parser:
    """Parses one spec table, naming ``source`` and the dotted field in every error."""

    def __init__(
        self,
        source: Path | None,
        prefix: str,
        known_datasets: Collection[str] | None,
        extra_keys: Collection[str],
    ) -> None:
        self.source = source
        self.prefix = prefix
        self.known_datasets = known_datasets
        self.extra_keys = extra_keys

    def error(self, path: str, problem: str, *, hint: str | None = None) -> ConfigError:
        return spec_error(self.source, self.prefix + path, problem, hint=hint)

    def table(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(path, f"must be a table, got {type(value).__name__}.")
        return value

    def keys(self, data: Mapping[str, Any], path: str, allowed: Collection[str]) -> None:
        for key in data:
            if key not in allowed:
                where = f"{path}.{key}" if path else key
                raise self.error(
                    where,
                    "is not a known key.",
                    hint=f"Known keys{' of ' + path if path else ''}: "
                    f"{', '.join(sorted(allowed))}.",
                )

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(path, f"must be a non-empty string, got {value!r}.")
        return value

    def argv(self, value: Any, path: str) -> tuple[str, ...]:
        if isinstance(value, str):
            try:
                parts = shlex.split(value)
            except ValueError as exc:
                raise self.error(path, f"cannot be split into arguments: {exc}.") from None
        elif isinstance(value, list) and all(isinstance(p, str) for p in value):
            parts = list(value)
        else:
            raise self.error(path, f"must be a string or a list of strings, got {value!r}.")
        if not parts or not parts[0]:
            raise self.error(path, "is empty.")
        return tuple(parts)

    # -- sections -----------------------------------------------------------------------------
    def spec(self, data: Mapping[str, Any]) -> EnvSpec:
        self.keys(data, "", (*SECTIONS, *self.extra_keys))
        defaults = self.defaults(self.table(data.get("defaults", {}), "defaults"))
        databases = self.databases(self.table(data.get("databases", {}), "databases"))
        redis = None
        if "redis" in data:
            redis = self.redis(self.table(data["redis"], "redis"))
        services = self.services(
            self.table(data.get("services", {}), "services"), databases, redis is not None
        )
        return EnvSpec(self.source, databases, services, defaults, redis)

    def redis(self, data: Mapping[str, Any]) -> RedisSpec:
        self.keys(data, "redis", ("version", "maxmemory", "persistence"))
        version = data.get("version")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, str | int):
                raise self.error(
                    "redis.version", f"must be a major version like 7, got {version!r}."
                )
            version = str(version)
            if not re.fullmatch(r"\d+(\.\d+)?", version):
                raise self.error(
                    "redis.version", f"must be a major version like 7, got {version!r}."
                )
        maxmemory = RedisSpec.maxmemory
        if "maxmemory" in data:
            raw = data["maxmemory"]
            text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
            if not isinstance(text, str) or not re.fullmatch(r"\d+(?:[kmg]b?)?", text.lower()):
                raise self.error(
                    "redis.maxmemory", f"must be a size like 64mb or 1gb, got {raw!r}."
                )
            maxmemory = text.lower()
        persistence = data.get("persistence", False)
        if not isinstance(persistence, bool):
            raise self.error("redis.persistence", f"must be true or false, got {persistence!r}.")
        return RedisSpec(version, maxmemory, persistence)

    def defaults(self, data: Mapping[str, Any]) -> Defaults:
        self.keys(
            data,
            "defaults",
            ("provider", "ttl", "seeds_dir", "postgres_version", "database_server"),
        )
        provider = data.get("provider")
        if provider is not None and provider not in PROVIDERS:
            raise self.error(
                "defaults.provider", f"must be one of {', '.join(PROVIDERS)}, got {provider!r}."
            )
        ttl = None
        if "ttl" in data:
            text = self.string(data["ttl"], "defaults.ttl")
            try:
                ttl = parse_duration(text, what="TTL")
            except ConfigError as exc:
                raise self.error("defaults.ttl", f"is invalid: {exc.message}") from None
        seeds_dir = None
        if "seeds_dir" in data:
            seeds_dir = Path(self.string(data["seeds_dir"], "defaults.seeds_dir"))
            if not seeds_dir.is_absolute() and self.source is not None:
                seeds_dir = self.source.parent / seeds_dir
        postgres = data.get("postgres_version")
        if postgres is not None:
            if isinstance(postgres, bool) or not isinstance(postgres, str | int | float):
                raise self.error(
                    "defaults.postgres_version", f"must be a version like 18, got {postgres!r}."
                )
            postgres = str(postgres)
            if not re.fullmatch(r"\d+(\.\d+)?", postgres):
                raise self.error(
                    "defaults.postgres_version", f"must be a version like 18, got {postgres!r}."
                )
        server = None
        if "database_server" in data:
            server = self.string(data["database_server"], "defaults.database_server")
            if re.match(r"^[a-z]+://[^/@]*:[^/@]*@", server):
                raise self.error(
                    "defaults.database_server",
                    "holds a password; a spec file is shared (and committed): give the DSN "
                    "without it and the password through PGPASSWORD or ~/.pgpass.",
                )
        return Defaults(provider, ttl, seeds_dir, postgres, server)

    def databases(self, data: Mapping[str, Any]) -> tuple[DatabaseSpec, ...]:
        if not data:
            return (DatabaseSpec("main"),)
        found = []
        for name, raw in data.items():
            path = f"databases.{name}"
            if not _DB_NAME.fullmatch(name):
                raise self.error(
                    path, "has an invalid name: use [a-z][a-z0-9_]*, at most 40 characters."
                )
            table = self.table(raw, path)
            self.keys(table, path, ("dataset", "settings"))
            dataset = None
            if "dataset" in table:
                dataset = self.string(table["dataset"], f"{path}.dataset")
                if self.known_datasets is not None and dataset not in self.known_datasets:
                    known = ", ".join(sorted(self.known_datasets)) or "none"
                    raise self.error(
                        f"{path}.dataset",
                        f"names the unknown dataset {dataset!r}.",
                        hint=f"Known datasets: {known}.",
                    )
            settings: dict[str, str] = {}
            for key, value in self.table(table.get("settings", {}), f"{path}.settings").items():
                if not re.fullmatch(r"[a-z_][a-z0-9_.]*", key):
                    raise self.error(f"{path}.settings.{key}", "is not a PostgreSQL setting name.")
                if isinstance(value, bool):
                    settings[key] = "on" if value else "off"
                elif isinstance(value, str | int | float):
                    settings[key] = str(value)
                else:
                    raise self.error(
                        f"{path}.settings.{key}", f"must be a string or number, got {value!r}."
                    )
            found.append(DatabaseSpec(name, dataset, settings))
        return tuple(found)

    def services(
        self, data: Mapping[str, Any], databases: Sequence[DatabaseSpec], redis: bool = False
    ) -> tuple[ServiceSpec, ...]:
        parsed: dict[str, ServiceSpec] = {}
        for name, raw in data.items():
            parsed[name] = self.service(name, self.table(raw, f"services.{name}"))
        keys = {output_key(n) for n in parsed}
        if len(keys) != len(parsed):
            raise self.error("services", "has two names that differ only in '-' and '_'.")
        db_names = {db.name for db in databases}
        known = (
            set(OUTPUT_KEYS)
            | (set(REDIS_KEYS) if redis else set())
            | set(SERVICE_VARIABLES)
            | {s.url_output for s in parsed.values()}
            | {db.url_output for db in databases[1:]}
        )
        for service in parsed.values():
            for dep in service.depends_on:
                if dep not in parsed and dep not in db_names:
                    raise self.error(
                        f"services.{service.name}.depends_on",
                        f"names {dep!r}, which is neither a service nor a database.",
                        hint=f"Services: {', '.join(sorted(parsed)) or 'none'}; databases: "
                        f"{', '.join(sorted(db_names))}.",
                    )
                if dep == service.name:
                    raise self.error(
                        f"services.{service.name}.depends_on", "names the service itself."
                    )
            texts = [(f"services.{service.name}.env.{k}", v) for k, v in service.env.items()]
            texts += [(f"services.{service.name}.command", a) for a in service.command or ()]
            texts += [
                (f"services.{service.name}.health.command", a) for a in service.health.command
            ]
            for path, text in texts:
                for name in placeholders(text):
                    if name not in known:
                        raise self.error(
                            path,
                            f"uses the unknown placeholder {{{name}}}.",
                            hint="Placeholders: the outputs (DATABASE_URL, SERVICE_<NAME>_URL, "
                            "…) and HOST, PORT, PROJECT_DIR, PYTHON, SERVICE_NAME; write {{ and "
                            "}} for literal braces.",
                        )
        return tuple(parsed[n] for n in self.order(parsed))

    def service(self, name: str, data: Mapping[str, Any]) -> ServiceSpec:
        path = f"services.{name}"
        if not _NAME.fullmatch(name):
            raise self.error(path, "has an invalid name: use [a-z][a-z0-9_-]*, at most 40.")
        if name in RESERVED_SERVICE_NAMES:
            raise self.error(path, f"uses the reserved name {name!r}; choose another.")
        self.keys(
            data,
            path,
            ("command", "image", "port", "env", "health", "depends_on", "stop_grace", "run_as"),
        )
        command = self.argv(data["command"], f"{path}.command") if "command" in data else None
        image = self.string(data["image"], f"{path}.image") if "image" in data else None
        if command is None and image is None:
            raise self.error(
                f"{path}.command",
                "is missing: a service needs a command (local provider) and/or an image (aws).",
                hint=f'Add for example: command = ["python3", "app.py"] under [{path}].',
            )
        port = self.port(data.get("port"), f"{path}.port")
        env: dict[str, str] = {}
        for key, value in self.table(data.get("env", {}), f"{path}.env").items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise self.error(f"{path}.env.{key}", "is not a valid variable name.")
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise self.error(f"{path}.env.{key}", f"must be a string or number, got {value!r}.")
            env[key] = str(value)
        health = self.health(data.get("health"), f"{path}.health", port)
        depends = data.get("depends_on", [])
        if isinstance(depends, str):
            depends = [depends]
        if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
            raise self.error(f"{path}.depends_on", f"must be a list of names, got {depends!r}.")
        grace = data.get("stop_grace", DEFAULT_GRACE)
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= 300:
            raise self.error(f"{path}.stop_grace", f"must be 0-300 seconds, got {grace!r}.")
        run_as = data.get("run_as", "invoker")
        if run_as not in RUN_AS:
            raise self.error(
                f"{path}.run_as", f"must be one of {', '.join(RUN_AS)}, got {run_as!r}."
            )
        return ServiceSpec(
            name,
            command,
            image,
            port,
            env,
            health,
            tuple(dict.fromkeys(depends)),
            float(grace),
            run_as,
        )

    def port(self, value: Any, path: str) -> int | None:
        if value is None:
            return None
        if value == "auto":
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.error(path, f'must be an integer 1-65535 or "auto", got {value!r}.')
        return value

    def health(self, value: Any, path: str, port: int | None) -> HealthCheck:
        if value is None:
            return HealthCheck("tcp") if port is not None else HealthCheck("running")
        if value in ("none", "running"):
            return HealthCheck("running")
        if value == "tcp":
            value = {"tcp": True}
        table = self.table(value, path)
        self.keys(table, path, ("http", "tcp", "command"))
        if len(table) != 1:
            raise self.error(path, "must name exactly one of http, tcp, command.")
        if "http" in table:
            target = self.string(table["http"], f"{path}.http")
            if not target.startswith("/"):
                raise self.error(
                    f"{path}.http", f"must be a path starting with '/', got {target!r}."
                )
            if port is None:
                raise self.error(f"{path}.http", "needs the service to have a port.")
            return HealthCheck("http", path=target)
        if "tcp" in table:
            if table["tcp"] is not True:
                raise self.error(f"{path}.tcp", "must be true.")
            if port is None:
                raise self.error(f"{path}.tcp", "needs the service to have a port.")
            return HealthCheck("tcp")
        return HealthCheck("command", command=self.argv(table["command"], f"{path}.command"))

    def order(self, services: Mapping[str, ServiceSpec]) -> list[str]:
        """Services in dependency order (declaration order among equals); raise on a cycle."""
        done: list[str] = []
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = [*trail[trail.index(name) :], name]
                raise self.error(
                    f"services.{name}.depends_on",
                    f"forms a dependency cycle: {' -> '.join(cycle)}.",
                    hint="Remove one of these dependencies.",
                )
            state[name] = 1
            for dep in services[name].depends_on:
                if dep in services:
                    visit(dep, [*trail, name])
            state[name] = 2
            done.append(name)

        for name in services:
            visit(name, [])
        return done


def parse_spec(
    data: Mapping[str, Any],
    source: Path | None = None,
    *,
    prefix: str = "",
    known_datasets: Collection[str] | None = None,
    extra_keys: Collection[str] = (),
) -> EnvSpec:
    """Validate a spec table (``envkit.toml`` or ``[tool.envkit]``) into an :class:`EnvSpec`.

    ``prefix`` is prepended to field names in errors (``tool.envkit.``); ``extra_keys`` are
    top-level keys allowed besides the spec sections (the settings, in a pyproject);
    ``known_datasets``, when given, is what ``databases.*.dataset`` may name.
    """
    return _Parser(source, prefix, known_datasets, extra_keys).spec(data)


def parse_spec_text(
    text: str, source: Path | None = None, *, known_datasets: Collection[str] | None = None
) -> EnvSpec:
    """Parse the text of an ``envkit.toml``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{source or 'the environment spec'}: not valid TOML: {exc}",
            hint="Fix the syntax of the file.",
        ) from None
    return parse_spec(data, source, known_datasets=known_datasets)
