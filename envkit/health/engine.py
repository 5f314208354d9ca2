"""The waiting engine: one ``wait_until_healthy`` that owns retry, backoff and deadline.

A probe's ``check()`` returns when its component is healthy and raises otherwise. Errors that
may pass with time (connection refused, DNS, timeouts, "the database system is starting up")
raise :class:`TransientError` and are retried with exponential backoff from 2 ms up to the
probe's cap; anything else (a wrong password, a missing database) is fatal and fails the whole
wait at once instead of waiting out the deadline. Probes run in parallel, one thread each, and
the :class:`HealthReport` keeps per-probe timings. Nothing else in envkit calls tenacity.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from envkit.errors import HealthCheckTimeoutError
from envkit.redact import MASK, scrub

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


__all__ = [
    "FIRST_DELAY",
    "JOIN_GRACE",
    "MAX_DELAY",
    "HealthCheckFailedError",
    "HealthReport",
    "Probe",
    "ProbeError",
    "ProbeResult",
    "TransientError",
    "backoff_delay",
    "describe",
    "probe_cap",
    "redact_text",
    "wait_until_healthy",
]
