"""A database per pipeline on a shared server (issue 17), on PostgreSQL 15 and 18: a server
started by the test as the unprivileged envkit user, SCRAM over TCP, an admin with CREATEDB
CREATEROLE but not superuser (tests/shared_pg.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from shared_pg import ADMIN, SharedServer, bindirs, connects

from envkit import shared_server
from envkit.errors import ConfigError, PrerequisiteError
from envkit.reaping import ReapOptions
from envkit.settings import Settings
from envkit.shared_server import dsn as dsn_module
from envkit.state import utcnow

pytestmark = pytest.mark.integration
FUTURE = "2099-01-01T00:00:00Z"
PAST = "2000-01-01T00:00:00Z"


@pytest.fixture(params=sorted(bindirs()), scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[SharedServer]:
    from shared_pg import shared_server as start

    with start(bindirs()[request.param]) as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.resolve({"home": tmp_path / "home", "owner": "tests"}, env={})


def create(server: SharedServer, pipeline_id: str, settings: Settings, *,
           expires_at: str = FUTURE, dataset: str | None = "default") -> dict[str, str]:
    return shared_server.create_database(server.dsn, pipeline_id, owner="tests",
                                         expires_at=expires_at, settings=settings, dataset=dataset)


def refused(url: str, dbname: str | None = None) -> bool:
    return not connects(url, dbname)


def test_seeded_clones_are_isolated_and_owned_by_their_roles(
    server: SharedServer, settings: Settings
) -> None:
    a, b = create(server, "iso-a", settings), create(server, "iso-b", settings)
    assert a["DATABASE_USER"] != b["DATABASE_USER"]
    assert a["DATABASE_NAME"] != b["DATABASE_NAME"]
    with psycopg.connect(a["DATABASE_URL"]) as conn:
        rows = conn.execute("SELECT count(*) FROM users").fetchone()
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        attrs = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        conn.execute("CREATE TABLE mine (id int)")  # the role may create in its own database
    assert rows is not None and rows[0] > 0
    assert owners == [(a["DATABASE_USER"],)]  # REASSIGN OWNED: the pipeline's role owns them
    assert attrs == (False, False, False)
    assert refused(a["DATABASE_URL"], b["DATABASE_NAME"])  # CONNECT revoked from PUBLIC
    assert refused(a["DATABASE_URL"], "postgres")
    template = server.psql("SELECT datistemplate, datallowconn FROM pg_database "
                           "WHERE datname LIKE 'envkit-ds%'")
    assert template == "t|f"
    assert shared_server.drop_database(server.dsn, "iso-a") is True
    assert shared_server.drop_database(server.dsn, "iso-a") is False  # idempotent
    assert refused(a["DATABASE_URL"])
    with psycopg.connect(b["DATABASE_URL"]) as conn:  # b untouched
        conn.execute("SELECT 1 FROM users LIMIT 1")
    shared_server.drop_database(server.dsn, "iso-b")


def test_sixteen_concurrent_creates(server: SharedServer, settings: Settings) -> None:
    ids = [f"many-{n}" for n in range(16)]
    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(lambda i: create(server, i, settings), ids))
    assert len({o["DATABASE_NAME"] for o in outputs}) == 16
    for output in outputs:
        with psycopg.connect(output["DATABASE_URL"]) as conn:
            conn.execute("SELECT 1 FROM users LIMIT 1")
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda i: shared_server.drop_database(server.dsn, i), ids))


def test_reap_from_the_server_alone(server: SharedServer, settings: Settings) -> None:
    create(server, "old", settings, expires_at=PAST, dataset=None)
    create(server, "young", settings, dataset=None)
    server.psql('CREATE DATABASE "envkit_handmade"')
    server.psql('CREATE ROLE "envkit_handmade"')
    now = utcnow()
    dry = shared_server.reap_server(server.dsn, ReapOptions(now=now, dry_run=True))
    assert [e["pipeline_id"] for e in dry.reaped if "pipeline_id" in e] == ["old"]
    assert "envkit_old" in server.psql("SELECT datname FROM pg_database")  # nothing written
    shared_server.set_expiry(server.dsn, "young", PAST, status="preserved")
    report = shared_server.reap_server(server.dsn, ReapOptions(now=now))
    assert sorted(e["pipeline_id"] for e in report.reaped if "pipeline_id" in e) == [
        "old", "young"]
    left = server.psql("SELECT datname FROM pg_database WHERE datname ~ '^envkit_' "
                       "UNION ALL SELECT rolname FROM pg_roles WHERE rolname ~ '^envkit_'")
    assert sorted(left.split()) == [ADMIN, "envkit_handmade", "envkit_handmade"]
    server.psql('DROP DATABASE "envkit_handmade"')
    server.psql('DROP ROLE "envkit_handmade"')


def test_half_created_is_reaped_only_when_its_lock_is_free(
    server: SharedServer, settings: Settings
) -> None:
    from envkit.shared_server.names import lock_key

    create(server, "half", settings, dataset=None)
    server.psql("""UPDATE pg_shdescription SET description =
                replace(description, '"status":"ready"', '"status":"creating"')
                WHERE description LIKE '%"pipeline_id":"half"%'""")
    key = lock_key("pipeline", "half")
    with psycopg.connect(server.dsn, autocommit=True) as holder:
        holder.execute(f"SELECT pg_advisory_lock({key})")
        busy = shared_server.reap_server(server.dsn, ReapOptions(utcnow(), older_than=timedelta(0)))
        assert next(e["reason"] for e in busy.kept if e["pipeline_id"] == "half").startswith("busy")
    free = shared_server.reap_server(server.dsn, ReapOptions(utcnow(), older_than=timedelta(0)))
    assert [e["pipeline_id"] for e in free.reaped if "pipeline_id" in e] == ["half"]


def test_missing_privileges_and_bad_passwords_are_exit_2(
    server: SharedServer, settings: Settings
) -> None:
    server.psql("CREATE ROLE weak LOGIN CREATEDB PASSWORD 'weakpass-123'; "
                "GRANT CONNECT ON DATABASE postgres TO weak")
    weak = f"postgresql://weak:weakpass-123@127.0.0.1:{server.port}/postgres"
    try:
        with pytest.raises(PrerequisiteError, match="CREATEROLE") as info:
            shared_server.create_database(weak, "p", owner="t", expires_at=FUTURE,
                                          settings=settings, dataset=None)
        assert info.value.exit_code == 2 and "weakpass-123" not in str(info.value)
    finally:
        server.psql("REVOKE CONNECT ON DATABASE postgres FROM weak")
        server.psql("DROP ROLE weak")
    wrong = server.dsn.replace(server.password, "not-the-password")
    with pytest.raises(PrerequisiteError, match="refused") as info:
        shared_server.check_admin(wrong)
    assert "not-the-password" not in str(info.value)
    with pytest.raises(PrerequisiteError, match="Cannot reach"):
        shared_server.check_admin("postgresql://a:secret-pw@127.0.0.1:1/postgres")
    with pytest.raises(PrerequisiteError, match="PGPASSWORD"):
        dsn_module.resolve(server.reference, env={"HOME": "/nonexistent"})
    with pytest.raises(ConfigError):
        dsn_module.refuse_in_argv(server.dsn)


def test_password_from_pgpass(server: SharedServer, tmp_path: Path) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{server.port}:*:{ADMIN}:{server.password}\n")
    found = dsn_module.resolve(server.reference, env={"PGPASSFILE": str(passfile)})
    assert found.password == server.password
    assert server.password not in repr(found) and server.password not in found.reference()


def test_destroy_without_a_record_never_drops_on_the_server(
    server: SharedServer, settings: Settings
) -> None:
    """A leftover of another home with the same pipeline ID (reaped with --database-server
    given) has no record naming the server: its destroy must not drop this pipeline's database."""
    from envkit.providers import get_provider

    outputs = create(server, "same-id", settings, dataset=None)
    provider = get_provider("local", settings.with_(database_server=server.dsn))
    provider.destroy("same-id", None)
    assert not refused(outputs["DATABASE_URL"])
    assert shared_server.drop_database(server.dsn, "same-id") is True


