"""Reaping a shared server from the server alone (any machine, no local state): envkit's
databases and roles are found by name *and* mark; a pipeline is dropped when its expiry passed,
or when it was left half-created (not ready) longer than the grace period ago and its advisory
lock is free (no creator alive). Templates and everything unmarked are left alone."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from envkit.naming import parse_iso
from envkit.reaping import Decision, ReapOptions, ReapReport
from envkit.shared_server import catalogue
from envkit.shared_server.catalogue import Entry
from envkit.shared_server.dsn import Dsn, resolve
from envkit.shared_server.names import lock_key
from envkit.shared_server.placement import _drop
from envkit.shared_server.session import Session, SqlError, connect

HALF_CREATED_GRACE = timedelta(minutes=10)
KIND = "database-server"


def reap_server(admin_dsn: str, options: ReapOptions) -> ReapReport:
    """Drop the expired and the abandoned pipelines' databases and roles on the server; with
    ``options.dry_run`` only say which (no lock taken, nothing written)."""
    dsn = resolve(admin_dsn)
    report = ReapReport(dry_run=options.dry_run)
    with connect(dsn, application="envkit reap") as session:
        groups: dict[str, list[Entry]] = defaultdict(list)
        for entry in catalogue.entries(session):
            if entry.mark is not None and entry.mark.kind not in catalogue.NOT_PIPELINES:
                groups[entry.mark.pipeline_id].append(entry)
        for pipeline_id, found in sorted(groups.items()):
            _reap_one(session, dsn, pipeline_id, found, options, report)
    return report


def decide(found: list[Entry], options: ReapOptions, *, locked: bool) -> Decision:
    """Whether to drop a pipeline's objects, and why (shown to users)."""
    marks = [e.mark for e in found if e.mark is not None]
    primary = next((m for m in marks if m.kind == "database"), marks[0])
    grace = options.older_than or timedelta(0)
    expires = _when(primary.expires_at)
    if locked:
        return Decision(False, "busy: an envkit holds its lock on the server")
    if expires is not None and options.now - expires >= grace:
        return Decision(True, f"expired at {primary.expires_at}")
    created = _when(primary.created_at)
    half = primary.status == catalogue.CREATING or not any(m.kind == "database" for m in marks)
    if half:
        wait = options.older_than if options.older_than is not None else HALF_CREATED_GRACE
        if created is None or options.now - created >= wait:
            return Decision(True, "left half-created by an envkit that is gone")
        return Decision(False, f"being created (for less than {wait})")
    return Decision(False, f"{primary.status} until {primary.expires_at}")


def _reap_one(
    session: Session,
    dsn: Dsn,
    pipeline_id: str,
    found: list[Entry],
    options: ReapOptions,
    report: ReapReport,
) -> None:
    key = lock_key("pipeline", pipeline_id)
    names = sorted(f"{e.object} {e.name}" for e in found)
    entry: dict[str, object] = {
        "pipeline_id": pipeline_id,
        "kind": KIND,
        "server": dsn.reference(),
        "resources": names,
    }
    try:
        if options.dry_run:
            decision = decide(found, options, locked=_lock_held(session, key))
            report.add("reaped" if decision.reap else "kept", {**entry, "reason": decision.reason})
            return
        got = session.query(f"SELECT pg_try_advisory_lock({key})")[0][0] == "t"
        try:
            decision = decide(found, options, locked=not got)
            if decision.reap:
                _drop(session, pipeline_id)
            report.add("reaped" if decision.reap else "kept", {**entry, "reason": decision.reason})
        finally:
            if got:
                session.query(f"SELECT pg_advisory_unlock({key})")
    except SqlError as exc:
        report.add("errors", {**entry, "error": str(exc)})


def _lock_held(session: Session, key: int) -> bool:
    """Whether some session holds the advisory lock ``key`` (read from pg_locks: no lock taken)."""
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    rows = session.query(
        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
        f"AND classid = {high}::bigint::oid AND objid = {low}::bigint::oid AND objsubid = 1"
    )
    return bool(rows)


def _when(text: str) -> datetime | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None
