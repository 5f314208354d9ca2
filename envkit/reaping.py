"""What a reap decides and reports: shared by the generic reaper and the providers' leftovers.

Standard library and :mod:`envkit.state` only, so the reaper and every provider can import it
without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from envkit.naming import parse_iso
from envkit.state import BUSY_STATUSES, Record

WORKERS = 8  # destroys wait on processes and file systems, not the CPU: overlap them


@dataclass(frozen=True)
class Decision:
    """What to do with one pipeline, and why (the reason is shown to users)."""

    reap: bool
    reason: str


@dataclass(frozen=True)
class ReapOptions:
    """How a reap runs: ``dry_run`` writes nothing (no lock taken or created); ``older_than``
    is a grace period (reap only what expired, or was left, at least that long ago)."""

    now: datetime
    dry_run: bool = False
    older_than: timedelta | None = None


@dataclass(frozen=True)
class Leftover:
    """Something a provider found of a pipeline of this home that has no record."""

    pipeline_id: str
    evidence: tuple[str, ...]  # what was found: "directory", "process", "address"
    since: datetime | None  # when it last changed (None: unknown, counts as old)


@dataclass
class ReapReport:
    """What a reap did (or, with ``dry_run``, would do); the shape of ``reap --json``."""

    reaped: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def add(self, bucket: str, entry: dict[str, Any] | None) -> None:
        """Append ``entry`` (when there is one) to ``reaped``, ``kept`` or ``errors``."""
        if entry is not None:
            getattr(self, bucket).append(entry)

    def merge(self, other: ReapReport) -> None:
        """Take every entry of ``other``."""
        self.reaped.extend(other.reaped)
        self.kept.extend(other.kept)
        self.errors.extend(other.errors)

    def as_json(self) -> dict[str, Any]:
        """``{"reaped": [...], "kept": [...], "errors": [...], "dry_run": bool}``."""
        return {
            "reaped": self.reaped,
            "kept": self.kept,
            "errors": self.errors,
            "dry_run": self.dry_run,
        }


def age(since: datetime | None, now: datetime) -> timedelta:
    """How long ago ``since`` was; an unknown time counts as forever."""
    return now - since if since is not None else timedelta.max


def decide(
    record: Record,
    *,
    now: datetime,
    locked: bool,
    older_than: timedelta | None = None,
) -> Decision:
    """Whether to reap the environment of ``record``.

    ``locked``: a live process holds the pipeline's lock. ``older_than``: a grace period — reap
    only what expired (or got stuck) at least that long ago.
    """
    grace = older_than or timedelta(0)
    if locked:
        return Decision(False, "busy: another envkit process holds its lock")
    if record.status in BUSY_STATUSES:
        stuck_since = _parse(record.updated_at) or _parse(record.created_at)
        if older_than is not None and age(stuck_since, now) < grace:
            return Decision(False, f"stuck in {record.status} for less than {grace}")
        return Decision(True, f"stuck in {record.status}: its owner (pid {record.owner_pid}) died")
    if record.expired(now):
        if now - record.expires < grace:
            return Decision(False, f"expired at {record.expires_at}, within --older-than")
        return Decision(True, f"expired at {record.expires_at}")
    return Decision(False, f"{record.status} until {record.expires_at}")


def decide_orphan(
    evidence: list[str], *, now: datetime, since: datetime | None, older_than: timedelta | None
) -> Decision:
    """Whether to reap leftovers of a pipeline that has no state record (``evidence`` names
    what was found: directory, process, address)."""
    if not evidence:
        return Decision(False, "nothing left")
    if older_than is not None and age(since, now) < older_than:
        return Decision(False, f"leftover younger than {older_than}")
    return Decision(True, "no state record; leftover " + ", ".join(evidence))


def _parse(text: str) -> datetime | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None
