"""Admin sessions on a shared server: envkit's own wire client where it can (no TLS asked for:
a cheap connect, no psycopg import on the CLI's path), psycopg where TLS is required or the
server asks for a password method envkit's client refuses. Connection failures become
``PrerequisiteError`` (exit 2) naming the server by its password-less reference."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

from envkit.errors import ConfigError, PrerequisiteError
from envkit.redact import scrub
from envkit.shared_server.dsn import Dsn

Row = list[str | None]
CONNECT_TIMEOUT = 10.0
PARK_SECONDS = 30.0  # a parked session older than this is closed, not reused


class SqlError(Exception):
    """An error the server reported, with its SQLSTATE; never holds a password."""

    def __init__(self, message: str, sqlstate: str = "") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class Session(Protocol):
    """One connection: ``query`` runs SQL (simple protocol) and returns text rows."""

    def query(self, sql: str) -> list[Row]: ...


class _Wire:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def query(self, sql: str) -> list[Row]:
        from envkit.wire import WireError

        try:
            rows: list[Row] = self._inner.query(sql)
        except WireError as exc:
            raise SqlError(str(exc), exc.sqlstate) from None
        return rows


class _Psycopg:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def query(self, sql: str) -> list[Row]:
        import psycopg

        try:
            with psycopg.ClientCursor(self._conn) as cursor:
                cursor.execute(sql)
                if cursor.description is None:
                    return []
                return [[None if v is None else str(v) for v in row] for row in cursor.fetchall()]
        except psycopg.Error as exc:
            raise SqlError(str(exc).strip(), exc.sqlstate or "") from None


@contextmanager
def connect(
    dsn: Dsn, dbname: str | None = None, *, application: str = "envkit"
) -> Iterator[Session]:
    """An autocommit admin session on ``dbname`` (default: the DSN's)."""
    target = dbname or dsn.dbname
    if not dsn.needs_tls:
        from envkit import wire

        try:
            with wire.connect(
                dsn.host,
                dsn.port,
                dsn.user,
                target,
                password=dsn.password,
                timeout=CONNECT_TIMEOUT,
                application_name=application,
            ) as inner:
                inner._sock.settimeout(None)  # DDL may wait on locks: no read deadline
                yield _Wire(inner)
                return
        except wire.WireError as exc:
            if exc.sqlstate != "28000" or "cleartext or MD5" not in str(exc):
                raise _connect_error(dsn, target, str(exc), exc.sqlstate) from None
        except OSError as exc:
            raise _connect_error(dsn, target, exc.strerror or str(exc), "08001") from None
    with _psycopg(dsn, target, application) as session:
        yield session


@contextmanager
def _psycopg(dsn: Dsn, target: str, application: str) -> Iterator[Session]:
    import psycopg

    try:
        kwargs: dict[str, Any] = dict(dsn.psycopg_kwargs(target))
        conn = psycopg.connect(
            **kwargs,
            autocommit=True,
            connect_timeout=int(CONNECT_TIMEOUT),
            application_name=application,
        )
    except psycopg.Error as exc:
        raise _connect_error(dsn, target, str(exc), exc.sqlstate or "") from None
    with conn:
        yield _Psycopg(conn)


def _connect_error(dsn: Dsn, dbname: str, message: str, sqlstate: str) -> Exception:
    text = scrub(message.strip(), [dsn.password] if dsn.password else [])
    where = f"the database server {dsn.reference()}"
    if sqlstate in ("28P01", "28000") or "password" in text.lower():
        return PrerequisiteError(
            f"{where} refused {dsn.user}'s login: {text}",
            hint="Check the admin user and its password (ENVKIT_DATABASE_SERVER, PGPASSWORD "
            "or ~/.pgpass) and the server's pg_hba.conf.",
        )
    if sqlstate == "3D000":
        return ConfigError(
            f"{where}: the database {dbname!r} does not exist.",
            hint="Name an existing database in the DSN's path (e.g. /postgres).",
        )
    return PrerequisiteError(
        f"Cannot reach {where}: {text}",
        hint="Check the host and port, that the server runs, and that this machine may "
        "connect to it.",
    )


# -- a checked admin session handed from preflight to create, within one process ---------------
_parked: dict[str, tuple[float, ExitStack, Session]] = {}
_parked_lock = threading.Lock()


def park(key: str, stack: ExitStack, session: Session) -> None:
    """Keep an open session (``stack`` closes it) for the next :func:`take` of ``key`` in this
    process: ``up`` checks the admin in its preflight and creates the database moments later,
    one connection instead of two. One per key; the one it replaces is closed."""
    with _parked_lock:
        old = _parked.pop(key, None)
        _parked[key] = (time.monotonic(), stack, session)
    if old is not None:
        old[1].close()


@contextmanager
def take(key: str) -> Iterator[Session | None]:
    """The session parked under ``key`` (closed when the block ends), or ``None``."""
    with _parked_lock:
        found = _parked.pop(key, None)
    if found is not None and time.monotonic() - found[0] > PARK_SECONDS:
        found[1].close()
        found = None
    if found is None:
        yield None
        return
    with found[1]:
        yield found[2]
