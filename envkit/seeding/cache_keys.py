"""Cache warm-up: Redis keys a dataset derives from its own rows (``[[redis]]`` in
``dataset.toml``), written when the environment has Redis.

Each entry names a table, a key pattern and a value pattern over that table's columns, and how
many rows: the first ``rows`` rows by the table's first column (its key), read back from the
environment's seeded database. The rows are a keyed function of the dataset, so the keys and
values are too: the same on every machine and every run, whatever order things happen in.

.. code-block:: toml

    [[redis]]
    table = "users"
    key = "user:{id}:email"
    value = "{email}"
    rows = 100
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from envkit.errors import ConfigError, SeedError

_COLUMN = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_ROWS = 100_000


@dataclass(frozen=True)
class CacheKeys:
    """One ``[[redis]]`` entry: a key and a value per row of ``table``."""

    table: str
    key: str
    value: str
    rows: int
    order_by: str  # the table's first column

    @property
    def columns(self) -> list[str]:
        """The columns the patterns use, in first-use order."""
        found: list[str] = []
        for name in _COLUMN.findall(self.key) + _COLUMN.findall(self.value):
            if name not in found:
                found.append(name)
        return found

    def render(self, row: Mapping[str, str]) -> tuple[str, str]:
        """The key and value for one row."""

        def fill(pattern: str) -> str:
            return _COLUMN.sub(lambda m: row[m.group(1)], pattern)

        return fill(self.key), fill(self.value)


def parse(raw: object, columns: Mapping[str, Sequence[str]], where: str) -> tuple[CacheKeys, ...]:
    """Validate the ``[[redis]]`` entries; ``columns``: table name → its column names."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: 'redis' must be a list of tables ([[redis]]).")
    found = []
    for number, entry in enumerate(raw, 1):
        label = f"{where}: [[redis]] #{number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{label} must be a table.")
        unknown = set(entry) - {"table", "key", "value", "rows"}
        if unknown:
            raise ConfigError(f"{label}: unknown keys {', '.join(sorted(unknown))}.")
        table, key, value = entry.get("table"), entry.get("key"), entry.get("value")
        rows = entry.get("rows", 100)
        if table not in columns:
            raise ConfigError(f"{label}: 'table' must name a table of the dataset, not {table!r}.")
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ConfigError(f"{label}: 'key' and 'value' must be strings, e.g. 'user:{{id}}'.")
        if isinstance(rows, bool) or not isinstance(rows, int) or not 0 < rows <= MAX_ROWS:
            raise ConfigError(f"{label}: 'rows' must be a number from 1 to {MAX_ROWS}.")
        spec = CacheKeys(str(table), key, value, rows, columns[str(table)][0])
        missing = [c for c in spec.columns if c not in columns[spec.table]]
        if missing:
            raise ConfigError(f"{label}: {spec.table} has no column {', '.join(missing)}.")
        if not _COLUMN.search(key):
            raise ConfigError(f"{label}: 'key' must use a column, e.g. 'user:{{id}}'.")
        found.append(spec)
    return tuple(found)


def warm(redis_url: str, database_url: str, entries: Sequence[CacheKeys]) -> dict[str, float]:
    """Write every entry's keys into the environment's Redis, read from its database."""
    from envkit.kvwire import KvAddress, KvError
    from envkit.kvwire import connect as kv_connect
    from envkit.wire import WireError
    from envkit.wire import connect as pg_connect

    started = time.perf_counter()
    db = urlsplit(database_url)
    commands: list[list[str | bytes | int]] = []
    try:
        with pg_connect(
            db.hostname or "",
            db.port or 5432,
            unquote(db.username or ""),
            db.path.lstrip("/"),
            password=unquote(db.password or ""),
        ) as session:
            for entry in entries:
                wanted = entry.columns
                select = ", ".join(f'"{c}"::text' for c in wanted)
                rows = session.query(
                    # Qualified: a bare name would sort by the text output column.
                    f'SELECT {select} FROM "{entry.table}" '
                    f'ORDER BY "{entry.table}"."{entry.order_by}" '
                    f"LIMIT {entry.rows}"
                )
                for row in rows:
                    key, value = entry.render(dict(zip(wanted, _texts(row), strict=True)))
                    commands.append(["SET", key, value])
        with kv_connect(KvAddress.from_url(redis_url), timeout=10.0) as kv:
            for start in range(0, len(commands), 1000):
                kv.pipeline(commands[start : start + 1000])
    except (WireError, KvError, OSError, ValueError) as exc:
        raise SeedError(
            f"Warming the cache failed: {type(exc).__name__}: {exc}",
            hint="Check the [[redis]] entries of the dataset.",
        ) from None
    return {"redis_keys": float(len(commands)), "redis_seconds": time.perf_counter() - started}


def _texts(row: Sequence[Any]) -> list[str]:
    return ["" if value is None else str(value) for value in row]
