"""Readiness: small probes, and one ``wait_until_healthy`` that owns retry, backoff and deadline.

A probe's ``check()`` returns when its component is healthy and raises otherwise. Errors that
may pass with time (connection refused, DNS, timeouts, "the database system is starting up")
raise :class:`TransientError` and are retried with exponential backoff from 2 ms up to the
probe's cap; anything else (a wrong password, a missing database) is fatal and fails the whole
wait at once instead of waiting out the deadline. Probes run in parallel, one thread each.
Nothing else in envkit calls tenacity.

Built-in probes: :class:`PostgresProbe`, :class:`TcpProbe`, :class:`HttpProbe`,
:class:`CommandProbe`, :class:`RdsInstanceProbe` and :class:`EcsServicesProbe` (boto3 imported
inside the check). :func:`probe_from_spec` builds one from an environment spec's entry.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote, urlsplit

from envkit.errors import ConfigError, EnvkitError, HealthCheckTimeoutError
from envkit.redact import MASK, is_secret_key, redact_url, scrub

log = logging.getLogger(__name__)

FIRST_DELAY = 0.002
"""The first wait between attempts (seconds); it doubles per attempt up to the probe's cap."""
MAX_DELAY = 0.25
"""The cap for probes that do not declare their own ``max_delay``."""
JOIN_GRACE = 1.0
"""How long past the deadline to wait for an attempt already running before giving up on it."""


class TransientError(Exception):
    """A probe failure that may pass with time: retry."""


class ProbeError(Exception):
    """A fatal probe failure (waiting would not help); its message is shown in the report."""


class PostgresProbeError(ProbeError):
    """A fatal PostgreSQL probe failure (bad password, missing database or role)."""


class Probe(Protocol):
    """Something that can tell whether one component is healthy.

    A probe may also have a ``max_delay`` attribute (seconds): the cap of its backoff. Cheap
    local checks use a few ms (they decide the detection lag); cloud APIs with rate limits use
    seconds. Without it, :data:`MAX_DELAY` applies.
    """

    name: str
    component: str

    def check(self) -> None:
        """Return if healthy; raise ``TransientError`` (retry) or anything else (fatal)."""
        ...


# -- the report -------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    """What happened to one probe during a wait.

    ``seconds`` is the time to ready when ``ok``, otherwise the time until the probe gave up.
    ``error`` is the last error, already scrubbed of secrets.
    """

    name: str
    component: str
    ok: bool = False
    attempts: int = 0
    seconds: float = 0.0
    error: str | None = None
    fatal: bool = False

    @property
    def status(self) -> str:
        """``ok``, ``failed`` (a fatal error) or ``not ready`` (still failing at the end)."""
        if self.ok:
            return "ok"
        return "failed" if self.fatal else "not ready"

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of one probe's result."""
        return {
            "name": self.name,
            "component": self.component,
            "ok": self.ok,
            "status": self.status,
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
        """Whether every probe passed."""
        return all(r.ok for r in self.results)

    @property
    def failing(self) -> list[ProbeResult]:
        """The probes that did not pass."""
        return [r for r in self.results if not r.ok]

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of the report (``envkit wait --json``, the event log)."""
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 4),
            "probes": [r.as_dict() for r in self.results],
        }

    def timings(self) -> dict[str, float]:
        """Time to ready per passed probe, keyed ``health.<component>`` (plus ``.<name>`` when a
        component has several probes), for the record's timings."""
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.component] = counts.get(r.component, 0) + 1
        return {
            (
                f"health.{r.component}"
                if counts[r.component] == 1
                else f"health.{r.component}.{r.name}"
            ): round(r.seconds, 4)
            for r in self.results
            if r.ok
        }

    def summary(self) -> str:
        """One line per failing probe: component, name, attempts, last error."""
        return "\n".join(
            f"  {r.component} ({r.name}): {r.status} after {r.attempts} attempt(s) in "
            f"{r.seconds:.2f}s: {r.error or 'no answer'}"
            for r in self.failing
        )


