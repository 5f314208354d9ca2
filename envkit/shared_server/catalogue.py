"""envkit's state on the shared server itself: a mark in ``COMMENT ON DATABASE`` / ``COMMENT ON
ROLE`` of everything envkit creates there, in a stable JSON form::

    {"envkit": 1, "kind": "database", "pipeline_id": "pr-42", "owner": "ci#7",
     "expires_at": "2026-01-01T12:00:00Z", "status": "ready", "created_at": "…"}

``kind`` is ``database`` (a pipeline's own), ``extra`` (a spec's extra database), ``role``,
``template`` or ``spare`` (a ready clone of a template and its role, no pipeline yet: ``extra``
names the template, empty for the empty pool). A reap from any machine finds envkit's objects
by name *and* mark: an object with an envkit-shaped name but no valid mark is not envkit's and
is never touched.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from envkit.errors import ProvisionError
from envkit.shared_server.names import ident, is_envkit_name, literal
from envkit.shared_server.session import Session

MARK_VERSION = 1
CREATING = "creating"
READY = "ready"
KINDS = ("database", "extra", "role", "template", "spare")
NOT_PIPELINES = ("template", "spare")


@dataclass(frozen=True)
class Mark:
    """What envkit knows of one object on the server."""

    kind: str
    pipeline_id: str
    owner: str
    expires_at: str
    status: str
    created_at: str
    extra: str = ""  # template: the dataset and its statistics, as JSON; spare: its template

    def to_json(self) -> str:
        data: dict[str, Any] = {"envkit": MARK_VERSION, **asdict(self)}
        if not self.extra:
            data.pop("extra")
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def with_(self, **changes: str) -> Mark:
        return replace(self, **changes)


def parse_mark(text: str | None) -> Mark | None:
    """The mark in a comment, or ``None`` when it is not envkit's."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("envkit") != MARK_VERSION:
        return None
    fields = ("kind", "pipeline_id", "owner", "expires_at", "status", "created_at")
    if not all(isinstance(data.get(key), str) for key in fields) or data["kind"] not in KINDS:
        return None
    extra = data.get("extra", "")
    kind, pipeline_id, owner, expires_at, status, created_at = (str(data[k]) for k in fields)
    return Mark(
        kind, pipeline_id, owner, expires_at, status, created_at,
        extra if isinstance(extra, str) else "",
    )


@dataclass(frozen=True)
class Entry:
    """A database or role with an envkit-shaped name, and its mark (``None``: not envkit's)."""

    object: str  # "database" or "role"
    name: str
    mark: Mark | None


def entries(session: Session) -> list[Entry]:
    """Every database and role whose name envkit could have given, with its mark."""
    rows = session.query(
        "SELECT 'database', datname, shobj_description(oid, 'pg_database') FROM pg_database "
        "WHERE datname LIKE 'envkit%' UNION ALL "
        "SELECT 'role', rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
        "WHERE rolname LIKE 'envkit%'"
    )
    return [
        Entry(str(kind), str(name), parse_mark(comment))
        for kind, name, comment in rows
        if name is not None and is_envkit_name(name)
    ]


def find(session: Session, obj: str, name: str) -> Entry | None:
    """The entry of one database or role, when it exists."""
    table, column, catalog = (
        ("pg_database", "datname", "pg_database")
        if obj == "database"
        else ("pg_roles", "rolname", "pg_authid")
    )
    rows = session.query(
        f"SELECT shobj_description(oid, '{catalog}') FROM {table} WHERE {column} = {literal(name)}"
    )
    if not rows:
        return None
    return Entry(obj, name, parse_mark(rows[0][0]))


def mark_sql(obj: str, name: str, mark: Mark) -> str:
    """``COMMENT ON DATABASE|ROLE name IS '<mark>'``."""
    keyword = "DATABASE" if obj == "database" else "ROLE"
    return f"COMMENT ON {keyword} {ident(name)} IS {literal(mark.to_json())}"


def belongs_to(entry: Entry, pipeline_id: str) -> bool:
    """Whether ``entry`` is marked as an object of ``pipeline_id`` (not a template or spare)."""
    return (
        entry.mark is not None
        and entry.mark.kind not in NOT_PIPELINES
        and entry.mark.pipeline_id == pipeline_id
    )


def pipeline_entries(session: Session, pipeline_id: str) -> list[Entry]:
    """The databases and roles marked as ``pipeline_id``'s, and its own database when it exists
    unmarked but owned by its marked role (``up`` killed between creating and marking it)."""
    from envkit.shared_server.names import database_name

    needle = literal(f'%"pipeline_id":{json.dumps(pipeline_id)}%')
    rows = session.query(
        "SELECT 'database', d.datname, shobj_description(d.oid, 'pg_database'), r.rolname "
        "FROM pg_database d LEFT JOIN pg_roles r ON r.oid = d.datdba "
        "WHERE d.datname LIKE 'envkit%' AND "
        f"(shobj_description(d.oid, 'pg_database') LIKE {needle} "
        f"OR d.datname = {literal(database_name(pipeline_id))}) UNION ALL "
        "SELECT 'role', rolname, shobj_description(oid, 'pg_authid'), NULL FROM pg_roles "
        f"WHERE rolname LIKE 'envkit%' AND shobj_description(oid, 'pg_authid') LIKE {needle}"
    )
    found = [Entry(str(k), str(n), parse_mark(c)) for k, n, c, _ in rows if n is not None]
    roles = {e.name for e in found if e.object == "role" and belongs_to(e, pipeline_id)}
    owners = {str(n): o for k, n, _c, o in rows if k == "database"}
    return [
        e
        for e in found
        if is_envkit_name(e.name)
        and (belongs_to(e, pipeline_id) or (e.mark is None and owners.get(e.name) in roles))
    ]


def foreign(reference: str, obj: str, name: str) -> ProvisionError:
    """The error for an object with envkit's name that envkit did not make."""
    return ProvisionError(
        f"The {obj} {name!r} on {reference} exists and was not made by envkit "
        "(it carries no envkit mark); envkit leaves it alone.",
        hint=f"Rename or drop that {obj}, or use another server.",
    )
