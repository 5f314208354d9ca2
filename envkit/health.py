"""Readiness: small probes, and one ``wait_until_healthy`` that owns retry, backoff and deadline.

A probe's ``check()`` returns when its component is healthy and raises otherwise. Errors that
may pass with time (connection refused, "the database system is starting up", timeouts) are
retried with exponential backoff from 2 ms; anything else (a wrong password, a missing database)
is fatal and fails the wait at once instead of waiting out the deadline. Probes run in parallel.
Nothing else in envkit calls tenacity.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from envkit.errors import EnvkitError, HealthCheckTimeoutError
from envkit.redact import scrub

FIRST_DELAY = 0.002
MAX_DELAY = 0.25


class TransientError(Exception):
    """A probe failure that may pass with time: retry."""


class Probe(Protocol):
    """Something that can tell whether one component is healthy."""

    name: str
    component: str

    def check(self) -> None:
        """Return if healthy; raise ``TransientError`` (retry) or anything else (fatal)."""
        ...


@dataclass
class ProbeResult:
    """What happened to one probe during a wait."""

    name: str
    component: str
    ok: bool = False
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None
    fatal: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "component": self.component,
            "ok": self.ok,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 4),
            "error": self.error,
            "fatal": self.fatal,
        }


@dataclass
class HealthReport:
    """Per-probe results of one wait; ``ok`` when every probe passed."""

    results: list[ProbeResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failing(self) -> list[ProbeResult]:
        return [r for r in self.results if not r.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 4),
            "probes": [r.as_dict() for r in self.results],
        }

    def summary(self) -> str:
        """One line per failing probe: component, name, attempts, last error."""
        return "\n".join(
            f"  {r.component} ({r.name}): {'failed' if r.fatal else 'not ready'} after "
            f"{r.attempts} attempt(s): {r.error}"
            for r in self.failing
        )


class HealthCheckFailedError(HealthCheckTimeoutError):
    """A probe failed fatally or the deadline passed; carries the report."""

    def __init__(self, message: str, report: HealthReport, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


def wait_until_healthy(
    probes: Sequence[Probe], *, timeout: float, secrets: Sequence[str] = ()
) -> HealthReport:
    """Run every probe in parallel until all pass, one fails fatally, or ``timeout`` passes.

    Returns the report when all passed; raises ``HealthCheckFailedError`` carrying it otherwise.
    ``secrets`` are scrubbed from every recorded error message.
    """
    import tenacity

    started = time.monotonic()
    deadline = started + timeout
    stop_all = threading.Event()
    results = [ProbeResult(p.name, p.component) for p in probes]

    def run(probe: Probe, result: ProbeResult) -> None:
        def attempt() -> None:
            if stop_all.is_set():
                return
            result.attempts += 1
            try:
                probe.check()
            except TransientError as exc:
                result.error = scrub(str(exc), list(secrets))
                raise
            except Exception as exc:
                result.error = scrub(_describe(exc), list(secrets))
                result.fatal = True
                stop_all.set()
                return
            result.ok = True
            result.error = None

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=tenacity.wait_exponential(multiplier=FIRST_DELAY, min=FIRST_DELAY, max=MAX_DELAY),
            stop=tenacity.stop_any(
                tenacity.stop_when_event_set(stop_all),
                _stop_at(deadline),
            ),
            reraise=True,
        )
        with contextlib.suppress(TransientError):  # its last error is in the result
            retrying(attempt)
        result.seconds = time.monotonic() - started

    threads = [
        threading.Thread(target=run, args=(p, r), daemon=True, name=f"probe-{p.name}")
        for p, r in zip(probes, results, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5.0)
    report = HealthReport(results, time.monotonic() - started)
    if report.ok:
        return report
    fatal = [r for r in report.failing if r.fatal]
    if fatal:
        message = "A health check failed (not retried: waiting would not help):"
    else:
        message = f"Not every component became healthy within {timeout:.0f}s:"
    raise HealthCheckFailedError(
        f"{message}\n{report.summary()}",
        report,
        hint="Look at the component's log ('envkit status ID' shows where) and fix it, or raise "
        "the deadline with --timeout / ENVKIT_HEALTH_TIMEOUT.",
    )


def _stop_at(deadline: float) -> Any:
    import tenacity

    class _StopAt(tenacity.stop.stop_base):
        def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
            return time.monotonic() >= deadline

    return _StopAt()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


# -- built-in probes ------------------------------------------------------------------------

# SQLSTATEs (and libpq message fragments) that can pass with time.
_TRANSIENT_SQLSTATES = {"57P03", "53300", "08001", "08006", "08004"}
_TRANSIENT_TEXT = (
    "connection refused",
    "starting up",
    "timeout",
    "timed out",
    "could not translate host name",
    "no such file or directory",
    "server closed the connection",
    "shutting down",
    "connection reset",
    "is the server running",
    "temporary failure in name resolution",
    "no route to host",
    "too many connections",
    "in recovery mode",
)


@dataclass
class PostgresProbe:
    """psycopg connect + ``SELECT 1`` (and optionally a query that must return rows)."""

    conninfo: str
    component: str = "database"
    name: str = "postgres"
    require_rows: str | None = None
    connect_timeout: float = 2.0
    psql: Path | None = None  # use this client when psycopg is not loaded yet (much cheaper)

    def check(self) -> None:
        import sys

        if self.psql is not None and "psycopg" not in sys.modules:
            self._check_with_psql(self.psql)
            return
        import psycopg

        try:
            with psycopg.connect(
                self.conninfo, connect_timeout=max(1, int(self.connect_timeout)), autocommit=True
            ) as conn:
                conn.execute("SELECT 1")
                if (
                    self.require_rows
                    and conn.execute(self.require_rows.encode()).fetchone() is None
                ):
                    raise TransientError(f"query returned no rows: {self.require_rows}")
        except psycopg.OperationalError as exc:
            if is_transient_pg_error(exc):
                raise TransientError(_describe(exc)) from exc
            raise

    def _check_with_psql(self, psql: Path) -> None:
        from urllib.parse import unquote, urlsplit

        from envkit.pgserver import run_psql

        parts = urlsplit(self.conninfo)
        conninfo = {
            "host": parts.hostname,
            "port": parts.port or 5432,
            "user": unquote(parts.username or ""),
            "dbname": parts.path.lstrip("/"),
        }
        password = unquote(parts.password) if parts.password else None
        sql = "SELECT 1;\n" + (f"{self.require_rows};\n" if self.require_rows else "")
        try:
            result = run_psql(
                psql, conninfo, sql, password=password, timeout=self.connect_timeout + 3
            )
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"psql timed out after {exc.timeout:.0f}s") from None
        if result.returncode == 0:
            if self.require_rows and len(result.stdout.split()) < 2:
                raise TransientError(f"query returned no rows: {self.require_rows}")
            return
        message = (result.stderr.strip().splitlines() or ["psql failed"])[-1]
        if _text_is_transient(message):
            raise TransientError(message)
        raise PostgresProbeError(message)


class PostgresProbeError(Exception):
    """A fatal PostgreSQL probe failure reported by psql."""


def _text_is_transient(text: str) -> bool:
    lowered = text.lower()
    if "password authentication failed" in lowered or "does not exist" in lowered:
        return False
    return any(fragment in lowered for fragment in _TRANSIENT_TEXT)


def is_transient_pg_error(exc: Exception) -> bool:
    """Whether a psycopg error may pass by waiting (vs. bad credentials, missing database)."""
    state = getattr(exc, "sqlstate", None)
    if state:
        return state in _TRANSIENT_SQLSTATES
    return _text_is_transient(str(exc))


@dataclass
class TcpProbe:
    """The port accepts a TCP connection."""

    host: str
    port: int
    component: str = "network"
    name: str = "tcp"
    timeout: float = 1.0

    def check(self) -> None:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout):
                return
        except OSError as exc:
            raise TransientError(f"{self.host}:{self.port}: {exc.strerror or exc}") from exc


__all__ = [
    "EnvkitError",
    "HealthCheckFailedError",
    "HealthReport",
    "PostgresProbe",
    "Probe",
    "ProbeResult",
    "TcpProbe",
    "TransientError",
    "wait_until_healthy",
]