def test_a_template_is_renewed_by_use_and_reaped_with_its_spares_once_unused(
    server: SharedServer, settings: Settings
) -> None:
    """Templates carry an expiry (template_ttl after an up last used them): an up renews a
    stale one, and the server's reap drops an expired one (database, role, spares) and leaves
    the pipelines cloned from it alone. Runs last: later builds make the template again."""
    import json

    from shared_pg import wait_for_refills

    def mark(name: str) -> dict[str, str]:
        found = server.psql(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
            f"WHERE datname = '{name}'"
        )
        return dict(json.loads(found)) if found else {}

    def expire(name: str) -> None:
        stale = json.dumps({**mark(name), "expires_at": PAST}, sort_keys=True)
        server.psql(f"COMMENT ON DATABASE \"{name}\" IS '{stale}'")

    a = create(server, "tpl-a", settings)
    template = server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'envkit-ds%'")
    assert template and mark(template)["expires_at"] > utcnow().isoformat()[:19]  # ahead
    expire(template)
    create(server, "tpl-b", settings)  # an up renews the stale template
    assert mark(template)["expires_at"] > utcnow().isoformat()[:19]
    wait_for_refills(server)
    expire(template)
    dry = shared_server.reap_server(server.dsn, ReapOptions(now=utcnow(), dry_run=True))
    assert [e["resource"] for e in dry.reaped if e["kind"] == "database-server-template"] == [
        template
    ]
    assert mark(template)  # a dry run drops nothing

    report = shared_server.reap_server(server.dsn, ReapOptions(now=utcnow()))
    assert [e["resource"] for e in report.reaped if e["kind"] == "database-server-template"] == [
        template
    ]
    assert not mark(template)
    assert template not in server.psql("SELECT rolname FROM pg_roles").split()
    pool = template.removeprefix("envkit-")
    names = server.psql("SELECT string_agg(datname, ' ') FROM pg_database")
    assert f"envkit-sp-{pool}" not in names
    assert connects(a["DATABASE_URL"])  # pipelines cloned from it keep their data
    for pipeline_id in ("tpl-a", "tpl-b"):
        shared_server.drop_database(server.dsn, pipeline_id)
