"""Reaping a shared server from the server alone (any machine, no local state): envkit's
databases and roles are found by name *and* mark; a pipeline is dropped when its expiry passed,
or when it was left half-created (not ready) longer than the grace period ago and its advisory
lock is free (no creator alive). Spares are dropped when they are more than the pool's size,
when their template is gone or newer than they are, or when left half-made (the pool's lock free,
older than the grace period). Templates are dropped (with their spares) when their expiry
passed: ``template_ttl`` after an ``up`` last used them. Everything unmarked is left alone."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from envkit.naming import parse_iso
from envkit.reaping import Decision, ReapOptions, ReapReport
from envkit.shared_server import catalogue, spares
from envkit.shared_server.catalogue import Entry
from envkit.shared_server.dsn import Dsn, resolve
from envkit.shared_server.locks import lock_held, trying
from envkit.shared_server.names import ident, lock_key, pool_name
from envkit.shared_server.placement import _drop
from envkit.shared_server.session import Session, SqlError, connect
from envkit.shared_server.spares import Spare

HALF_CREATED_GRACE = timedelta(minutes=10)
KIND = "database-server"
SPARE_KIND = "database-server-spare"
POOL_SIZE = 2  # settings.spares' default


TEMPLATE_KIND = "database-server-template"


def reap_server(admin_dsn: str, options: ReapOptions, *, pool_size: int = POOL_SIZE) -> ReapReport:
    """Drop the expired and the abandoned pipelines' databases and roles on the server, and the
    spares beyond ``pool_size`` per pool, stale or half-made; with ``options.dry_run`` only say
    which (no lock taken, nothing written)."""
    dsn = resolve(admin_dsn)
    report = ReapReport(dry_run=options.dry_run)
    with connect(dsn, application="envkit reap") as session:
        groups: dict[str, list[Entry]] = defaultdict(list)
        templates: list[Entry] = []
        for entry in catalogue.entries(session):
            if entry.mark is None:
                continue
            if entry.mark.kind not in catalogue.NOT_PIPELINES:
                groups[entry.mark.pipeline_id].append(entry)
            elif entry.mark.kind == "template" and entry.object == "database":
                templates.append(entry)
        for pipeline_id, found in sorted(groups.items()):
            _reap_one(session, dsn, pipeline_id, found, options, report)
        for template in sorted(templates, key=lambda e: e.name):
            _reap_template(session, dsn, template, options, report)
        _reap_spares(session, dsn, options, report, pool_size)
    return report


def _reap_spares(
    session: Session, dsn: Dsn, options: ReapOptions, report: ReapReport, size: int
) -> None:
    pools: dict[str, list[Spare]] = defaultdict(list)
    for spare in spares.survey(session):
        if spare.envkits:  # never what envkit did not make
            pools[spare.pool].append(spare)
    templates: dict[str, str | None] = {}
    for pool, found in sorted(pools.items()):
        busy = lock_held(session, spares.pool_lock(pool))
        doomed: list[tuple[Spare, str]] = []
        ready: list[Spare] = []
        for spare in found:
            mark = spare.mark
            created = _when(mark.created_at) if mark is not None else None
            if not spare.ready:
                grace = options.older_than if options.older_than is not None else (
                    HALF_CREATED_GRACE
                )
                if not busy and (created is None or options.now - created >= grace):
                    doomed.append((spare, "left half-made by a refill that is gone"))
                continue
            if spare.template not in templates:
                templates[spare.template] = spares.template_ready(session, spare.template)
            made = templates[spare.template]
            if made is None:
                doomed.append((spare, f"its template {spare.template} is gone"))
            elif mark is not None and made and mark.created_at < made:
                doomed.append((spare, f"older than its template {spare.template}"))
            else:
                ready.append(spare)
        ready.sort(key=lambda s: s.mark.created_at if s.mark else "", reverse=True)
        doomed += [(s, f"surplus: the pool keeps {size}") for s in ready[max(size, 0):]]
        for spare, reason in doomed:
            _reap_spare(session, dsn, spare, reason, options, report)


def _reap_spare(
    session: Session, dsn: Dsn, spare: Spare, reason: str, options: ReapOptions,
    report: ReapReport,
) -> None:
    objects = [name for name, has in (("database", spare.has_database), ("role", spare.has_role))
               if has]
    entry: dict[str, object] = {
        "resource": spare.name,
        "kind": SPARE_KIND,
        "server": dsn.reference(),
        "resources": [f"{obj} {spare.name}" for obj in objects],
        "reason": reason,
    }
    if options.dry_run:
        report.add("reaped", entry)
        return
    try:
        with trying(session, spares.spare_lock(spare.name)) as free:
            if not free:
                return  # being claimed
            spares.drop(session, spare)
        report.add("reaped", entry)
    except SqlError as exc:
        report.add("errors", {**entry, "error": str(exc)})


def _reap_template(
    session: Session, dsn: Dsn, template: Entry, options: ReapOptions, report: ReapReport
) -> None:
    """Drop a template past its expiry (unused for ``template_ttl``) and its role; its spares
    follow (their template is gone). Never while it is being built or its pool refilled."""
    assert template.mark is not None
    expires = _when(template.mark.expires_at)
    grace = options.older_than or timedelta(0)
    if expires is None or options.now - expires < grace:
        return
    entry: dict[str, object] = {
        "resource": template.name,
        "kind": TEMPLATE_KIND,
        "server": dsn.reference(),
        "resources": [f"database {template.name}", f"role {template.name}"],
        "reason": f"unused since its expiry {template.mark.expires_at}",
    }
    build, pool = lock_key("template", template.name), spares.pool_lock(pool_name(template.name))
    if options.dry_run:
        busy = lock_held(session, build) or lock_held(session, pool)
        report.add("kept" if busy else "reaped", entry)
        return
    try:
        with trying(session, build) as build_free:
            if not build_free:
                report.add("kept", {**entry, "reason": "being built or used"})
                return
            with trying(session, pool) as pool_free:
                if not pool_free:
                    report.add("kept", {**entry, "reason": "its spares are being made"})
                    return
                again = catalogue.find(session, "database", template.name)
                fresh = _when(again.mark.expires_at) if again and again.mark else None
                if fresh is None or options.now - fresh < grace:  # an up renewed it meanwhile
                    report.add("kept", {**entry, "reason": "in use again"})
                    return
                name = ident(template.name)
                session.query(f"ALTER DATABASE {name} WITH IS_TEMPLATE false")
                session.query(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                session.query(f"DROP ROLE IF EXISTS {name}")
        report.add("reaped", entry)
    except SqlError as exc:
        report.add("errors", {**entry, "error": str(exc)})


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
            decision = decide(found, options, locked=lock_held(session, key))
            report.add("reaped" if decision.reap else "kept", {**entry, "reason": decision.reason})
            return
        with trying(session, key) as free:
            decision = decide(found, options, locked=not free)
            if decision.reap:
                _drop(session, pipeline_id)
            report.add("reaped" if decision.reap else "kept", {**entry, "reason": decision.reason})
    except SqlError as exc:
        report.add("errors", {**entry, "error": str(exc)})


def _when(text: str) -> datetime | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None
