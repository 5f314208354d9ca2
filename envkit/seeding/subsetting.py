"""A masked subset of a real database: ``envkit seed ID --from DSN --rules FILE``.

1. Read the source's catalog and the rules file. **Fail closed**: every column of every table
   that would be copied needs a rule (``keep`` marks it safe); otherwise stop before anything is
   selected, created or copied.
2. Select the subset in the source, inside one repeatable-read snapshot, with temporary key
   tables: the root table's rows matching ``where``, then their dependants (rows referencing
   selected rows, recursively: cycles and self-references reach a fixpoint), then every row a
   selected row references (so no foreign key dangles: zero orphans).
3. Create the bare tables in the target (``pg_dump --section=pre-data``), stream every table
   source COPY -> mask column by column -> target COPY, then add keys, foreign keys and indexes
   (``--section=post-data``) and move sequences past the copied values. Masking happens here,
   in COPY text, a batch of rows and a whole column at a time; nothing unmasked reaches the
   target, and nothing is installed in the source.
4. Leak check per column: no source value of a high-entropy column (email, phone, card, token)
   may appear in the target; low-entropy ones (names, cities) must have changed in every row.
   The target's values are read back and compared here (source values are never sent to the
   target, not even as query parameters). A leak drops the copied tables and fails.

Rules file (TOML)::

    [subset]
    root = "customers"          # schema-qualified or in `schema` (default public)
    where = "country = 'NL'"

    [rules.customers]
    id = "keep"
    email = "email"
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.errors import ConfigError, PrerequisiteError, SeedError
from envkit.redact import scrub
from envkit.seeding.copytext import (
    COPY_NULL,
    CopyMasker,
    copy_out,
    copy_unescape,
    split_fields,
    utf8,
)
from envkit.seeding.loading import quote_ident
from envkit.seeding.masking import RULES

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rules:
    """A parsed rules file."""

    root: str
    where: str
    schema: str
    columns: dict[str, dict[str, str]]

    @classmethod
    def read(cls, path: Path) -> Rules:
        """Parse and validate ``path``; ``ConfigError`` naming the problem."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"Cannot read the rules file {path}: {exc.strerror}.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"The rules file {path} is not valid TOML: {exc}") from None
        subset = data.get("subset", {})
        root, where = subset.get("root"), subset.get("where", "true")
        if not isinstance(root, str) or not root:
            raise ConfigError(f'{path}: [subset] root = "<table>" is required.')
        if not isinstance(where, str) or not where.strip():
            raise ConfigError(f"{path}: [subset] where must be a SQL condition.")
        schema = str(subset.get("schema", "public"))
        if "." in root:
            schema, root = root.split(".", 1)
        columns: dict[str, dict[str, str]] = {}
        for table, rules in data.get("rules", {}).items():
            if not isinstance(rules, dict):
                raise ConfigError(f"{path}: [rules.{table}] must map columns to rules.")
            for column, rule in rules.items():
                if rule not in RULES:
                    raise ConfigError(
                        f"{path}: {table}.{column} = {rule!r} is not a rule.",
                        hint=f"Use one of: {', '.join(RULES)} ('keep' marks a column safe).",
                    )
            columns[str(table)] = {str(k): str(v) for k, v in rules.items()}
        return cls(root, where, schema, columns)

    def rule(self, table: str, column: str) -> str | None:
        """The rule of ``table.column``, or ``None`` when it has none."""
        return self.columns.get(table, {}).get(column)


@dataclass
class TableInfo:
    """What the catalog says about one source table."""

    name: str
    columns: list[str]
    pk: list[str]


@dataclass(frozen=True)
class ForeignKey:
    """``child(columns) REFERENCES parent(refs)``."""

    child: str
    columns: tuple[str, ...]
    parent: str
    refs: tuple[str, ...]


@dataclass
class Catalog:
    """Tables and foreign keys of one schema."""

    tables: dict[str, TableInfo] = field(default_factory=dict)
    fks: list[ForeignKey] = field(default_factory=list)

    def connected(self, root: str) -> list[str]:
        """Tables reachable from ``root`` over foreign keys in either direction, sorted."""
        seen, todo = {root}, [root]
        while todo:
            table = todo.pop()
            for fk in self.fks:
                for a, b in ((fk.child, fk.parent), (fk.parent, fk.child)):
                    if a == table and b not in seen:
                        seen.add(b)
                        todo.append(b)
        return sorted(seen)


