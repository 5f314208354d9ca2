"""Spare databases on a shared server, on PostgreSQL 15 and 18 (tests/shared_pg.py: a server
started by the test, SCRAM over TCP, an admin with CREATEDB CREATEROLE but not superuser):
taking a spare (the pipeline's role owns its tables, isolation and passwords as with a clone),
16 concurrent creates never sharing one, the background refill, and reap of spares."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from shared_pg import SharedServer, bindirs, connects, refills, wait_for_refills

from envkit import shared_server
from envkit.reaping import ReapOptions
from envkit.settings import Settings
from envkit.shared_server import refill, spares
from envkit.shared_server.dsn import resolve
from envkit.shared_server.names import lock_key
from envkit.shared_server.session import connect
from envkit.state import utcnow

pytestmark = pytest.mark.integration
FUTURE = "2099-01-01T00:00:00Z"
TEMPLATES = "SELECT datname FROM pg_database WHERE datistemplate AND datname LIKE 'envkit-ds%'"


@pytest.fixture(params=sorted(bindirs()), scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[SharedServer]:
    from shared_pg import shared_server as start

    with start(bindirs()[request.param]) as running:
        yield running


@pytest.fixture(autouse=True)
def no_refill_left(server: SharedServer) -> Iterator[None]:
    """Each test starts with no spare and leaves no refill running."""
    yield
    wait_for_refills(server)
    assert not refills(server)
    names = server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'envkit-sp-%' "
                        "UNION SELECT rolname FROM pg_roles WHERE rolname LIKE 'envkit-sp-%'")
    for name in names.split():
        server.psql(f'DROP DATABASE IF EXISTS "{name}"')
        server.psql(f'DROP ROLE IF EXISTS "{name}"')


def settings_with(tmp_path: Path, spares_: int) -> Settings:
    return Settings.resolve({"home": tmp_path / "home", "owner": "tests", "spares": spares_},
                            env={})


def create(server: SharedServer, pipeline_id: str, settings: Settings) -> dict[str, str]:
    return shared_server.create_database(server.dsn, pipeline_id, owner="tests",
                                         expires_at=FUTURE, settings=settings, dataset="default")


def pool(server: SharedServer) -> dict[str, str]:
    """The ready spares of the default dataset's pool: name -> database oid."""
    template = server.psql(TEMPLATES)
    rows = server.psql(
        "SELECT datname, oid FROM pg_database WHERE datname LIKE 'envkit-sp-ds%' "
        f"AND shobj_description(oid, 'pg_database') LIKE '%\"extra\":\"{template}\"%' "
        "AND shobj_description(oid, 'pg_database') LIKE '%\"status\":\"ready\"%'"
    )
    return dict(line.split("|") for line in rows.splitlines())


def oid_of(server: SharedServer, database: str) -> str:
    return server.psql(f"SELECT oid FROM pg_database WHERE datname = '{database}'")


