"""The environment spec: which databases and services an environment holds.

Where it comes from (first match wins):

1. the file named by ``ENVKIT_SPEC`` (or the ``spec_file`` setting); it must exist;
2. walking up from the current directory, the first folder holding ``envkit.toml`` or a
   ``pyproject.toml`` whose ``[tool.envkit]`` has spec tables. In one folder ``envkit.toml`` wins
   over ``pyproject.toml``: the spec tables of the pyproject are then ignored (with a warning),
   its scalar ``[tool.envkit]`` keys stay settings.

Without a spec the environment is one database, as it always was. Shape (``envkit.toml``)::

    [defaults]
    provider = "local"      # below ENVKIT_* and [tool.envkit] settings, above built-in defaults
    ttl = "2h"

    [databases.main]        # the first database is the default one: DATABASE_URL
    dataset = "default"
    settings = { work_mem = "8MB" }   # per-database settings (ALTER DATABASE ... SET)

    [services.api]
    command = ["python3", "{PROJECT_DIR}/api.py"]   # or one string, split like a shell
    image = "ghcr.io/acme/api:1.2"                   # what the aws provider runs
    port = 8080                                      # or "auto"; omit for a worker
    env = { API_DATABASE = "{DATABASE_URL}" }
    health = { http = "/health" }    # or { tcp = true } or { command = [...] } or "none"
    depends_on = ["main"]

Everything here is pure: parsing returns frozen dataclasses or raises ``ConfigError`` naming the
file and the field; nothing starts or touches the network.
"""

from __future__ import annotations

import logging
import re
import shlex
import tomllib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.errors import ConfigError
from envkit.outputs import CONTRACT_KEYS

if TYPE_CHECKING:
    from envkit.settings import Settings

log = logging.getLogger(__name__)

SPEC_FILE = "envkit.toml"
SECTIONS = ("defaults", "databases", "services")
PROVIDERS = ("local", "aws")
DEFAULT_GRACE = 5.0
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_DB_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# `{NAME}` placeholders (upper case only, so JSON such as {"a": 1} stays literal); `{{`/`}}` escape.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Z][A-Z0-9_]*)\}")
RESERVED_SERVICE_NAMES = frozenset({"postgres", "database", "envkit"})
# Placeholders every service may use besides the outputs.
SERVICE_VARIABLES = ("HOST", "PORT", "PROJECT_DIR", "PYTHON", "SERVICE_NAME")
OUTPUT_KEYS = CONTRACT_KEYS
RUN_AS = ("server-user", "invoker")


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
class Defaults:
    """Defaults of the spec for settings not given elsewhere."""

    provider: str | None = None
    ttl: timedelta | None = None
    seeds_dir: Path | None = None  # relative to the spec's folder


@dataclass(frozen=True)
class EnvSpec:
    """The whole environment; ``services`` are in dependency order (dependencies first)."""

    source: Path | None
    databases: tuple[DatabaseSpec, ...] = (DatabaseSpec("main"),)
    services: tuple[ServiceSpec, ...] = ()
    defaults: Defaults = Defaults()

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

    def check_provider(self, provider: str) -> None:
        """Raise ``ConfigError`` when a service cannot run on ``provider``."""
        for service in self.services:
            if provider == "local" and service.command is None:
                raise _error(
                    self.source,
                    f"services.{service.name}.command",
                    "is missing: the local provider runs a command for every service "
                    f"(it has only image = {service.image!r}).",
                    hint="Add command = [...] (how to start it on this machine).",
                )
            if provider == "aws" and service.image is None:
                raise _error(
                    self.source,
                    f"services.{service.name}.image",
                    "is missing: the aws provider runs an image for every service.",
                    hint="Add image = \"registry/name:tag\".",
                )