def read_catalog(conn: psycopg.Connection[Any], schema: str) -> Catalog:
    """Columns (copyable ones: no generated columns), primary keys and foreign keys."""
    catalog = Catalog()
    rows = conn.execute(
        """
        SELECT c.relname, a.attname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0
          AND NOT a.attisdropped AND a.attgenerated = ''
        ORDER BY c.relname, a.attnum
        """,
        (schema,),
    ).fetchall()
    for table, column in rows:
        catalog.tables.setdefault(table, TableInfo(table, [], [])).columns.append(column)
    constraints = conn.execute(
        """
        SELECT con.contype, c.relname,
               ARRAY(SELECT attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute ON attrelid = con.conrelid AND attnum = k.n ORDER BY k.i),
               p.relname,
               ARRAY(SELECT attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute ON attrelid = con.confrelid AND attnum = k.n ORDER BY k.i)
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_class p ON p.oid = con.confrelid
        WHERE n.nspname = %s AND con.contype IN ('p', 'f')
        ORDER BY c.relname, con.conname
        """,
        (schema,),
    ).fetchall()
    for kind, table, cols, parent, refs in constraints:
        if kind == "p" and table in catalog.tables:
            catalog.tables[table].pk = list(cols)
        elif kind == "f":
            catalog.fks.append(ForeignKey(table, tuple(cols), parent, tuple(refs or ())))
    return catalog


def check_rules(catalog: Catalog, rules: Rules, tables: list[str]) -> None:
    """Fail closed: every column of every copied table has a rule; every table has a key."""
    missing = [
        f"{t}.{c}" for t in tables for c in catalog.tables[t].columns if rules.rule(t, c) is None
    ]
    if missing:
        shown = ", ".join(missing[:20]) + (
            f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        )
        raise ConfigError(
            f"{len(missing)} column(s) have no masking rule: {shown}. Nothing was copied.",
            hint='Give each a rule in the rules file ([rules.<table>] <column> = "email", ...), '
            'or mark it safe with "keep".',
        )
    nokey = [t for t in tables if not catalog.tables[t].pk]
    if nokey:
        raise ConfigError(
            f"Table(s) without a primary key cannot be subset: {', '.join(nokey)}.",
            hint="Add a primary key in the source, or leave the table out of the FK graph.",
        )
    for table, columns in rules.columns.items():
        for column in columns:
            if table in catalog.tables and column not in catalog.tables[table].columns:
                log.warning("the rules name %s.%s, which the source does not have", table, column)


class _Selection:
    """Temporary key tables in the source session, one per copied table."""

    def __init__(self, conn: psycopg.Connection[Any], catalog: Catalog, schema: str) -> None:
        self.conn, self.catalog, self.schema = conn, catalog, schema
        self.names: dict[str, str] = {}

    def qualified(self, table: str) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(table)}"

    def create(self, tables: list[str]) -> None:
        for i, table in enumerate(tables):
            name = f"_envkit_sel_{i}"
            pk = ", ".join(quote_ident(c) for c in self.catalog.tables[table].pk)
            self.conn.execute(
                f"CREATE TEMP TABLE {name} AS SELECT {pk} FROM {self.qualified(table)} "
                "WITH NO DATA".encode()
            )
            self.conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY ({pk})".encode())
            self.names[table] = name

    def pk_join(self, table: str, alias: str) -> str:
        """``JOIN <selection of table> s ON alias.pk = s.pk``."""
        cond = " AND ".join(
            f"{alias}.{quote_ident(c)} = s.{quote_ident(c)}" for c in self.catalog.tables[table].pk
        )
        return f"JOIN {self.names[table]} s ON {cond}"

    def add(self, table: str, select_from: str) -> int:
        pk = ", ".join(f"x.{quote_ident(c)}" for c in self.catalog.tables[table].pk)
        cur = self.conn.execute(
            f"INSERT INTO {self.names[table]} SELECT DISTINCT {pk} {select_from} "
            "ON CONFLICT DO NOTHING".encode()
        )
        return max(cur.rowcount, 0)

    def close(self, fks: list[ForeignKey], *, down: bool) -> None:
        """Follow ``fks`` to a fixpoint: parent -> children (down) or child -> parents (up)."""
        while True:
            added = 0
            for fk in fks:
                pairs = list(zip(fk.columns, fk.refs, strict=True))
                if down:  # children (x) of selected parents (p)
                    on = " AND ".join(f"x.{quote_ident(a)} = p.{quote_ident(b)}" for a, b in pairs)
                    source = (
                        f"FROM {self.qualified(fk.child)} x JOIN {self.qualified(fk.parent)} p "
                        f"ON {on} {self.pk_join(fk.parent, 'p')}"
                    )
                    added += self.add(fk.child, source)
                else:  # parents (x) of selected children (c)
                    on = " AND ".join(f"c.{quote_ident(a)} = x.{quote_ident(b)}" for a, b in pairs)
                    source = (
                        f"FROM {self.qualified(fk.parent)} x JOIN {self.qualified(fk.child)} c "
                        f"ON {on} {self.pk_join(fk.child, 'c')}"
                    )
                    added += self.add(fk.parent, source)
            if added == 0:
                return


