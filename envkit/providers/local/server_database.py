"""The local provider with its database on a shared server (``--database-server DSN``): the
network, services and Redis stay on this machine, the database and its role are created on the
server by :mod:`envkit.shared_server`, and no local PostgreSQL server is started.

The record keeps only the server's password-less reference (``resources["database_server"]``).
``down``, ``extend``, ``down --preserve`` and ``reap`` need the admin password again: from
ENVKIT_DATABASE_SERVER / ``--database-server`` (the same server and admin as the reference), else
``PGPASSWORD`` or ``~/.pgpass`` for the reference; exit 2 with that hint when there is none.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from envkit.errors import ConfigError
from envkit.health import Probe
from envkit.health.postgres import PostgresProbe
from envkit.naming import sql_identifier
from envkit.reaping import ReapOptions, ReapReport
from envkit.settings import Settings
from envkit.state import Record

if TYPE_CHECKING:
    from collections.abc import Callable

    from envkit.providers.base import ProvisionRequest
    from envkit.providers.local.cache_server import CacheStart
    from envkit.providers.local.loopback import Address
    from envkit.providers.local.provider import LocalProvider
    from envkit.providers.local.resources import LocalResources

RESOURCE = "database_server"  # record.resources key: {"server": reference, "database": name}


def on_server(record: Record | None) -> bool:
    """Whether the environment of ``record`` has its database on a shared server."""
    return record is not None and isinstance(record.resources.get(RESOURCE), dict)


def admin_dsn(settings: Settings, record: Record | None) -> str | None:
    """The admin DSN to reach the server of ``record`` (or of the settings): the one given
    when it names the recorded server, else the recorded reference (its password is then found
    in PGPASSWORD or ~/.pgpass); ``None`` when neither names a server."""
    from envkit.shared_server.dsn import parse, with_password

    entry = record.resources.get(RESOURCE) if record is not None else None
    reference = entry.get("server") if isinstance(entry, dict) else None
    given = settings.database_server
    if given and isinstance(reference, str) and not parse(given).same_server(parse(reference)):
        raise ConfigError(
            f"The environment's database is on {reference}, not on the --database-server given "
            f"({parse(given).reference()}).",
            hint="Give that server's DSN, or none (then PGPASSWORD or ~/.pgpass is used).",
        )
    if given:
        return given
    if isinstance(reference, str):
        with_password(parse(reference))  # exit 2, saying how to give the password, when none
        return reference
    return None


def preflight(settings: Settings) -> None:
    """Reach the server and check the admin's privileges: exit 2 before anything is created.
    The checked session is kept for :func:`provision` (one connection per ``up``)."""
    from envkit.shared_server import check_admin

    assert settings.database_server is not None
    check_admin(settings.database_server, keep=True)


def doctor_check(settings: Settings) -> str:
    """``envkit doctor``: the server answers and the admin may create databases and roles."""
    from envkit.shared_server import check_admin

    assert settings.database_server is not None
    reference = check_admin(settings.database_server)
    return f"{reference}: reachable, the admin may create databases and roles"


def doctor_isolation(settings: Settings) -> str:
    """``envkit doctor``: whether pipeline roles reach only their own databases (``PUBLIC``
    holds ``CONNECT`` on none of the server's own); ``PrerequisiteError`` with the fix if not."""
    from envkit.errors import PrerequisiteError
    from envkit.shared_server.dsn import resolve
    from envkit.shared_server.placement import open_databases, open_databases_hint
    from envkit.shared_server.session import connect

    assert settings.database_server is not None
    with connect(resolve(settings.database_server)) as session:
        names = open_databases(session)
    if names:
        raise PrerequisiteError(
            f"pipeline roles can also log in to {', '.join(names)} (PUBLIC has CONNECT there)",
            hint=f"As the owner: {open_databases_hint(names)}.",
        )
    return "pipeline roles can log in to their own database only"


def provision(
    provider: LocalProvider,
    request: ProvisionRequest,
    resources: LocalResources,
    address: Address,
    save: Callable[[], None],
    cache: CacheStart | None = None,
) -> dict[str, str]:
    """The database on the server, then Redis (``cache``, started by the caller) and the
    spec's services on this machine; the outputs."""
    from envkit.providers.local import cache_server
    from envkit.shared_server import create_database, server_reference

    settings = provider.settings
    dsn = settings.database_server
    assert dsn is not None
    record = request.record
    started = time.perf_counter()
    request.progress("database")
    record.resources[RESOURCE] = {
        "server": server_reference(dsn),
        "database": sql_identifier(request.pipeline_id),
    }
    save()  # before creating: a killed up leaves enough for down and reap
    outputs = create_database(
        dsn,
        request.pipeline_id,
        owner=record.owner,
        expires_at=record.expires_at,
        settings=settings,
        dataset=request.dataset,
        progress=request.progress,
        timings=request.timings,
        spec=request.spec,
    )
    if request.dataset is not None:
        _note_template(settings, record, request.dataset)
    request.timings["database"] = time.perf_counter() - started
    outputs["NETWORK_ID"] = f"lo:{address.host}"
    outputs["CLUSTER_NAME"] = f"envkit-{request.pipeline_id}"
    outputs.update(cache_server.finish(request, cache))  # before services use {REDIS_URL}
    if request.spec is not None and request.spec.services:
        from envkit.providers.local.services import provision_spec

        outputs.update(provision_spec(provider, request, resources, None, outputs))
    return outputs


def _note_template(settings: Settings, record: Record, dataset: str) -> None:
    """Record which seeded template the database was cloned from, so seeding only reports it."""
    from envkit.seeding import datasets
    from envkit.seeding.pipeline import TEMPLATE_RESOURCE, scale_of, template_name

    name = template_name(datasets.load(settings, dataset), scale_of(settings))
    record.resources[TEMPLATE_RESOURCE] = {"dataset": dataset, "name": name, "stats": ""}


def probes(record: Record) -> list[Probe]:
    """The database, reached as its role over the network (psycopg when TLS is required)."""
    url = record.outputs.get("DATABASE_URL")
    if not url or not on_server(record):
        return []
    from envkit.shared_server.dsn import TLS_MODES  # only then: the package is not small
    tls = any(f"sslmode={mode}" in url for mode in TLS_MODES)
    return [PostgresProbe(url, component="database", client="psycopg" if tls else "wire")]


def check_credentials(settings: Settings, record: Record | None) -> None:
    """``PrerequisiteError`` (exit 2) when the record's database is on a shared server and no
    admin password for it can be found: ``destroy`` would fail half-way."""
    if on_server(record):
        admin_dsn(settings, record)


def destroy(settings: Settings, pipeline_id: str, record: Record | None) -> None:
    """Drop the pipeline's database and role on the server its record names. Without a record
    nothing is dropped there: ``up`` records the server before it creates anything on it, and a
    pipeline ID is not unique across homes (the leftover of another home's ``c`` must not drop
    this home's ``c``); what a lost record left is the server reap's (by its marks)."""
    if record is None or not on_server(record):
        return
    dsn = admin_dsn(settings, record)
    if dsn is None:
        return
    from envkit.shared_server import drop_database

    drop_database(dsn, pipeline_id)


def retain(settings: Settings, record: Record) -> None:
    """Write the record's expiry and status on the server (preserve, extend)."""
    if not on_server(record):
        return
    dsn = admin_dsn(settings, record)
    if dsn is None:
        return
    from envkit.shared_server import set_expiry

    set_expiry(dsn, record.pipeline_id, record.expires_at, status=str(record.status))


def reap(settings: Settings, options: ReapOptions) -> ReapReport:
    """``reap --database-server``: expired and abandoned databases found on the server alone."""
    from envkit.shared_server import reap_server

    if not settings.database_server:
        return ReapReport(dry_run=options.dry_run)
    return reap_server(settings.database_server, options, pool_size=settings.spares)