def database_statements(spec: EnvSpec, *, owner: str, default_database: str) -> list[str]:
    """SQL creating the spec's extra databases (owned by ``owner``) and applying every
    database's settings; identifiers come from validated names, values are quoted."""
    statements = []
    for index, database in enumerate(spec.databases):
        name = default_database if index == 0 else database.name
        if index > 0:
            statements.append(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        for key, value in database.settings.items():
            quoted = value.replace("'", "''")
            statements.append(f"ALTER DATABASE \"{name}\" SET {key} = '{quoted}'")
    return statements


AWS_DEFAULT_PORT = 8080  # each Fargate task has its own network interface: a fixed port is fine
_AWS_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")


def aws_services(spec: EnvSpec) -> list[dict[str, Any]]:
    """Keyword arguments of ``stacks.config.ServiceArgs`` for every service of ``spec``.

    ``env`` values keep their ``{PLACEHOLDER}``s: outputs such as ``{DATABASE_URL}`` exist only
    as Pulumi Outputs inside the program, which renders them (:func:`render`) when they resolve.
    ``HOST``/``PORT`` are filled here (a task listens on all interfaces of its own ENI).
    """
    spec.check_provider("aws")
    found = []
    for service in spec.services:
        if not _AWS_NAME.fullmatch(service.name):
            raise _error(
                spec.source,
                f"services.{service.name}",
                "cannot be an ECS service name: use 1-32 lower-case letters, digits and '-'.",
            )
        port = service.port or AWS_DEFAULT_PORT
        fixed = {"HOST": "0.0.0.0", "PORT": str(port), "SERVICE_NAME": service.name}  # noqa: S104
        env = {k: render_known(v, fixed) for k, v in service.env.items()}
        env.update({"HOST": fixed["HOST"], "PORT": fixed["PORT"]})
        found.append({"name": service.name, "image": service.image, "port": port, "env": env})
    return found


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


# -- templating ---------------------------------------------------------------------------------


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


# -- parsing --------------------------------------------------------------------------------------


def _error(
    source: Path | None, field_path: str, problem: str, *, hint: str | None = None
) -> ConfigError:
    where = str(source) if source is not None else "the environment spec"
    return ConfigError(
        f"{where}: {field_path} {problem}",
        hint=hint or "Fix the spec (see 'Services under test' in the README).",
    )


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
        return _error(self.source, self.prefix + path, problem, hint=hint)

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
        services = self.services(self.table(data.get("services", {}), "services"), databases)
        return EnvSpec(self.source, databases, services, defaults)

    def defaults(self, data: Mapping[str, Any]) -> Defaults:
        self.keys(data, "defaults", ("provider", "ttl", "seeds_dir"))
        provider = data.get("provider")
        if provider is not None and provider not in PROVIDERS:
            raise self.error(
                "defaults.provider", f"must be one of {', '.join(PROVIDERS)}, got {provider!r}."
            )
        ttl = None
        if "ttl" in data:
            from envkit.durations import parse_duration

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
        return Defaults(provider, ttl, seeds_dir)

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
        self, data: Mapping[str, Any], databases: Sequence[DatabaseSpec]
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
            texts += [(f"services.{service.name}.health.command", a)
                      for a in service.health.command]
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
                raise self.error(
                    f"{path}.env.{key}", f"must be a string or number, got {value!r}."
                )
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
                cycle = [*trail[trail.index(name):], name]
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


# -- finding and loading --------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the environment spec {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="Fix its syntax.") from None


def _pyproject_spec(path: Path) -> dict[str, Any] | None:
    """``[tool.envkit]`` of a pyproject when it has spec tables, else ``None``."""
    table = _read_toml(path).get("tool", {}).get("envkit")
    if isinstance(table, dict) and any(k in table for k in SECTIONS):
        return table
    return None


def find_spec_file(start: Path, explicit: Path | None = None) -> Path | None:
    """The spec file to use (``envkit.toml`` or a ``pyproject.toml``), or ``None``."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(
                f"The environment spec {explicit} (ENVKIT_SPEC) does not exist.",
                hint="Point ENVKIT_SPEC at an envkit.toml, or unset it.",
            )
        return explicit.resolve()
    for folder in (start, *start.parents):
        candidate = folder / SPEC_FILE
        pyproject = folder / "pyproject.toml"
        if candidate.is_file():
            if pyproject.is_file() and _pyproject_spec(pyproject) is not None:
                log.warning(
                    "both %s and [tool.envkit] tables in %s declare the environment: using %s",
                    candidate,
                    pyproject,
                    candidate,
                )
            return candidate.resolve()
        if pyproject.is_file() and _pyproject_spec(pyproject) is not None:
            return pyproject.resolve()
    return None


def load_spec_file(path: Path, *, known_datasets: Collection[str] | None = None) -> EnvSpec:
    """Parse an ``envkit.toml``, or the ``[tool.envkit]`` of a ``pyproject.toml``."""
    if path.name == "pyproject.toml":
        from envkit.settings import setting_names

        table = _pyproject_spec(path) or {}
        return parse_spec(
            table,
            path,
            prefix="tool.envkit.",
            known_datasets=known_datasets,
            extra_keys=(*setting_names(), "spec_file"),
        )
    return parse_spec(_read_toml(path), path, known_datasets=known_datasets)


def known_datasets(settings: Settings) -> Collection[str] | None:
    """Names of the datasets envkit knows, or ``None`` when it cannot tell (no dataset module)."""
    import importlib

    try:
        module = importlib.import_module("envkit.seeding.datasets")
    except ImportError:
        return None
    for attribute in ("available", "dataset_names", "list_datasets", "names"):
        lister = getattr(module, attribute, None)
        if callable(lister):
            for args in ((settings,), ()):
                try:
                    return {str(n) for n in lister(*args)}
                except TypeError:
                    continue
                except Exception:  # a broken seeds folder is reported where it is used
                    return None
    return None


def load_spec(settings: Settings, cwd: Path | None = None) -> EnvSpec | None:
    """The environment spec for these settings, or ``None`` when the project declares none."""
    explicit = getattr(settings, "spec_file", None)
    path = find_spec_file(cwd or Path.cwd(), explicit)
    if path is None:
        return None
    return load_spec_file(path, known_datasets=known_datasets(settings))


def spec_defaults(explicit: Path | None, cwd: Path) -> dict[str, Any]:
    """The ``[defaults]`` of the spec as settings values, leniently: a broken spec yields ``{}``
    here (so ``down`` and ``status`` still work) and is reported by ``up``, which validates it."""
    try:
        path = find_spec_file(cwd, explicit)
        if path is None:
            return {}
        defaults = load_spec_file(path).defaults
    except ConfigError:
        return {}
    found: dict[str, Any] = {}
    if defaults.provider is not None:
        found["provider"] = defaults.provider
    if defaults.ttl is not None:
        found["ttl"] = defaults.ttl
    if defaults.seeds_dir is not None:
        found["seeds_dir"] = defaults.seeds_dir
    return found