def _pg_dump(dsn: dict[str, Any], schema: str, tables: list[str], section: str) -> str:
    """DDL of ``tables`` from ``pg_dump`` (password in the environment, never in argv)."""
    from envkit.pgbin import find_install

    bindir = os.environ.get("ENVKIT_PG_BINDIR")
    install = find_install(Path(bindir) if bindir else None)
    binary = install.binary("pg_dump")
    if not os.access(binary, os.X_OK):
        raise PrerequisiteError(
            f"pg_dump was not found next to postgres in {install.bindir}.",
            hint="Install the PostgreSQL client tools of the same version.",
        )
    env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}
    params = dict(dsn)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    conninfo = " ".join(
        f"{k}='{str(v).replace(chr(39), chr(92) + chr(39))}'" for k, v in params.items()
    )
    args = [str(binary), "--schema-only", "--no-owner", "--no-privileges", f"--section={section}"]
    for table in tables:
        args += ["-t", f"{quote_ident(schema)}.{quote_ident(table)}"]
    args += ["-d", conninfo]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    if result.returncode != 0:
        raise SeedError(f"pg_dump of the source schema failed: {result.stderr.strip()[-500:]}")
    # pg_dump's psql meta-commands (\restrict ...) are not SQL.
    return "\n".join(line for line in result.stdout.splitlines() if not line.startswith("\\"))


