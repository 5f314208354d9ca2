"""Dataset definitions: finding them (a project's seeds_dir, then the shipped ones), reading
and validating ``dataset.toml``, and the content hash that keys seeded templates.

A dataset is a directory holding ``dataset.toml`` (name, version, pools, tables with row counts
and per-column generators, masking rules), the schema (bare tables) and the constraints
(keys, foreign keys, indexes, applied after loading).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import importlib.util
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from envkit.errors import ConfigError
from envkit.seeding.cache_keys import CacheKeys
from envkit.seeding.cache_keys import parse as parse_cache_keys
from envkit.settings import MAX_SCALE, Settings

DEFINITION = "dataset.toml"
DEFAULT_DATASET = "default"
GENERATORS = (
    "key",
    "pool",
    "email",
    "phone",
    "card",
    "date",
    "timestamp",
    "int",
    "choice",
    "const",
    "ref",
)
# Generator parameters that must be present, per generator.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "pool": ("pool",),
    "email": ("first", "last"),
    "date": ("start", "end"),
    "timestamp": ("start", "end"),
    "int": ("min", "max"),
    "choice": ("values",),
    "const": ("value",),
    "ref": ("table",),
}


@dataclass(frozen=True)
class Column:
    """One column and the generator that fills it."""

    name: str
    gen: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """One table: its base row count and its columns in COPY order."""

    name: str
    rows: int
    columns: tuple[Column, ...]

    def scaled_rows(self, scale: float) -> int:
        """Row count at ``scale`` (at least one row)."""
        return max(1, round(self.rows * scale))


@dataclass(frozen=True)
class Dataset:
    """A validated dataset definition and the files it came from."""

    name: str
    version: str
    description: str
    locale: str
    pool_size: int
    pools: dict[str, str]
    tables: tuple[Table, ...]
    masking: dict[str, dict[str, str]]
    schema_sql: str
    constraints_sql: str
    origin: str
    definition_bytes: bytes = b""
    cache_keys: tuple[CacheKeys, ...] = ()  # [[redis]]: keys written when there is Redis

    def table(self, name: str) -> Table:
        """The table called ``name``."""
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(name)

    def rows(self, scale: float = 1.0) -> dict[str, int]:
        """Row count per table at ``scale``."""
        return {t.name: t.scaled_rows(scale) for t in self.tables}

    def content_hash(self, scale: float = 1.0) -> str:
        """What the data depends on: definition, schema, version, scale, the generator and
        masking code, and the Faker version (Faker's output for a seed changes between them)."""
        h = hashlib.sha256()
        for part in (
            self.definition_bytes,
            self.schema_sql.encode(),
            self.constraints_sql.encode(),
            json.dumps([self.name, self.version, repr(float(scale))]).encode(),
            _module_source("envkit.seeding.generation"),
            _module_source("envkit.seeding.masking"),
            _module_source("envkit.seeding.loading"),
            faker_version().encode(),
        ):
            h.update(hashlib.sha256(part).digest())
        return h.hexdigest()


def faker_version() -> str:
    """The installed Faker's version, read from its metadata (without importing Faker).

    First from the name of the one ``faker-<version>.dist-info`` beside the package (a
    ``listdir``), because ``importlib.metadata`` costs ~7 ms of imports and a scan of every
    distribution on ``sys.path``, on every ``envkit up``; that is the fallback.
    """
    spec = importlib.util.find_spec("faker")
    if spec is None or spec.origin is None:
        return "none"
    site = Path(spec.origin).parent.parent
    with contextlib.suppress(OSError):
        found = [
            name[len("faker-") : -len(".dist-info")]
            for name in os.listdir(site)
            if name.lower().startswith("faker-") and name.endswith(".dist-info")
        ]
        if len(found) == 1:
            return found[0]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("faker")
    except PackageNotFoundError:
        return "none"


def _module_source(name: str) -> bytes:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return b""
    with open(spec.origin, "rb") as fh:
        return fh.read()


def shipped_root() -> Traversable:
    """The datasets shipped inside envkit (package ``envkit._seeds``)."""
    return importlib.resources.files("envkit._seeds")


def roots(settings: Settings) -> list[Traversable]:
    """Where datasets are looked up, first match wins: the project's seeds_dir, then shipped."""
    found: list[Traversable] = []
    if settings.seeds_dir is not None:
        if not settings.seeds_dir.is_dir():
            raise ConfigError(
                f"The seeds directory {settings.seeds_dir} does not exist.",
                hint="Fix ENVKIT_SEEDS_DIR or [tool.envkit] seeds_dir, or unset it to use the "
                "shipped datasets.",
            )
        found.append(settings.seeds_dir)
    found.append(shipped_root())
    return found


def available(settings: Settings) -> dict[str, Traversable]:
    """Every dataset name and its directory (a project's dataset shadows a shipped one)."""
    names: dict[str, Traversable] = {}
    for root in roots(settings):
        for entry in sorted(root.iterdir(), key=lambda e: e.name):
            if entry.is_dir() and entry.joinpath(DEFINITION).is_file():
                names.setdefault(entry.name, entry)
    return names


def load(settings: Settings, name: str) -> Dataset:
    """Read and validate the dataset ``name``; ``ConfigError`` (exit 2) naming the datasets that
    exist when there is none by that name."""
    found = available(settings)
    folder = found.get(name)
    if folder is None:
        known = ", ".join(sorted(found)) or "(none)"
        raise ConfigError(
            f"Unknown dataset {name!r}. Datasets that exist: {known}.",
            hint="Pass one of them with --dataset, or add a directory with a dataset.toml to "
            "your seeds_dir (ENVKIT_SEEDS_DIR).",
        )
    signature = _signature(folder)
    key = (str(folder), name)
    cached = _parsed.get(key)
    if signature is not None and cached is not None and cached[0] == signature:
        return cached[1]
    dataset = parse(folder, name)
    if signature is not None:
        _parsed[key] = (signature, dataset)
    return dataset


# One ``up`` reads its dataset several times (the plan's check, the template's key, the seeding
# report), and parsing its TOML each time was a visible share of an up. Kept per folder while
# no file in it changed (name, mtime, size of each); folders that are not plain directories are
# parsed every time.
_parsed: dict[tuple[str, str], tuple[tuple[tuple[str, int, int], ...], Dataset]] = {}


def _signature(folder: Traversable) -> tuple[tuple[str, int, int], ...] | None:
    if not isinstance(folder, Path):
        return None
    try:
        with os.scandir(folder) as entries:
            found = [(e.name, e.stat()) for e in entries if e.is_file()]
    except OSError:
        return None
    return tuple(sorted((n, st.st_mtime_ns, st.st_size) for n, st in found))


def parse(folder: Traversable, name: str) -> Dataset:
    """Validate the dataset in ``folder``; every problem is a ``ConfigError`` naming the file."""
    path = folder.joinpath(DEFINITION)
    raw = path.read_bytes()
    where = f"{path}"
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from exc

    def need(cond: bool, message: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {message}")

    version = data.get("version")
    need(isinstance(version, str | int) and str(version) != "", "'version' is required.")
    pools = data.get("pools", {})
    need(
        isinstance(pools, dict) and all(isinstance(v, str) for v in pools.values()),
        "[pools] must map pool names to Faker method names.",
    )
    pool_size = data.get("pool_size", 1000)
    need(isinstance(pool_size, int) and pool_size > 0, "'pool_size' must be a positive integer.")
    tables: list[Table] = []
    seen: set[str] = set()
    raw_tables = data.get("tables")
    if not isinstance(raw_tables, list) or not raw_tables:
        raise ConfigError(f"{where}: at least one [[tables]] is needed.")
    for raw_table in raw_tables:
        tname = raw_table.get("name")
        need(isinstance(tname, str) and tname.isidentifier(), f"bad table name {tname!r}.")
        rows = raw_table.get("rows")
        need(isinstance(rows, int) and rows > 0, f"table {tname}: 'rows' must be positive.")
        columns: list[Column] = []
        raw_columns = raw_table.get("columns", {})
        need(isinstance(raw_columns, dict) and bool(raw_columns), f"table {tname}: no columns.")
        for cname, spec in raw_columns.items():
            label = f"{tname}.{cname}"
            need(
                isinstance(spec, dict) and spec.get("gen") in GENERATORS,
                f"{label}: 'gen' must be one of {', '.join(GENERATORS)}.",
            )
            gen = spec["gen"]
            missing = [p for p in _REQUIRED.get(gen, ()) if p not in spec]
            need(not missing, f"{label}: generator {gen!r} needs {', '.join(missing)}.")
            if gen == "pool":
                need(spec["pool"] in pools, f"{label}: unknown pool {spec['pool']!r}.")
            if gen == "ref":
                need(
                    spec["table"] in seen,
                    f"{label}: references {spec['table']!r}, which must be a table above it.",
                )
            if gen == "email":
                for ref in ("first", "last"):
                    need(
                        spec[ref] in raw_columns and raw_columns[spec[ref]].get("gen") == "pool",
                        f"{label}: '{ref}' must name a pool column of {tname}.",
                    )
            if gen == "int":
                need(spec["min"] <= spec["max"], f"{label}: min is above max.")
            if gen == "choice":
                need(
                    isinstance(spec["values"], list) and bool(spec["values"]),
                    f"{label}: 'values' must be a non-empty list.",
                )
            params = {k: v for k, v in spec.items() if k != "gen"}
            columns.append(Column(cname, gen, params))
        tables.append(Table(tname, rows, tuple(columns)))
        seen.add(tname)
    masking = data.get("masking", {})
    need(isinstance(masking, dict), "[masking] must be a table of tables.")
    from envkit.seeding.masking import RULES

    for tname, rules in masking.items():
        need(tname in seen, f"[masking.{tname}] names no table of this dataset.")
        for cname, rule in rules.items():
            need(
                rule in RULES,
                f"masking rule {tname}.{cname} = {rule!r}: use one of {', '.join(RULES)}.",
            )
    schema_sql = _read(folder, data.get("schema", "schema.sql"), where)
    constraints_sql = _read(folder, data.get("constraints", "constraints.sql"), where)
    return Dataset(
        name=str(data.get("name", name)),
        version=str(version),
        description=str(data.get("description", "")),
        locale=str(data.get("locale", "en_US")),
        pool_size=pool_size,
        pools=dict(pools),
        tables=tuple(tables),
        masking={t: dict(r) for t, r in masking.items()},
        schema_sql=schema_sql,
        constraints_sql=constraints_sql,
        origin=str(folder),
        definition_bytes=raw,
        cache_keys=parse_cache_keys(
            data.get("redis"), {t.name: [c.name for c in t.columns] for t in tables}, where
        ),
    )


def _read(folder: Traversable, name: Any, where: str) -> str:
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise ConfigError(f"{where}: {name!r} must be a file name next to dataset.toml.")
    target = folder.joinpath(name)
    if not target.is_file():
        raise ConfigError(f"{where}: {name} does not exist next to it.")
    return target.read_text(encoding="utf-8")


def check_scale(scale: float) -> float:
    """``scale`` when it is a finite number in (0, MAX_SCALE], else ``ConfigError``."""
    if not (math.isfinite(scale) and 0 < scale <= MAX_SCALE):
        raise ConfigError(
            f"The scale (--scale, ENVKIT_SEED_SCALE) must be a number greater than 0 and at "
            f"most {MAX_SCALE:g}, not {scale!r}."
        )
    return float(scale)
