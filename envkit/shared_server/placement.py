"""A pipeline's database and login role on a shared server: create (cloned from the dataset's
template), drop, and change the expiry recorded on the server. Every change to a pipeline's
objects happens under that pipeline's advisory lock on the server, so runners on different
machines never work on one pipeline at once."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from envkit.errors import PrerequisiteError, ProvisionError
from envkit.naming import validate_pipeline_id
from envkit.redact import scrub
from envkit.settings import Settings
from envkit.shared_server import catalogue, spares
from envkit.shared_server.catalogue import Mark
from envkit.shared_server.dsn import Dsn, resolve
from envkit.shared_server.locks import holding, lock_held
from envkit.shared_server.names import (
    database_name,
    extra_database_name,
    ident,
    literal,
    lock_key,
    pool_name,
    role_name,
)
from envkit.shared_server.session import Session, SqlError, connect, park, take
from envkit.shared_server.templates import ensure_template, iso_utc_now
from envkit.spec_model import EnvSpec
from envkit.wire import scram_verifier

log = logging.getLogger(__name__)
MIN_SERVER_VERSION = 130000  # DROP DATABASE … WITH (FORCE)
SCRAM_ITERATIONS = 4096  # PostgreSQL's default: a long-lived server others administer


def _quiet(step: str) -> None:
    return None


def check_server(session: Session, dsn: Dsn) -> None:
    """``PrerequisiteError`` (exit 2) naming what the admin lacks: PostgreSQL 13+, CREATEDB,
    CREATEROLE."""
    rows = session.query(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, current_setting('server_version_num') "
        "FROM pg_roles WHERE rolname = current_user"
    )
    superuser, createdb, createrole, version = rows[0] if rows else ("f", "f", "f", "0")
    if int(version or 0) < MIN_SERVER_VERSION:
        raise PrerequisiteError(
            f"The database server {dsn.reference()} runs PostgreSQL {version}; envkit needs 13 "
            "or later (DROP DATABASE … WITH (FORCE)).",
            hint="Use a newer server.",
        )
    missing = [
        name for name, has in (("CREATEDB", createdb), ("CREATEROLE", createrole)) if has != "t"
    ]
    if missing and superuser != "t":
        privileges = " and ".join(missing)
        raise PrerequisiteError(
            f"The admin {dsn.user!r} on {dsn.reference()} lacks the {privileges} privilege "
            "envkit needs to give each pipeline its own database and role.",
            hint=f"As a superuser: ALTER ROLE {ident(dsn.user)} {' '.join(missing)};",
        )


def open_databases(session: Session) -> list[str]:
    """The server's own databases (not envkit's) that any role may connect to, because
    ``PUBLIC`` keeps ``CONNECT`` on them: a pipeline's role can log in there too. envkit leaves
    them alone (they are not its own); their owner can revoke it."""
    rows = session.query(
        "SELECT datname FROM pg_database WHERE datallowconn AND datname NOT LIKE 'envkit%' "
        "AND has_database_privilege('public', oid, 'CONNECT') ORDER BY datname"
    )
    return [str(name) for (name,) in rows]


def open_databases_hint(names: list[str]) -> str:
    """How the server's operator closes them to pipeline roles."""
    return "; ".join(f"REVOKE CONNECT ON DATABASE {ident(n)} FROM PUBLIC" for n in names) + (
        " (then GRANT CONNECT to the roles that need it)"
    )


def check_admin(admin_dsn: str, *, keep: bool = False) -> str:
    """Connect and check the admin's privileges (exit 2 when one is missing); the reference.
    With ``keep``, the checked session stays open for this process's next
    :func:`create_database` on ``admin_dsn`` (``up``'s preflight: one connection, not two)."""
    dsn = resolve(admin_dsn)
    stack = ExitStack()
    try:
        session = stack.enter_context(connect(dsn))
        check_server(session, dsn)
        if keep and (names := open_databases(session)):  # up: say so, once per up
            log.warning(
                "pipeline roles on %s can also log in to %s (PUBLIC has CONNECT there); to stop "
                "that: %s", dsn.reference(), ", ".join(names), open_databases_hint(names),
            )
    except BaseException:
        stack.close()
        raise
    if keep:
        park(admin_dsn, stack, session)
    else:
        stack.close()
    return dsn.reference()


