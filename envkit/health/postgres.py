"""The PostgreSQL probe: connect + ``SELECT 1`` (envkit.wire or psycopg), and optionally a
query that must return rows; SQLSTATEs and libpq messages sorted into transient and fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from envkit.health.engine import ProbeError, TransientError, describe
from envkit.health.network import resolve_address
from envkit.redact import scrub


class PostgresProbeError(ProbeError):
    """A fatal PostgreSQL probe failure (bad password, missing database or role)."""


# SQLSTATEs that can pass with time: cannot connect now (starting up / shutting down), too
# many connections, connection failures, and sessions cut by a restarting server.
_TRANSIENT_SQLSTATES = {"57P03", "53300", "08001", "08006", "08004", "57P01", "57P02"}
# SQLSTATEs of a "must return rows" query that mean "not yet" (e.g. migrations not applied).
_NOT_YET_SQLSTATES = {"42P01", "42703", "3F000", "42883"}
_TRANSIENT_TEXT = (
    "connection refused",
    "starting up",
    "timeout",
    "timed out",
    "could not translate host name",
    "name or service not known",
    "no such file or directory",
    "server closed the connection",
    "shutting down",
    "connection reset",
    "is the server running",
    "temporary failure in name resolution",
    "no route to host",
    "network is unreachable",
    "too many connections",
    "in recovery mode",
    "not yet accepting connections",
)
_FATAL_TEXT = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "authentication failed",
    "permission denied",
    "no password supplied",
)


def _text_is_transient(text: str) -> bool:
    lowered = text.lower()
    if any(fragment in lowered for fragment in _FATAL_TEXT):
        return False
    return any(fragment in lowered for fragment in _TRANSIENT_TEXT)


def is_transient_pg_error(exc: Exception) -> bool:
    """Whether a psycopg error may pass by waiting (vs. bad credentials, missing database)."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return state in _TRANSIENT_SQLSTATES
    return _text_is_transient(str(exc))