def copy_subset(source: str, rules_path: Path, target: str, *, key: bytes) -> dict[str, float]:
    """Copy the masked subset of ``source`` described by ``rules_path`` into ``target``."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    rules = Rules.read(rules_path)
    secrets = [str(v) for k, v in conninfo_to_dict(source).items() if k == "password" and v]
    secrets += [str(v) for k, v in conninfo_to_dict(target).items() if k == "password" and v]
    started = time.perf_counter()
    stats: dict[str, float] = {}
    try:
        with (
            # COPY text is masked as UTF-8 whatever the databases' encodings are.
            psycopg.connect(source, connect_timeout=10, client_encoding="UTF8") as src,
            psycopg.connect(target, connect_timeout=10, client_encoding="UTF8") as dst,
        ):
            src.execute(b"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            catalog = read_catalog(src, rules.schema)
            if rules.root not in catalog.tables:
                raise ConfigError(
                    f"The root table {rules.schema}.{rules.root} is not in the source.",
                    hint="Fix [subset] root in the rules file.",
                )
            tables = catalog.connected(rules.root)
            check_rules(catalog, rules, tables)  # fail closed: before anything is selected

            selected = _Selection(src, catalog, rules.schema)
            selected.create(tables)
            root = selected.qualified(rules.root)
            selected.add(rules.root, f"FROM {root} x WHERE ({rules.where})")
            inside = [fk for fk in catalog.fks if fk.child in tables and fk.parent in tables]
            selected.close(inside, down=True)
            selected.close(inside, down=False)
            stats["select_seconds"] = time.perf_counter() - started

            pre = _pg_dump(conninfo_to_dict(source), rules.schema, tables, "pre-data")
            post = _pg_dump(conninfo_to_dict(source), rules.schema, tables, "post-data")
            dst.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(rules.schema)}".encode())
            for table in tables:
                dst.execute(f"DROP TABLE IF EXISTS {selected.qualified(table)} CASCADE".encode())
            dst.execute(pre.encode())
            dst.execute(b"SET search_path TO DEFAULT")

            copy_started, copy_cpu = time.perf_counter(), time.process_time()
            maskers: dict[str, CopyMasker] = {}
            total = 0
            for table in tables:
                info = catalog.tables[table]
                masker = CopyMasker(
                    info.columns, [rules.rule(table, c) or "keep" for c in info.columns], key
                )
                maskers[table] = masker
                rows = _stream(src, dst, selected, table, info.columns, masker)
                stats[f"rows_{table}"] = rows
                total += rows
            stats["copy_seconds"] = time.perf_counter() - copy_started
            stats["copy_cpu_seconds"] = time.process_time() - copy_cpu  # this process's share

            index_started = time.perf_counter()
            dst.execute(post.encode())
            dst.execute(b"SET search_path TO DEFAULT")
            _advance_sequences(dst, rules.schema, tables, catalog)
            stats["index_seconds"] = time.perf_counter() - index_started

            leaks = _leak_check(dst, selected, maskers)
            if leaks:
                dst.rollback()
                raise SeedError(
                    "Leak check failed, nothing was kept: " + "; ".join(leaks) + ".",
                    hint="Review the rules of those columns.",
                )
            dst.commit()
            src.rollback()  # drops nothing in the source: the key tables were temporary
    except psycopg.Error as exc:
        message = scrub(exc.diag.message_primary or str(exc), secrets)
        raise SeedError(f"Copying the masked subset failed: {message}") from None
    seconds = time.perf_counter() - started
    stats["rows"] = float(total)
    stats["seconds"] = seconds
    stats["rows_per_s"] = total / stats["copy_seconds"] if stats["copy_seconds"] > 0 else 0.0
    return stats


def _stream(
    src: psycopg.Connection[Any],
    dst: psycopg.Connection[Any],
    selected: _Selection,
    table: str,
    columns: list[str],
    masker: CopyMasker,
) -> int:
    """Source COPY out -> mask -> target COPY in, a batch of lines at a time."""
    cols = ", ".join(f"t.{quote_ident(c)}" for c in columns)
    name = selected.qualified(table)
    query = f"SELECT {cols} FROM {name} t {selected.pk_join(table, 't')}"
    names = ", ".join(quote_ident(c) for c in columns)
    rows = 0
    with (
        dst.cursor() as wcur,
        wcur.copy(f"COPY {name} ({names}) FROM STDIN".encode()) as writer,
    ):
        for data in copy_out(src, query):
            writer.write(masker.text(data))
            rows += data.count(b"\n")
    return rows


def _advance_sequences(
    dst: psycopg.Connection[Any], schema: str, tables: list[str], catalog: Catalog
) -> None:
    """Serial and identity sequences start after the copied values, so inserts still work."""
    for table in tables:
        qualified = f"{quote_ident(schema)}.{quote_ident(table)}"
        for column in catalog.tables[table].columns:
            seq = dst.execute(
                "SELECT pg_get_serial_sequence(%s, %s)", (qualified, column)
            ).fetchone()
            if seq and seq[0]:
                dst.execute(
                    f"SELECT setval(%s, COALESCE((SELECT max({quote_ident(column)}) "
                    f"FROM {qualified}), 0) + 1, false)".encode(),
                    (seq[0],),
                )


def _leak_check(
    dst: psycopg.Connection[Any], selected: _Selection, maskers: dict[str, CopyMasker]
) -> list[str]:
    """Per column: rows of the target holding a source value (high-entropy columns), or rows
    the masking left unchanged (low-entropy ones). The target's values are read back and
    compared here: source values are never sent to the target server, not even in a query."""
    leaks = []
    for table, masker in maskers.items():
        exact = [(col.name, originals) for _, col in masker.plan if (originals := col.originals)]
        found = [0] * len(exact)
        if exact:
            n = len(exact)
            names = ", ".join(f"{quote_ident(name)}::text" for name, _ in exact)
            for data in copy_out(dst, f"SELECT {names} FROM {selected.qualified(table)}"):
                fields, _ = split_fields(utf8(data), n)
                for j, (_, originals) in enumerate(exact):
                    values = fields[j::n]
                    if "\\" in "".join(values):
                        values = [copy_unescape(v) for v in values if v != COPY_NULL]
                    found[j] += sum(map(originals.__contains__, values))
        for (name, _), count in zip(exact, found, strict=True):
            if count:
                leaks.append(f"{table}.{name}: {count} source value(s) present")
        for _, col in masker.plan:
            if col.unchanged:
                leaks.append(f"{table}.{col.name}: {col.unchanged} row(s) unchanged")
    return leaks
