"""Seeded template databases on a shared server: one per dataset content hash, built once under
an advisory lock of its own (builds of other datasets never wait for it), then cloned by
``CREATE DATABASE … TEMPLATE`` per pipeline.

The template database belongs to the admin; the tables in it belong to a per-template NOLOGIN
role (same name), so that each clone can hand them to its pipeline's role with ``REASSIGN OWNED``
— the pipeline's role owns its tables, as with a dedicated server. The template is marked
``datistemplate`` and ``datallowconn = false``: nobody can connect to it and change what every
later clone gets.

A template's mark carries an expiry: ``template_ttl`` (ENVKIT_TEMPLATE_TTL, 7 days) after it was
last used, pushed forward by an ``up`` that finds it more than a day old (one write a day, not
one per ``up``). ``reap --database-server`` drops templates past it, as the local provider drops
templates unused that long.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from envkit.errors import ProvisionError
from envkit.naming import iso_utc, parse_iso
from envkit.redact import scrub
from envkit.seeding import datasets
from envkit.seeding.pipeline import scale_of
from envkit.seeding.pipeline import template_name as dataset_key
from envkit.settings import Settings
from envkit.shared_server import catalogue
from envkit.shared_server.catalogue import Mark
from envkit.shared_server.dsn import Dsn
from envkit.shared_server.locks import holding
from envkit.shared_server.names import ident, lock_key, template_name
from envkit.shared_server.session import Session, SqlError, connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Template:
    """A ready template: its name (database and role), the dataset key, the load statistics."""

    name: str
    key: str
    stats: dict[str, float]
    mark: Mark | None = None


KEEP_STEP = timedelta(days=1)  # how stale a template's expiry may get before an up pushes it


def ensure_template(
    session: Session,
    dsn: Dsn,
    settings: Settings,
    dataset: str,
    *,
    progress: Callable[[str], None],
) -> Template:
    """The ready template of ``dataset`` on the server, built first when there is none."""
    definition = datasets.load(settings, dataset)
    scale = scale_of(settings)
    key = dataset_key(definition, scale)
    name = template_name(key)
    found = _ready(session, name, key)
    if found is not None:
        _keep(session, found, settings)
        return found
    with holding(session, lock_key("template", name)):
        found = _ready(session, name, key)  # built by another envkit while this one waited
        if found is not None:
            return found
        progress("dataset template")
        return _build(session, dsn, settings, name, key, definition, scale)


def _ready(session: Session, name: str, key: str) -> Template | None:
    entry = catalogue.find(session, "database", name)
    if entry is None or entry.mark is None or entry.mark.kind != "template":
        return None
    if entry.mark.status != catalogue.READY:
        return None
    try:
        stats = {k: float(v) for k, v in json.loads(entry.mark.extra or "{}").items()}
    except (ValueError, TypeError, AttributeError):
        stats = {}
    return Template(name, key, stats, entry.mark)


def _keep(session: Session, template: Template, settings: Settings) -> None:
    """Push the template's expiry to ``template_ttl`` from now when it is a day stale."""
    from envkit.state import utcnow

    mark = template.mark
    if mark is None:
        return
    now = utcnow()
    try:
        expires = parse_iso(mark.expires_at) if mark.expires_at else None
    except ValueError:
        expires = None
    if expires is not None and expires - now >= settings.template_ttl - KEEP_STEP:
        return
    renewed = mark.with_(expires_at=iso_utc(now + settings.template_ttl))
    try:  # best effort: another up renewing it at the same moment is as good
        session.query(catalogue.mark_sql("database", template.name, renewed))
    except SqlError as exc:
        log.info("could not renew the expiry of template %s: %s", template.name, exc)


def _build(
    session: Session,
    dsn: Dsn,
    settings: Settings,
    name: str,
    key: str,
    definition: datasets.Dataset,
    scale: float,
) -> Template:
    quoted = ident(name)
    from envkit.state import utcnow

    expires = iso_utc(utcnow() + settings.template_ttl)
    mark = Mark("template", "", settings.owner, expires, catalogue.CREATING, iso_utc_now(), key)
    existing = catalogue.find(session, "database", name)
    if existing is not None:
        if existing.mark is None or existing.mark.kind != "template":
            raise catalogue.foreign(dsn.reference(), "database", name)
        # A build that died half-way (its lock was free): start again.
        session.query(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    role = catalogue.find(session, "role", name)
    if role is None:
        session.query(
            f"CREATE ROLE {quoted} NOLOGIN; {catalogue.mark_sql('role', name, mark)}; "
            f"GRANT {quoted} TO CURRENT_USER"
        )
    elif role.mark is None or role.mark.kind != "template":
        raise catalogue.foreign(dsn.reference(), "role", name)
    session.query(f"CREATE DATABASE {quoted} TEMPLATE template0")
    session.query(
        f"REVOKE CONNECT, TEMPORARY ON DATABASE {quoted} FROM PUBLIC; "
        f"GRANT CONNECT ON DATABASE {quoted} TO {quoted}; "
        f"{catalogue.mark_sql('database', name, mark)}"
    )
    with connect(dsn, name) as inside:
        # PostgreSQL 15+: public belongs to the database's owner (the admin here).
        inside.query(f"GRANT USAGE, CREATE ON SCHEMA public TO {quoted}")
    from envkit.seeding.loading import load_dataset

    conninfo = dict(dsn.psycopg_kwargs(name), options=f"-c role={name}")
    try:
        stats = load_dataset(conninfo, definition, scale)
    except Exception as exc:
        secrets = [dsn.password] if dsn.password else []
        raise ProvisionError(
            f"Loading dataset {definition.name!r} into the template {name} on "
            f"{dsn.reference()} failed: {scrub(str(exc), secrets)}"
        ) from None
    stats["scale"] = scale
    done = mark.with_(status=catalogue.READY, extra=json.dumps(stats, sort_keys=True))
    session.query(f"ALTER DATABASE {quoted} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
    session.query(catalogue.mark_sql("database", name, done))
    return Template(name, key, {k: float(v) for k, v in stats.items()}, done)


def iso_utc_now() -> str:
    from envkit.state import utcnow

    return iso_utc(utcnow())