@contextmanager
def admin_session(admin_dsn: str, dsn: Dsn) -> Iterator[Session]:
    """An admin session whose privileges were checked: the one preflight kept, or a new one."""
    with take(admin_dsn) as parked:
        if parked is not None:
            yield parked
            return
    with connect(dsn) as session:
        check_server(session, dsn)
        yield session


@contextmanager
def pipeline_lock(session: Session, pipeline_id: str) -> Iterator[None]:
    """The pipeline's advisory lock on the server, held while the block runs."""
    with holding(session, lock_key("pipeline", pipeline_id)):
        yield


def create_database(
    admin_dsn: str,
    pipeline_id: str,
    *,
    owner: str,
    expires_at: str,
    settings: Settings,
    dataset: str | None,
    progress: Callable[[str], None] = _quiet,
    timings: dict[str, float] | None = None,
    spec: EnvSpec | None = None,
) -> dict[str, str]:
    """Give ``pipeline_id`` its own role and database (a clone of ``dataset``'s template, built
    first when the server has none), plus the spec's extra databases; the ``DATABASE_*``
    outputs, the URL holding the role's password. Leftovers of an earlier attempt of the same
    pipeline are dropped first."""
    validate_pipeline_id(pipeline_id)
    timings = timings if timings is not None else {}
    dsn = resolve(admin_dsn)
    role, database = role_name(pipeline_id), database_name(pipeline_id)
    password = secrets.token_urlsafe(24)
    refill = False
    try:
        with admin_session(admin_dsn, dsn) as session:
            template = None
            if dataset is not None:
                started = time.perf_counter()
                template = ensure_template(session, dsn, settings, dataset, progress=progress)
                timings["dataset_template"] = time.perf_counter() - started
            source = template.name if template is not None else None
            started = time.perf_counter()
            with pipeline_lock(session, pipeline_id):
                _drop(session, pipeline_id)
                _refuse_foreign(session, dsn, role, database)
                mark = Mark("role", pipeline_id, owner, expires_at, catalogue.CREATING,
                            iso_utc_now())
                db_mark = mark.with_(kind="database")
                verifier = scram_verifier(password, SCRAM_ITERATIONS)
                spare = None
                if settings.spares > 0:
                    spare = spares.claim(
                        session, pool_name(source), source, role=role, database=database,
                        verifier=verifier, role_mark=mark,
                        database_mark=db_mark.with_(status=catalogue.READY),
                    )
                if spare is None:
                    _clone(session, dsn, role, database, verifier, mark, source)
                extras = _extras(session, pipeline_id, role, db_mark, spec)
                session.query(catalogue.mark_sql("role", role, mark.with_(status=catalogue.READY)))
            if settings.spares > 0:  # took one or found none: top the pool up, unless running
                refill = not lock_held(session, spares.pool_lock(pool_name(source)))
            timings["database"] = time.perf_counter() - started
    except SqlError as exc:
        raise ProvisionError(
            f"Creating the database of {pipeline_id!r} on {dsn.reference()} failed: "
            f"{scrub(str(exc), [password, dsn.password or password])}",
            hint="envkit names the privilege it lacked, if any; 'envkit down "
            f"{pipeline_id} --database-server …' removes what was created.",
        ) from None
    if refill:
        from envkit.shared_server import refill as refiller

        refiller.start(admin_dsn, dsn.reference(), source, settings.spares, settings.owner)
    outputs = {
        "DATABASE_URL": dsn.url(role, password, database),
        "DATABASE_HOST": dsn.host,
        "DATABASE_PORT": str(dsn.port),
        "DATABASE_NAME": database,
        "DATABASE_USER": role,
        "DATABASE_PASSWORD": password,
    }
    for output, name in extras.items():
        outputs[output] = dsn.url(role, password, name)
    return outputs