def test_up_takes_a_spare_and_the_refill_tops_the_pool_up(
    server: SharedServer, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, 2)
    create(server, "sp-warm", settings)  # builds the template, starts the refill
    wait_for_refills(server)
    before = pool(server)
    assert len(before) == 2
    a = create(server, "sp-a", settings)
    assert oid_of(server, "envkit_sp_a") in before.values()  # a spare, renamed
    b = create(server, "sp-b", settings)
    with psycopg.connect(a["DATABASE_URL"]) as conn:
        who = conn.execute("SELECT current_user, count(*) FROM users").fetchone()
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'").fetchall()
        attrs = conn.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin "
                             "FROM pg_roles WHERE rolname = current_user").fetchone()
        conn.execute("CREATE TABLE mine (id int)")
    assert who is not None and who[0] == "envkit_sp_a" and who[1] > 0
    assert owners == [("envkit_sp_a",)]
    assert attrs == (False, False, False, True)
    assert not connects(a["DATABASE_URL"], b["DATABASE_NAME"])  # isolation as with a clone
    assert not connects(a["DATABASE_URL"], "postgres")
    assert not connects(b["DATABASE_URL"].replace(b["DATABASE_PASSWORD"], a["DATABASE_PASSWORD"]))
    marks = server.psql("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                        "WHERE datname = 'envkit_sp_a'")
    assert '"kind":"database"' in marks and '"pipeline_id":"sp-a"' in marks
    wait_for_refills(server)
    after = pool(server)
    assert len(after) == 2 and not set(after) & {"envkit_sp_a", "envkit_sp_b"}
    assert shared_server.drop_database(server.dsn, "sp-a")  # down never touches spares
    assert pool(server) == after
    for pipeline_id in ("sp-b", "sp-warm"):
        shared_server.drop_database(server.dsn, pipeline_id)


def test_sixteen_concurrent_creates_never_share_a_spare(
    server: SharedServer, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, 8)
    create(server, "c-warm", settings)
    wait_for_refills(server)
    before = pool(server)
    assert len(before) == 8
    ids = [f"c-{n}" for n in range(16)]
    with ThreadPoolExecutor(16) as pool_:
        outputs = list(pool_.map(lambda i: create(server, i, settings), ids))
    names = [o["DATABASE_NAME"] for o in outputs]
    assert len(set(names)) == 16
    oids = [oid_of(server, name) for name in names]
    assert len(set(oids)) == 16
    assert len(set(oids) & set(before.values())) == 8  # every spare taken, each by one
    for output in outputs:
        with psycopg.connect(output["DATABASE_URL"]) as conn:
            row = conn.execute("SELECT current_user, count(*) FROM users").fetchone()
            assert row is not None and row[0] == output["DATABASE_USER"] and row[1] > 0
    with ThreadPoolExecutor(8) as pool_:
        assert all(pool_.map(lambda i: shared_server.drop_database(server.dsn, i),
                             [*ids, "c-warm"]))


def test_refill_waits_for_nobody_and_cleans_up_after_a_dead_one(
    server: SharedServer, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, 2)
    create(server, "r-warm", settings)
    wait_for_refills(server)
    template = server.psql(TEMPLATES)
    dsn = resolve(server.dsn)
    pool_name = template.removeprefix("envkit-")
    with psycopg.connect(server.dsn, autocommit=True) as holder:
        holder.execute(f"SELECT pg_advisory_lock({lock_key('pool', pool_name)})")
        with connect(dsn) as session:  # another refill runs: this one makes nothing
            assert refill.refill_pool(session, dsn, template, 4, "tests") == 0
    with connect(dsn) as session:  # a refill killed half-way left a spare 'creating'
        name = spares.make(session, dsn, pool_name, template, "tests", "2000-01-01T00:00:00Z")
    server.psql(f"""UPDATE pg_shdescription SET description =
                replace(description, '"status":"ready"', '"status":"creating"')
                WHERE objoid IN ({oid_of(server, name)},
                (SELECT oid FROM pg_roles WHERE rolname = '{name}'))""")
    assert name not in pool(server)
    with connect(dsn) as session:
        assert refill.refill_pool(session, dsn, template, 3, "tests") == 1
    assert len(pool(server)) == 3
    assert name not in server.psql("SELECT datname FROM pg_database UNION ALL "
                                   "SELECT rolname FROM pg_roles").split()
    gone = subprocess.run(  # a server that is gone ends it quietly
        [sys.executable, "-m", "envkit.shared_server.refill", template, "2", "tests"],
        env=dict(os.environ, **{refill.DSN_VARIABLE: "postgresql://a:pw@127.0.0.1:1/postgres"}),
        capture_output=True, text=True, timeout=60, check=False)
    assert gone.returncode == 1 and gone.stdout == gone.stderr == ""
    shared_server.drop_database(server.dsn, "r-warm")


def test_reap_removes_surplus_stale_and_half_made_spares_only(
    server: SharedServer, tmp_path: Path
) -> None:
    settings = settings_with(tmp_path, 2)
    create(server, "rp-warm", settings)
    wait_for_refills(server)
    template = server.psql(TEMPLATES)
    dsn = resolve(server.dsn)
    with connect(dsn) as session:
        refill.refill_pool(session, dsn, template, 5, "tests")  # 3 more than the pool keeps
        half = spares.make(session, dsn, "empty", None, "tests", "2000-01-01T00:00:00Z")
        stale = spares.make(session, dsn, "empty", None, "tests", "2000-01-01T00:00:00Z")
    server.psql(f"""UPDATE pg_shdescription SET description =
                replace(description, '"status":"ready"', '"status":"creating"')
                WHERE objoid IN ({oid_of(server, half)},
                (SELECT oid FROM pg_roles WHERE rolname = '{half}'))""")
    server.psql(f"""UPDATE pg_shdescription SET description =
                replace(description, '"kind"', '"extra":"envkit-ds000000000000","kind"')
                WHERE objoid IN ({oid_of(server, stale)},
                (SELECT oid FROM pg_roles WHERE rolname = '{stale}'))""")
    server.psql('CREATE DATABASE "envkit-sp-empty-0badc0de"')  # not envkit's: no mark
    ready = pool(server)
    assert len(ready) == 5
    everything = server.psql("SELECT datname FROM pg_database ORDER BY 1")
    dry = shared_server.reap_server(server.dsn, ReapOptions(utcnow(), dry_run=True))
    reasons = {e["resource"]: e["reason"] for e in dry.reaped if "resource" in e}
    assert server.psql("SELECT datname FROM pg_database ORDER BY 1") == everything
    assert reasons[half].startswith("left half-made")
    assert "gone" in reasons[stale]
    assert sum(r.startswith("surplus") for r in reasons.values()) == 3
    assert "envkit-sp-empty-0badc0de" not in reasons
    real = shared_server.reap_server(server.dsn, ReapOptions(utcnow(),
                                                             older_than=timedelta(hours=1)))
    assert {e["resource"] for e in real.reaped if "resource" in e} == set(reasons)
    kept = pool(server)
    assert len(kept) == 2 and set(kept) <= set(ready)
    left = server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'envkit-sp-%' "
                       "UNION ALL SELECT rolname FROM pg_roles WHERE rolname LIKE 'envkit-sp-%'")
    assert sorted(left.split()) == sorted([*kept, *kept, "envkit-sp-empty-0badc0de"])
    assert server.psql("SELECT datname FROM pg_database WHERE datname = 'envkit_rp_warm'")
    server.psql('DROP DATABASE "envkit-sp-empty-0badc0de"')
    shared_server.drop_database(server.dsn, "rp-warm")
