"""SQL for the spec's databases on a local server: the extra databases and per-database
settings (``ALTER DATABASE ... SET``)."""

from __future__ import annotations

from envkit.spec_model import EnvSpec


def database_statements(spec: EnvSpec, *, owner: str, default_database: str) -> list[str]:
    """SQL creating the spec's extra databases (owned by ``owner``) and applying every
    database's settings; identifiers come from validated names, values are quoted."""
    statements = []
    for index, database in enumerate(spec.databases):
        name = default_database if index == 0 else database.name
        if index > 0:
            statements.append(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        for key, value in database.settings.items():
            quoted = value.replace("'", "''")
            statements.append(f"ALTER DATABASE \"{name}\" SET {key} = '{quoted}'")
    return statements
