"""A database per pipeline on a shared PostgreSQL server (an existing server, a CI service
container, a shared RDS instance): the placement any provider can use instead of a server of
its own. See docs/shared-server.md.

The public API (the local and aws providers call only these)::

    create_database(admin_dsn, pipeline_id, *, owner, expires_at, settings, dataset, ...)
    drop_database(admin_dsn, pipeline_id) -> bool
    set_expiry(admin_dsn, pipeline_id, expires_at, *, status)
    reap_server(admin_dsn, options) -> ReapReport
    server_reference(admin_dsn) -> str
"""

from __future__ import annotations

from envkit.shared_server.placement import (
    check_admin,
    create_database,
    drop_database,
    server_reference,
    set_expiry,
)
from envkit.shared_server.reaping import reap_server

__all__ = [
    "check_admin",
    "create_database",
    "drop_database",
    "reap_server",
    "server_reference",
    "set_expiry",
]