def _clone(
    session: Session,
    dsn: Dsn,
    role: str,
    database: str,
    verifier: str,
    mark: Mark,
    template: str | None,
) -> None:
    """The pipeline's role, and its database cloned from ``template`` (no spare to take)."""
    session.query(
        f"CREATE ROLE {ident(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
        f"PASSWORD {literal(verifier)}; "
        f"{catalogue.mark_sql('role', role, mark)}; GRANT {ident(role)} TO CURRENT_USER"
    )
    source = f" TEMPLATE {ident(template)}" if template else ""
    session.query(f"CREATE DATABASE {ident(database)} OWNER {ident(role)}{source}")
    db_mark = mark.with_(kind="database", status=catalogue.READY)
    session.query(_lock_down(database, db_mark))
    if template is not None:
        with connect(dsn, database) as inside:
            inside.query(
                f"REASSIGN OWNED BY {ident(template)} TO {ident(role)}; "
                f"REVOKE ALL ON SCHEMA public FROM {ident(template)}"
            )


def _lock_down(database: str, mark: Mark) -> str:
    """Only the owner (and the admin, a member of it) may connect: CONNECT revoked from PUBLIC."""
    return (
        f"REVOKE CONNECT, TEMPORARY ON DATABASE {ident(database)} FROM PUBLIC; "
        f"{catalogue.mark_sql('database', database, mark)}"
    )


def _extras(
    session: Session, pipeline_id: str, role: str, mark: Mark, spec: EnvSpec | None
) -> dict[str, str]:
    """The spec's extra databases (named after the pipeline) and every database's settings;
    the ``DATABASE_<NAME>_URL`` outputs and the names they point to."""
    if spec is None:
        return {}
    added: dict[str, str] = {}
    for index, database in enumerate(spec.databases):
        name = database_name(pipeline_id) if index == 0 else extra_database_name(
            pipeline_id, database.name
        )
        if index > 0:
            session.query(f"CREATE DATABASE {ident(name)} OWNER {ident(role)}")
            session.query(_lock_down(name, mark.with_(kind="extra", status=catalogue.READY)))
            added[database.url_output] = name
        for key, value in database.settings.items():
            session.query(f"ALTER DATABASE {ident(name)} SET {key} = {literal(value)}")
    return added


def _refuse_foreign(session: Session, dsn: Dsn, role: str, database: str) -> None:
    for obj, name in (("role", role), ("database", database)):
        if catalogue.find(session, obj, name) is not None:  # _drop removed envkit's own
            raise catalogue.foreign(dsn.reference(), obj, name)


def _drop(session: Session, pipeline_id: str) -> bool:
    """Drop what is marked as the pipeline's (databases first, connections terminated)."""
    found = catalogue.pipeline_entries(session, pipeline_id)
    for entry in found:
        if entry.object == "database":
            session.query(f"DROP DATABASE IF EXISTS {ident(entry.name)} WITH (FORCE)")
    for entry in found:
        if entry.object == "role":
            session.query(f"DROP ROLE IF EXISTS {ident(entry.name)}")
    return bool(found)


def drop_database(admin_dsn: str, pipeline_id: str) -> bool:
    """Drop the pipeline's databases and role (idempotent); whether anything was dropped."""
    validate_pipeline_id(pipeline_id)
    dsn = resolve(admin_dsn)
    try:
        with connect(dsn) as session, pipeline_lock(session, pipeline_id):
            return _drop(session, pipeline_id)
    except SqlError as exc:
        raise ProvisionError(
            f"Dropping the database of {pipeline_id!r} on {dsn.reference()} failed: {exc}"
        ) from None


def set_expiry(admin_dsn: str, pipeline_id: str, expires_at: str, *, status: str) -> None:
    """Record a new expiry and status on every object of the pipeline (preserve, extend), so a
    reap from another machine sees them."""
    validate_pipeline_id(pipeline_id)
    dsn = resolve(admin_dsn)
    try:
        with connect(dsn) as session, pipeline_lock(session, pipeline_id):
            statements = [
                catalogue.mark_sql(
                    entry.object, entry.name, entry.mark.with_(expires_at=expires_at, status=status)
                )
                for entry in catalogue.pipeline_entries(session, pipeline_id)
                if entry.mark is not None
            ]
            if statements:
                session.query("; ".join(statements))
    except SqlError as exc:
        raise ProvisionError(
            f"Recording the expiry of {pipeline_id!r} on {dsn.reference()} failed: {exc}"
        ) from None


def server_reference(admin_dsn: str) -> str:
    """The admin DSN without its password: safe to store and print."""
    from envkit.shared_server.dsn import parse

    return parse(admin_dsn).reference()
