"""Loading at COPY speed: bare tables, COPY, then keys, foreign keys and indexes.

Building a primary key or an index once over loaded rows is several times cheaper than
maintaining it row by row, and ``COPY ... (FREEZE)`` into a table created in the same
transaction writes rows already frozen, so the first reader (every test) does not rewrite every
page to set hint bits.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from envkit.errors import SeedError
from envkit.seeding.datasets import Dataset

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

# More memory for index builds than the server's small default (servers here are throw-away).
SESSION_SETTINGS = ("SET maintenance_work_mem = '256MB'", "SET synchronous_commit = off")
_COMMENT = re.compile(r"--[^\n]*")


def statements(sql: str) -> list[str]:
    """Split a plain SQL script (no functions or quoted semicolons) into statements."""
    return [s.strip() for s in _COMMENT.sub("", sql).split(";") if s.strip()]


def quote_ident(name: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def copy_text(
    cur: psycopg.Cursor[Any],
    table: str,
    columns: Iterable[str],
    chunks: Iterable[bytes],
    *,
    freeze: bool = False,
) -> int:
    """Stream COPY-text ``chunks`` into ``table``; the number of rows written."""
    cols = ", ".join(quote_ident(c) for c in columns)
    options = " (FREEZE)" if freeze else ""
    rows = 0
    with cur.copy(f"COPY {quote_ident(table)} ({cols}) FROM STDIN{options}".encode()) as copy:
        for chunk in chunks:
            copy.write(chunk)
            rows += chunk.count(b"\n")
    return rows


def drop_tables(conn: psycopg.Connection[Any], dataset: Dataset) -> None:
    """Drop the dataset's tables (children first), so it can be loaded again."""
    with conn.cursor() as cur:
        for table in reversed(dataset.tables):
            cur.execute(f"DROP TABLE IF EXISTS {quote_ident(table.name)} CASCADE".encode())


def load_dataset(
    conninfo: dict[str, Any] | str, dataset: Dataset, scale: float = 1.0, *, replace: bool = False
) -> dict[str, float]:
    """Create, fill and index the dataset's tables in one transaction; statistics.

    ``replace`` drops the dataset's tables first (seeding an environment that already has
    them). The statistics are rows per table, rows, seconds per phase and rows/s.
    """
    import psycopg

    from envkit.seeding.generation import Generator

    started = time.perf_counter()
    generator = Generator(dataset, scale)
    stats: dict[str, float] = {}
    try:
        connect = (
            psycopg.connect(conninfo, connect_timeout=10)
            if isinstance(conninfo, str)
            else psycopg.connect(**conninfo, connect_timeout=10)
        )
        with connect as conn:
            with conn.cursor() as cur:
                for setting in SESSION_SETTINGS:
                    cur.execute(setting.encode())
            if replace:
                drop_tables(conn, dataset)
            with conn.cursor() as cur:
                for statement in statements(dataset.schema_sql):
                    cur.execute(statement.encode())
                generator.pools  # noqa: B018  (time pool building on its own)
                stats["pools_seconds"] = time.perf_counter() - started
                copy_started = time.perf_counter()
                total = 0
                for table in dataset.tables:
                    rows = copy_text(
                        cur,
                        table.name,
                        [c.name for c in table.columns],
                        generator.copy_chunks(table.name),
                        freeze=True,
                    )
                    stats[f"rows_{table.name}"] = rows
                    total += rows
                stats["copy_seconds"] = time.perf_counter() - copy_started
                index_started = time.perf_counter()
                for statement in statements(dataset.constraints_sql):
                    cur.execute(statement.encode())
                stats["index_seconds"] = time.perf_counter() - index_started
            conn.commit()
            analyze_started = time.perf_counter()
            conn.autocommit = True
            # Only the dataset's tables: the rest of the database is not ours to analyze.
            names = ", ".join(quote_ident(t.name) for t in dataset.tables)
            conn.execute(f"ANALYZE {names}".encode())
            stats["analyze_seconds"] = time.perf_counter() - analyze_started
    except psycopg.Error as exc:
        # The server's message names the table and statement; connection details stay out.
        raise SeedError(
            f"Loading dataset {dataset.name!r} (version {dataset.version}) failed: "
            f"{exc.diag.message_primary or type(exc).__name__}",
            hint=f"Check {dataset.origin}: its schema and constraints must match its columns.",
        ) from None
    seconds = time.perf_counter() - started
    stats["rows"] = total
    stats["seconds"] = seconds
    stats["rows_per_s"] = total / seconds if seconds > 0 else 0.0
    log.info("loaded %s: %d rows in %.2fs", dataset.name, total, seconds)
    return stats