class HealthCheckFailedError(HealthCheckTimeoutError):
    """A probe failed fatally or the deadline passed; carries the report.

    ``message`` holds the headline and one line per failing probe (what the library and the
    record show); ``headline`` is the first line alone, for renderers that show a table.
    """

    def __init__(
        self, message: str, report: HealthReport, *, headline: str, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.report = report
        self.headline = headline

    @property
    def fatal(self) -> bool:
        """Whether a probe failed fatally (rather than the deadline passing)."""
        return any(r.fatal for r in self.report.results)


# -- waiting ----------------------------------------------------------------------------------


def backoff_delay(attempt: int, *, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): ``first`` doubling to ``cap``."""
    return min(cap, first * 2.0 ** min(max(attempt - 1, 0), 60))


def probe_cap(probe: Probe, override: float | None = None) -> float:
    """The backoff cap of ``probe``: the override, else what its ``current_max_delay()`` says
    now (a probe that learns how long to wait), else its ``max_delay``, else the default."""
    if override is not None:
        return override
    current = getattr(probe, "current_max_delay", None)
    cap = current() if callable(current) else getattr(probe, "max_delay", None)
    return float(cap) if isinstance(cap, int | float) and cap > 0 else MAX_DELAY


def wait_until_healthy(
    probes: Sequence[Probe],
    *,
    timeout: float,
    secrets: Sequence[str] = (),
    first_delay: float = FIRST_DELAY,
    max_delay: float | None = None,
) -> HealthReport:
    """Run every probe in parallel until all pass, one fails fatally, or ``timeout`` passes.

    Returns the report when all passed; raises ``HealthCheckFailedError`` carrying it otherwise.
    ``secrets`` are scrubbed from every recorded error message (passwords in URLs always are).
    ``max_delay``, when given, caps every probe's backoff instead of its own ``max_delay``.
    """
    started = time.monotonic()
    deadline = started + timeout
    stop_all = threading.Event()  # set on a fatal failure: the others stop at once
    results = [ProbeResult(p.name, p.component) for p in probes]
    secret_list = [s for s in secrets if s]

    def clean(text: str) -> str:
        return redact_text(scrub(text, secret_list))

    def run(probe: Probe, result: ProbeResult) -> None:
        def attempt() -> None:
            if stop_all.is_set():
                return
            result.attempts += 1
            try:
                probe.check()
            except TransientError as exc:
                result.error = clean(str(exc))
                raise
            except Exception as exc:
                result.error = clean(describe(exc))
                result.fatal = True
                stop_all.set()
                return
            result.ok = True
            result.error = None

        try:
            try:
                # The first attempt needs no retry machinery: when it passes (the usual case
                # on `envkit up`, which starts probing once the server says it is ready),
                # tenacity is never imported, ~12 ms of CPU saved per process.
                attempt()
            except TransientError:
                retry(attempt, probe)
        except TransientError:
            pass  # its last error is in the result
        except BaseException as exc:  # a bug in the probe machinery: report it, never hang
            result.error = clean(describe(exc))
            result.fatal = True
            stop_all.set()
        result.seconds = time.monotonic() - started
        if result.ok:
            log.debug("%s (%s) ready after %.4fs", probe.component, probe.name, result.seconds)

    def retry(attempt: Callable[[], None], probe: Probe) -> None:
        """Attempts 2, 3, …: tenacity, backing off from ``first_delay`` to ``cap``, stopping at
        the deadline or when another probe failed fatally."""
        import tenacity

        def delay_after(attempt_number: int) -> float:
            # Never sleep past the deadline: the last attempt happens right at it.
            cap = probe_cap(probe, max_delay)  # asked every time: it may change
            delay = backoff_delay(attempt_number, first=first_delay, cap=cap)
            return max(0.0, min(delay, deadline - time.monotonic()))

        def wait(state: tenacity.RetryCallState) -> float:
            # Attempt 1 ran before tenacity: tenacity's count is one behind the probe's.
            return delay_after(state.attempt_number + 1)

        def finished() -> bool:
            return stop_all.is_set() or time.monotonic() >= deadline

        def nap(seconds: float) -> None:
            stop_all.wait(seconds)  # a fatal failure elsewhere wakes sleeping probes at once

        if finished():
            return
        nap(delay_after(1))
        tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            wait=wait,
            stop=lambda state: finished(),
            sleep=nap,
            reraise=True,
        )(attempt)

    threads = [
        threading.Thread(target=run, args=(p, r), daemon=True, name=f"probe-{p.name}")
        for p, r in zip(probes, results, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()) + JOIN_GRACE)
    finally:
        stop_all.set()  # also on KeyboardInterrupt: no probe keeps retrying behind our back
    elapsed = time.monotonic() - started
    # Snapshots: a probe whose attempt outlived the deadline keeps its thread (daemon) running.
    final = []
    for thread, result in zip(threads, results, strict=True):
        snapshot = replace(result)
        if thread.is_alive() and not snapshot.ok:
            snapshot.seconds = elapsed
            snapshot.error = (
                f"an attempt was still running at the deadline; before it: {snapshot.error}"
                if snapshot.error
                else "no answer before the deadline (the first attempt was still running)"
            )
        final.append(snapshot)
    report = HealthReport(final, elapsed)
    if report.ok:
        return report
    if any(r.fatal for r in report.failing):
        headline = "A health check failed (not retried: waiting would not help)."
        hint = "Fix what the error names (credentials, database name, command), then retry."
    else:
        headline = f"Not every component became healthy within {timeout:g}s."
        hint = (
            "Look at the component's log ('envkit status ID' shows where) and fix it, or raise "
            "the deadline with --timeout / ENVKIT_HEALTH_TIMEOUT."
        )
    raise HealthCheckFailedError(
        f"{headline}\n{report.summary()}", report, headline=headline, hint=hint
    )


_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")
_KV_PASSWORD = re.compile(r"(?i)\b(?P<key>password|passwd|pwd)\s*=\s*\S+")


def redact_text(text: str) -> str:
    """``text`` with passwords in URLs (``scheme://user:pw@``) and ``password=…`` masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _KV_PASSWORD.sub(lambda m: f"{m['key']}={MASK}", text)


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` (fatal errors' own messages are shown as they are)."""
    text = str(exc).strip().splitlines()
    first = text[0].strip() if text else ""
    if isinstance(exc, ProbeError):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}".strip().rstrip(":")


# -- PostgreSQL -------------------------------------------------------------------------------

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


def tcp_refusal(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` does not accept TCP connections, or ``None`` when it does (~50 µs).

    ``timeout`` bounds the name lookup too: ``getaddrinfo`` has no timeout of its own and can
    block for seconds when no resolver answers (a private RDS name, an offline runner).
    """
    try:
        address = _resolve(host, port, timeout)
        with socket.create_connection(address, timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def _resolve(host: str, port: int, timeout: float) -> tuple[str, int]:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host, port  # an address already: nothing to look up
    except OSError:
        pass
    found: list[tuple[str, int]] = []
    failure: list[OSError] = []

    def lookup() -> None:
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append((str(info[0][4][0]), port))
        except OSError as exc:
            failure.append(exc)

    worker = threading.Thread(target=lookup, daemon=True, name=f"resolve-{host}")
    worker.start()
    worker.join(timeout)
    if found:
        return found[0]
    if failure:
        raise failure[0]
    raise TimeoutError(f"no DNS answer for {host} within {timeout:g}s")


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
            return _resolve(host, port, self.connect_timeout)
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


# -- TCP, HTTP, command -----------------------------------------------------------------------


@dataclass
class TcpProbe:
    """tcp: the port accepts a TCP connection."""

    host: str
    port: int
    component: str = "network"
    name: str = "tcp"
    timeout: float = 1.0
    max_delay: float = 0.005

    def check(self) -> None:
        """Connect and close."""
        refused = tcp_refusal(self.host, self.port, self.timeout)
        if refused is not None:
            raise TransientError(refused)


DEFAULT_HTTP_STATUSES: frozenset[int] = frozenset(range(200, 400))
"""Success as Kubernetes' httpGet probes define it: 200 <= status < 400."""
_FATAL_HTTP_STATUSES = frozenset({401, 403, 407})  # credentials: waiting would not help
MAX_BODY = 1 << 20


@dataclass
class HttpProbe:
    """http: GET ``url``; status in ``statuses``, and optionally a body substring or JSON field.

    ``json_field`` is a dotted path (``status``, ``checks.db.0``); with ``json_value`` the field
    must equal it, without it the field must be present and truthy. Redirects are not followed
    (3xx counts as success by default). Connection errors, timeouts, DNS errors and unexpected
    statuses retry; 401/403/407 and TLS verification errors fail at once. Response bodies never
    appear in the report (they may hold secrets).
    """

    url: str
    component: str = "service"
    name: str = "http"
    statuses: Collection[int] = DEFAULT_HTTP_STATUSES
    body_contains: str | None = None
    json_field: str | None = None
    json_value: Any = None
    timeout: float = 2.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_delay: float = 0.02

    def __repr__(self) -> str:
        return f"HttpProbe(url={redact_url(self.url)!r}, component={self.component!r})"

    def check(self) -> None:
        """One GET, judged by :func:`judge_http`."""
        import http.client
        import ssl

        safe_url = redact_url(self.url)
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError:
            raise ProbeError(f"not a valid URL: {safe_url}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProbeError(f"not an http(s) URL: {safe_url}")
        headers = {"User-Agent": "envkit-health", "Connection": "close", **self.headers}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(parts.hostname, port, timeout=self.timeout)
        else:
            connection = http.client.HTTPConnection(parts.hostname, port, timeout=self.timeout)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            status, body = response.status, response.read(MAX_BODY)
        except ssl.SSLCertVerificationError as exc:
            raise ProbeError(f"{safe_url}: TLS verification failed: {exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "strerror", None) or describe(exc)
            raise TransientError(f"{safe_url}: {reason}") from None
        finally:
            connection.close()
        judge_http(
            safe_url,
            status,
            body,
            statuses=self.statuses,
            body_contains=self.body_contains,
            json_field=self.json_field,
            json_value=self.json_value,
        )


_MISSING = object()


def judge_http(
    url: str,
    status: int,
    body: bytes,
    *,
    statuses: Collection[int] = DEFAULT_HTTP_STATUSES,
    body_contains: str | None = None,
    json_field: str | None = None,
    json_value: Any = None,
) -> None:
    """Return when a response is healthy; raise ``TransientError`` or ``ProbeError`` if not."""
    if status not in statuses:
        if status in _FATAL_HTTP_STATUSES:
            raise ProbeError(f"{url}: HTTP {status} (credentials are missing or refused)")
        raise TransientError(f"{url}: HTTP {status}")
    if body_contains is not None and body_contains.encode() not in body:
        raise TransientError(f"{url}: HTTP {status}, body does not contain {body_contains!r}")
    if json_field is not None:
        try:
            document = json.loads(body)
        except ValueError:
            raise TransientError(f"{url}: HTTP {status}, body is not JSON") from None
        actual = json_path(document, json_field)
        if actual is _MISSING:
            raise TransientError(f"{url}: JSON field {json_field!r} is missing")
        if json_value is None:
            if not actual:
                raise TransientError(f"{url}: JSON field {json_field!r} is {actual!r}")
        elif actual != json_value:
            raise TransientError(
                f"{url}: JSON field {json_field!r} is {actual!r}, expected {json_value!r}"
            )


def json_path(document: Any, path: str) -> Any:
    """The value at dotted ``path`` (keys, or list indexes as digits), or a sentinel if absent."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


@dataclass
class CommandProbe:
    """command: exits 0 within ``timeout``.

    A string runs through ``/bin/sh -c`` (Docker's ``CMD-SHELL`` form); a list runs as is.
    Any other exit code retries (like ``pg_isready`` or ``curl -f`` while a service starts),
    except 126/127 and a missing executable (the command cannot run at all: fail at once).
    The command runs in its own process group, killed whole on timeout.
    """

    command: str | Sequence[str]
    component: str = "service"
    name: str = "command"
    timeout: float = 10.0
    env: Mapping[str, str] | None = field(default=None, repr=False)
    cwd: Path | None = None
    max_delay: float = 0.25

    def check(self) -> None:
        """Run the command once."""
        argv = (
            ["/bin/sh", "-c", self.command] if isinstance(self.command, str) else list(self.command)
        )
        env = {**os.environ, **(self.env or {})}
        secrets = [v for k, v in (self.env or {}).items() if is_secret_key(k) and v]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProbeError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            output, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise TransientError(f"{self.name}: no exit within {self.timeout:g}s") from None
        if proc.returncode == 0:
            return
        lines = output.decode(errors="replace").strip().splitlines()
        tail = scrub(lines[-1][:300], secrets) if lines else "(no output)"
        message = f"exit {proc.returncode}: {tail}"
        if proc.returncode in (126, 127):
            raise ProbeError(message)
        raise TransientError(message)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.communicate()


# -- AWS ------------------------------------------------------------------------------------

# RDS instance statuses that cannot turn into "available" by waiting.
RDS_FATAL_STATUSES = frozenset(
    {
        "failed",
        "deleting",
        "stopped",
        "stopping",
        "storage-full",
        "restore-error",
        "incompatible-network",
        "incompatible-option-group",
        "incompatible-parameters",
        "incompatible-restore",
        "inaccessible-encryption-credentials",
        "inaccessible-encryption-credentials-recoverable",
        "insufficient-capacity",
    }
)
_AWS_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def _aws_call(what: str, call: Callable[[], Any], not_found: Collection[str] = ()) -> Any:
    """Run one boto3 call, turning network trouble, throttling and (given) "not found yet"
    codes into ``TransientError``; other API errors (credentials, access) are fatal."""
    import botocore.exceptions as bx

    try:
        return call()
    except bx.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        text = str(exc.response.get("Error", {}).get("Message", "")) or code
        if code in not_found:
            # Just-created resources can take a moment to show up in describe calls.
            raise TransientError(f"{what}: not found (yet): {text}") from None
        if code in _AWS_TRANSIENT_CODES:
            raise TransientError(f"{what}: {code}: {text}") from None
        raise ProbeError(f"{what}: {code}: {text}") from None
    except (bx.EndpointConnectionError, bx.ConnectionError, bx.HTTPClientError) as exc:
        raise TransientError(f"{what}: {describe(exc)}") from None
    except bx.NoCredentialsError:
        raise ProbeError(
            f"{what}: no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID)"
        ) from None


def _boto_client(service: str, region: str | None) -> Any:
    import boto3

    # A session per probe: boto3's default session is not safe to share across threads.
    return boto3.session.Session(region_name=region).client(service)  # type: ignore[call-overload]


def judge_rds_status(instance_id: str, status: str) -> None:
    """Return when ``status`` is ``available``; raise ``TransientError`` or ``ProbeError``."""
    if status == "available":
        return
    if status in RDS_FATAL_STATUSES:
        raise ProbeError(f"RDS instance {instance_id} is {status!r}; it will not become available")
    raise TransientError(f"RDS instance {instance_id} is {status!r}")


@dataclass
class RdsInstanceProbe:
    """aws-rds: the RDS instance is ``available`` (boto3), then a postgres probe on its endpoint.

    The postgres probe runs when ``user`` is given and the endpoint is reachable from here; a
    CI runner outside the VPC often cannot reach it, so an unreachable endpoint passes on the
    RDS status alone unless ``require_reachable``. Polls every few seconds at most (AWS rate
    limits). ``client`` may be an existing boto3 RDS client; else one is made (``region``,
    ``AWS_ENDPOINT_URL`` and the usual credential chain apply).
    """

    instance_id: str
    component: str = "database"
    name: str = "aws-rds"
    region: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dbname: str | None = None
    require_reachable: bool = False
    reach_timeout: float = 2.0
    max_delay: float = 5.0
    client: Any = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """``describe_db_instances``, then the database itself when reachable."""
        if self.client is None:
            self.client = _boto_client("rds", self.region)
        what = f"RDS instance {self.instance_id}"
        answer = _aws_call(
            what,
            lambda: self.client.describe_db_instances(DBInstanceIdentifier=self.instance_id),
            not_found=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
        )
        instances = answer.get("DBInstances") or []
        if not instances:
            raise TransientError(f"{what}: not found (yet)")
        instance = instances[0]
        judge_rds_status(self.instance_id, str(instance.get("DBInstanceStatus", "")))
        endpoint = instance.get("Endpoint") or {}
        host, port = endpoint.get("Address"), int(endpoint.get("Port") or 5432)
        if not host:
            raise TransientError(f"{what} is available but has no endpoint yet")
        if self.user is None:
            return
        refused = tcp_refusal(host, port, self.reach_timeout)
        if refused is not None:
            if self.require_reachable:
                raise TransientError(f"{what} endpoint not reachable: {refused}")
            log.info("%s is available; its endpoint is not reachable from here (%s)", what, refused)
            return
        dbname = self.dbname or str(instance.get("DBName") or "postgres")
        conninfo = (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password or '', safe='')}"
            f"@{host}:{port}/{quote(dbname, safe='')}"
        )
        PostgresProbe(conninfo, component=self.component, client="psycopg").check()


# ECS service statuses and rollout states that waiting will not fix.
_ECS_FATAL_SERVICE_STATUSES = frozenset({"DRAINING", "INACTIVE"})
_ECS_FATAL_CLUSTER_STATUSES = frozenset({"INACTIVE", "DEPROVISIONING", "FAILED"})


def judge_ecs(cluster: Mapping[str, Any], services: Sequence[Mapping[str, Any]]) -> None:
    """Return when the cluster is ACTIVE and every service stable (running == desired, one
    deployment, nothing pending); raise ``TransientError`` or ``ProbeError`` naming what is not.
    The same rule as boto3's ``services_stable`` waiter, plus fatal states it would wait out."""
    name = cluster.get("clusterName", "?")
    status = str(cluster.get("status", ""))
    if status in _ECS_FATAL_CLUSTER_STATUSES:
        raise ProbeError(f"ECS cluster {name} is {status}")
    if status != "ACTIVE":
        raise TransientError(f"ECS cluster {name} is {status or 'unknown'}")
    waiting = []
    for service in services:
        service_name = service.get("serviceName", "?")
        service_status = str(service.get("status", ""))
        if service_status in _ECS_FATAL_SERVICE_STATUSES:
            raise ProbeError(f"ECS service {service_name} is {service_status}")
        deployments = service.get("deployments") or []
        if any(d.get("rolloutState") == "FAILED" for d in deployments):
            raise ProbeError(f"ECS service {service_name}: its deployment failed")
        running, desired = service.get("runningCount", 0), service.get("desiredCount", 0)
        pending = service.get("pendingCount", 0)
        if running != desired or pending:
            waiting.append(f"{service_name} running {running}/{desired}, pending {pending}")
        elif len(deployments) > 1:
            waiting.append(f"{service_name} has {len(deployments)} deployments in progress")
    if waiting:
        raise TransientError("ECS services not stable: " + "; ".join(waiting))


@dataclass
class EcsServicesProbe:
    """aws-ecs: the ECS cluster is ``ACTIVE`` and its services are stable (boto3).

    ``services`` names the services to wait for; empty means every service of the cluster.
    Polls every few seconds at most (AWS rate limits). ``client`` may be an existing boto3 ECS
    client; else one is made (``region``, ``AWS_ENDPOINT_URL`` and credentials apply).
    """

    cluster: str
    services: Sequence[str] = ()
    component: str = "cluster"
    name: str = "aws-ecs"
    region: str | None = None
    max_delay: float = 5.0
    client: Any = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """``describe_clusters`` + ``describe_services`` (10 at a time, the API's limit)."""
        if self.client is None:
            self.client = _boto_client("ecs", self.region)
        client = self.client
        what = f"ECS cluster {self.cluster}"
        answer = _aws_call(what, lambda: client.describe_clusters(clusters=[self.cluster]))
        clusters = answer.get("clusters") or []
        if not clusters:
            raise TransientError(f"{what}: not found (yet)")
        names = list(self.services)
        if not names and clusters[0].get("status") == "ACTIVE":
            pages = client.get_paginator("list_services").paginate(cluster=self.cluster)
            names = _aws_call(
                what, lambda: [arn for page in pages for arn in page.get("serviceArns", [])]
            )
        described: list[Mapping[str, Any]] = []
        for start in range(0, len(names), 10):
            batch = names[start : start + 10]
            answer = _aws_call(
                what, partial(client.describe_services, cluster=self.cluster, services=batch)
            )
            missing = [f.get("arn", "?") for f in answer.get("failures") or []]
            if missing:
                raise TransientError(f"{what}: service(s) not found (yet): {', '.join(missing)}")
            described.extend(answer.get("services") or [])
        judge_ecs(clusters[0], described)


# -- from an environment spec ---------------------------------------------------------------

PROBE_KINDS = ("postgres", "tcp", "http", "command", "aws-rds", "aws-ecs")


def probe_from_spec(
    spec: Mapping[str, Any],
    *,
    component: str = "service",
    host: str = "127.0.0.1",
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Probe:
    """Build a probe from one health-check entry of an environment spec.

    Exactly one kind key: ``{"http": "/health"}`` (a path is joined to ``base_url``, else to
    ``http://{host}``), ``{"tcp": 5432}`` or ``{"tcp": "host:port"}``, ``{"command": "..."}``,
    ``{"postgres": URL, "query": "..."}``, ``{"aws-rds": ID}``, ``{"aws-ecs": CLUSTER,
    "services": [...]}``. Optional keys: ``name``, ``component``, ``timeout`` (per attempt),
    and for http ``status`` (int or list), ``body`` (substring), ``json`` (``{path: value}``).
    Raise ``ConfigError`` on anything else.
    """
    kinds = [k for k in PROBE_KINDS if k in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"A health check needs exactly one of {', '.join(PROBE_KINDS)}; got "
            f"{', '.join(sorted(map(str, spec))) or 'nothing'}.",
            hint='For example {"http": "/health"}, {"tcp": 5432} or {"command": "pg_isready"}.',
        )
    kind = kinds[0]
    value = spec[kind]
    comp = str(spec.get("component", component))
    timeout = spec.get("timeout")
    try:
        probe = _build(kind, value, spec, comp, host, base_url, env)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"The {kind} health check of {comp} is invalid: {exc}",
            hint="See the 'Health checks' section of the README for the accepted forms.",
        ) from None
    if timeout is not None and hasattr(probe, "timeout"):
        setattr(probe, "timeout", _seconds(timeout))  # noqa: B010  (not in the Protocol)
    if "name" in spec:
        probe.name = str(spec["name"])
    return probe


def _build(
    kind: str,
    value: Any,
    spec: Mapping[str, Any],
    component: str,
    host: str,
    base_url: str | None,
    env: Mapping[str, str] | None,
) -> Probe:
    if kind == "tcp":
        if isinstance(value, int) and not isinstance(value, bool):
            target_host, port = host, value
        else:
            target_host, _, port_text = str(value).rpartition(":")
            target_host, port = target_host or host, int(port_text)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        return TcpProbe(target_host, port, component=component, name=f"tcp {target_host}:{port}")
    if kind == "http":
        url = str(value)
        if not url.startswith(("http://", "https://")):
            url = (base_url or f"http://{host}").rstrip("/") + "/" + url.lstrip("/")
        statuses: Collection[int] = DEFAULT_HTTP_STATUSES
        if "status" in spec:
            raw = spec["status"]
            statuses = frozenset(int(s) for s in (raw if isinstance(raw, list) else [raw]))
        json_spec = spec.get("json") or {}
        if not isinstance(json_spec, Mapping) or len(json_spec) > 1:
            raise ValueError('"json" must be one {"dotted.path": expected} pair')
        json_field, json_value = next(iter(json_spec.items()), (None, None))
        body = spec.get("body")
        return HttpProbe(
            url,
            component=component,
            name=f"http {urlsplit(url).path or '/'}",
            statuses=statuses,
            body_contains=None if body is None else str(body),
            json_field=json_field,
            json_value=json_value,
        )
    if kind == "command":
        if not isinstance(value, str | list) or not value:
            raise ValueError("command must be a non-empty string or list")
        command: str | list[str] = value if isinstance(value, str) else [str(v) for v in value]
        return CommandProbe(command, component=component, env=env)
    if kind == "postgres":
        return PostgresProbe(
            str(value), component=component, require_rows=spec.get("query") or None
        )
    if kind == "aws-rds":
        return RdsInstanceProbe(str(value), component=component, region=spec.get("region"))
    services = spec.get("services") or []
    if not isinstance(services, list):
        raise ValueError('"services" must be a list of service names')
    return EcsServicesProbe(
        str(value),
        services=[str(s) for s in services],
        component=component,
        region=spec.get("region"),
    )


def _seconds(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    from envkit.durations import parse_duration

    return parse_duration(str(value), what="health-check timeout").total_seconds()


__all__ = [
    "CommandProbe",
    "EcsServicesProbe",
    "EnvkitError",
    "HealthCheckFailedError",
    "HealthReport",
    "HttpProbe",
    "PostgresProbe",
    "PostgresProbeError",
    "Probe",
    "ProbeError",
    "ProbeResult",
    "RdsInstanceProbe",
    "TcpProbe",
    "TransientError",
    "backoff_delay",
    "probe_from_spec",
    "wait_until_healthy",
]
