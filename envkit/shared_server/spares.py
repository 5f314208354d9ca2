"""Spare databases on a shared server: per template (and for the empty database), a few ready
clones, so that ``create_database`` turns one into the pipeline's with renames instead of
cloning on its critical path.

A spare ``envkit-sp-<pool>-<8 hex>`` is a database and a NOLOGIN role of that name owning it:
cloned from the template, its objects reassigned to the role, ``CONNECT``/``TEMPORARY`` revoked
from ``PUBLIC``, the admin a member of the role (PostgreSQL 16+ needs that), both marked
``kind: spare`` (``extra``: the template). A claimer takes a spare under its pipeline's lock and
the spare's own try-lock (two claimers never get one spare), then in ONE statement list (one
implicit transaction: all or nothing) renames the role to the pipeline's, gives it ``LOGIN`` and
its password's SCRAM verifier, renames the database and writes the pipeline's marks.

Spares are made only under the pool's advisory lock (by the detached refill,
:mod:`envkit.shared_server.refill`): a spare not ready while that lock is free was left by a
refill that died; the next refill or ``reap`` drops it.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass

from envkit.shared_server import catalogue
from envkit.shared_server.catalogue import Mark, parse_mark
from envkit.shared_server.dsn import Dsn
from envkit.shared_server.locks import try_lock, unlock
from envkit.shared_server.names import SPARE_RE, ident, literal, lock_key, spare_name
from envkit.shared_server.session import Session, SqlError, connect

KIND = "spare"
CLAIM_TRIES = 3  # spares that failed to convert before falling back to a clone of the template
UNDEFINED_OBJECT = "42704"  # the spare's role is gone: another claimer took it since the survey


@dataclass(frozen=True)
class Spare:
    """A spare found on the server: its database and role marks (``None``: absent/unmarked)."""

    name: str
    pool: str
    database: Mark | None
    role: Mark | None
    has_database: bool
    has_role: bool
    owner: str | None = None  # of the database

    @property
    def mark(self) -> Mark | None:
        return self.database or self.role

    @property
    def ready(self) -> bool:
        return all(
            m is not None and m.kind == KIND and m.status == catalogue.READY
            for m in (self.database, self.role)
        )

    @property
    def template(self) -> str:
        """The template it was cloned from (``""``: the empty pool)."""
        return self.mark.extra if self.mark is not None else ""

    @property
    def envkits(self) -> bool:
        """Whether envkit made it: every object that exists carries a spare mark, but for a
        database killed before its mark whose owner is the marked role of its name."""
        role = self.role is not None and self.role.kind == KIND
        if self.has_role and not role:
            return False
        if not self.has_database:
            return role
        if self.database is not None:
            return self.database.kind == KIND
        return role and self.owner == self.name


def pool_lock(pool: str) -> int:
    return lock_key("pool", pool)


def spare_lock(name: str) -> int:
    return lock_key("spare", name)


def survey(session: Session, pool: str | None = None) -> list[Spare]:
    """The spares on the server (of ``pool`` only, when given), with their marks."""
    like = literal(f"envkit-sp-{pool}-%" if pool else "envkit-sp-%")
    rows = session.query(
        "SELECT 'database', datname, shobj_description(oid, 'pg_database'), "
        f"pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE {like} UNION ALL "
        "SELECT 'role', rolname, shobj_description(oid, 'pg_authid'), NULL FROM pg_roles "
        f"WHERE rolname LIKE {like}"
    )
    found: dict[str, dict[str, Mark | None]] = {}
    owners: dict[str, str | None] = {}
    for obj, name, comment, owner in rows:
        if name is not None and SPARE_RE.fullmatch(name):
            found.setdefault(name, {})[str(obj)] = parse_mark(comment)
            if obj == "database":
                owners[name] = owner
    spares = []
    for name, objects in sorted(found.items()):
        match = SPARE_RE.fullmatch(name)
        assert match is not None
        spares.append(
            Spare(name, match["pool"], objects.get("database"), objects.get("role"),
                  "database" in objects, "role" in objects, owners.get(name))
        )
    return spares


def claim(
    session: Session,
    pool: str,
    template: str | None,
    *,
    role: str,
    database: str,
    verifier: str,
    role_mark: Mark,
    database_mark: Mark,
) -> str | None:
    """Turn a ready spare of ``pool`` into the pipeline's ``role`` and ``database`` (the caller
    holds the pipeline's lock); the spare's name, or ``None`` when there was none to take."""
    candidates = [
        s.name for s in survey(session, pool) if s.ready and s.template == (template or "")
    ]
    random.shuffle(candidates)  # concurrent claimers start at different spares
    tries = 0
    for name in candidates:
        key = spare_lock(name)
        if not try_lock(session, key):
            continue  # another claimer's, or reap's
        try:
            # One implicit transaction: a failure (claimed meanwhile: the names are gone) leaves
            # the spare as it was. Unlocked only after the commit, never inside it.
            session.query(
                f"ALTER ROLE {ident(name)} RENAME TO {ident(role)}; "
                f"ALTER ROLE {ident(role)} LOGIN PASSWORD {literal(verifier)}; "
                f"ALTER DATABASE {ident(name)} RENAME TO {ident(database)}; "
                f"{catalogue.mark_sql('role', role, role_mark)}; "
                f"{catalogue.mark_sql('database', database, database_mark)}"
            )
            return name
        except SqlError as exc:
            if exc.sqlstate != UNDEFINED_OBJECT:  # not merely taken since the survey
                tries += 1
                if tries >= CLAIM_TRIES:
                    return None
        finally:
            unlock(session, key)
    return None


def template_ready(session: Session, template: str | None) -> str | None:
    """The ``created_at`` of ``template`` when it is a ready envkit template (``""`` for the
    empty pool, which has none); ``None`` when it is not."""
    if not template:
        return ""
    entry = catalogue.find(session, "database", template)
    mark = entry.mark if entry is not None else None
    if mark is None or mark.kind != "template" or mark.status != catalogue.READY:
        return None
    return mark.created_at


def make(session: Session, dsn: Dsn, pool: str, template: str | None, owner: str, now: str
         ) -> str:
    """Make one spare of ``pool`` (the caller holds the pool's lock); its name."""
    name = spare_name(pool, secrets.token_hex(4))
    quoted = ident(name)
    mark = Mark(KIND, "", owner, "", catalogue.CREATING, now, template or "")
    session.query(
        f"CREATE ROLE {quoted} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE; "
        f"{catalogue.mark_sql('role', name, mark)}; GRANT {quoted} TO CURRENT_USER"
    )
    source = f" TEMPLATE {ident(template)}" if template else ""
    session.query(f"CREATE DATABASE {quoted} OWNER {quoted}{source}")
    session.query(
        f"REVOKE CONNECT, TEMPORARY ON DATABASE {quoted} FROM PUBLIC; "
        f"{catalogue.mark_sql('database', name, mark)}"
    )
    if template:
        with connect(dsn, name, application="envkit refill") as inside:
            inside.query(
                f"REASSIGN OWNED BY {ident(template)} TO {quoted}; "
                f"REVOKE ALL ON SCHEMA public FROM {ident(template)}"
            )
    ready = mark.with_(status=catalogue.READY)
    session.query(
        f"{catalogue.mark_sql('database', name, ready)}; {catalogue.mark_sql('role', name, ready)}"
    )
    return name


def drop(session: Session, spare: Spare) -> None:
    """Drop a spare's database (connections ended) and role; only when envkit made it."""
    if not spare.envkits:
        return
    if spare.has_database:
        session.query(f"DROP DATABASE IF EXISTS {ident(spare.name)} WITH (FORCE)")
    if spare.has_role:
        session.query(f"DROP ROLE IF EXISTS {ident(spare.name)}")