@dataclass
class PostgresProbe:
    """postgres: connect + ``SELECT 1``, and optionally a query that must return rows.

    ``client``: ``wire`` (envkit.wire: an in-process client in the standard library, ~1 ms of
    CPU per check, no ~0.1 s ``import psycopg`` and no ~11 ms ``psql`` spawn on the ``envkit
    up`` hot path), ``psycopg`` (TLS, .pgpass, any libpq option) or ``auto``: wire for the
    local provider's own servers (a ``pidfile`` and a plain ``postgresql://user:pw@host`` URL),
    psycopg for anything else. Before connecting, a host name is resolved with a timeout (libpq's
    and the socket module's lookups have none). A ``require_rows`` query failing with
    "relation/column does not exist" counts as "not yet" (migrations pending).

    ``pidfile``: the server's ``postmaster.pid``, when the prober can read it (the local
    provider's own servers). While it does not say ``ready`` the attempt ends there, without
    touching the server: connections made while it starts up take 10-20 ms to be refused (the
    postmaster forks a backend for each, competing with its own start-up), which is what made
    detection lag. Reading the file costs ~20 µs, so such probes poll every millisecond.
    """

    conninfo: str = field(repr=False)  # holds the password
    component: str = "database"
    name: str = "postgres"
    require_rows: str | None = None
    connect_timeout: float = 2.0
    client: Literal["auto", "wire", "psycopg"] = "auto"
    max_delay: float = 0.003
    pidfile: Path | None = None
    _refused_while_ready: bool = field(default=False, init=False, repr=False, compare=False)

    def current_max_delay(self) -> float:
        """``max_delay``, but at least 50 ms while the pid file says ready and connecting still
        fails (a killed server leaves its pid file behind): no 1 ms spin on a dead server."""
        return max(self.max_delay, 0.05) if self._refused_while_ready else self.max_delay

    def check(self) -> None:
        """Connect and run ``SELECT 1`` (and ``require_rows``)."""
        self._refused_while_ready = False
        try:
            self._server_status()
        except TransientError:
            raise  # starting, stopping, not running: nothing secret in it
        try:
            address = self._resolve()
            if self._use_wire():
                self._check_with_wire(address)
            else:
                self._check_with_psycopg()
        except TransientError as exc:
            self._refused_while_ready = self.pidfile is not None
            raise TransientError(scrub(str(exc), [self._password()])) from None
        except ProbeError as exc:
            raise type(exc)(scrub(str(exc), [self._password()])) from None

    def _server_status(self) -> None:
        """Raises while ``postmaster.pid`` is missing or does not say ready (when readable)."""
        if self.pidfile is None:
            return
        try:
            lines = self.pidfile.read_text().split("\n")
        except FileNotFoundError:
            raise TransientError(f"the server is not running (no {self.pidfile.name})") from None
        except OSError:
            return  # not ours to read: the connect decides
        status = lines[7].strip() if len(lines) > 7 else ""
        if status not in ("ready", "standby"):  # standby: a hot standby takes connections too
            raise TransientError(f"the server is {status or 'starting'} ({self.pidfile.name})")

    def _resolve(self) -> tuple[str, int] | None:
        """The address to connect to, looked up within ``connect_timeout`` (``None``: not a URL
        with a TCP host; the client resolves it)."""
        parts = self._url()
        if parts is None or not parts.hostname or parts.hostname.startswith("/"):
            return None
        host, port = parts.hostname, parts.port or 5432
        try:
            return resolve_address(host, port, self.connect_timeout)
        except OSError as exc:
            raise TransientError(f"{host}:{port}: {exc.strerror or exc}") from None

    def _url(self) -> Any:
        if not self.conninfo.startswith(("postgres://", "postgresql://")):
            return None
        try:
            parts = urlsplit(self.conninfo)
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError:
            return None
        return parts

    def _password(self) -> str:
        parts = self._url()
        if parts is not None:
            return unquote(parts.password or "")
        found = re.search(r"password\s*=\s*(\S+)", self.conninfo)
        return found.group(1).strip("'") if found else ""

    def _use_wire(self) -> bool:
        if self.client != "auto":
            return self.client == "wire"
        # envkit's own servers only (the provider hands over their pid file): anything else may
        # need what only libpq has (TLS, .pgpass, PG* variables, a default user).
        parts = self._url()
        return (
            self.pidfile is not None
            and parts is not None
            and not parts.query
            and bool(parts.hostname and parts.username and parts.password)
        )

    def _check_with_wire(self, address: tuple[str, int] | None) -> None:
        from envkit.wire import WireError, connect

        parts = self._url()
        if parts is None:
            raise ProbeError("the wire client needs a postgresql:// URL")
        host, port = address or (unquote(parts.hostname or "localhost"), parts.port or 5432)
        user = unquote(parts.username or "")
        try:
            with connect(
                host,
                port,
                user,
                unquote(parts.path.lstrip("/")) or user,
                password=self._password() or None,
                timeout=self.connect_timeout,
            ) as session:
                session.query("SELECT 1")
                if self.require_rows:
                    try:
                        rows = session.query(self.require_rows)
                    except WireError as exc:
                        if exc.sqlstate in _NOT_YET_SQLSTATES:
                            raise TransientError(f"not yet: {exc}") from None
                        raise PostgresProbeError(f"the readiness query failed: {exc}") from None
                    if not rows:
                        raise TransientError(f"query returned no rows: {self.require_rows}")
        except WireError as exc:
            where = f"{parts.hostname}:{port}"
            if exc.sqlstate in _TRANSIENT_SQLSTATES:
                raise TransientError(f"{where}: {exc}") from None
            raise PostgresProbeError(f"{where}: {exc}") from None
        except OSError as exc:  # refused, reset, timed out
            raise TransientError(f"{parts.hostname}:{port}: {exc.strerror or exc}") from None

    def _check_with_psycopg(self) -> None:
        import psycopg

        try:
            with psycopg.connect(
                self.conninfo, connect_timeout=max(1, round(self.connect_timeout)), autocommit=True
            ) as conn:
                conn.execute("SELECT 1")
                if self.require_rows:
                    try:
                        row = conn.execute(self.require_rows.encode()).fetchone()
                    except psycopg.Error as exc:
                        if getattr(exc, "sqlstate", None) in _NOT_YET_SQLSTATES:
                            raise TransientError(f"not yet: {describe(exc)}") from None
                        raise PostgresProbeError(
                            f"the readiness query failed: {describe(exc)}"
                        ) from None
                    if row is None:
                        raise TransientError(f"query returned no rows: {self.require_rows}")
        except psycopg.OperationalError as exc:
            if is_transient_pg_error(exc):
                raise TransientError(describe(exc)) from None
            raise PostgresProbeError(describe(exc)) from None


__all__ = ["PostgresProbe", "PostgresProbeError", "is_transient_pg_error"]
