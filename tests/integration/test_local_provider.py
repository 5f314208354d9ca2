"""The local provider against real PostgreSQL servers."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from envkit import lifecycle
from envkit.errors import PrerequisiteError
from envkit.plan import Plan
from envkit.providers.local.layout import Layout
from envkit.providers.local.pgserver import postmaster_pid
from envkit.providers.local.provider import LocalProvider
from envkit.settings import Settings
from envkit.state import Status

pytestmark = pytest.mark.integration


def up(settings: Settings, pipeline_id: str) -> lifecycle.Record:
    return lifecycle.up(Plan.build(pipeline_id, settings))


def test_up_gives_a_working_database_and_down_removes_everything(settings: Settings) -> None:
    record = up(settings, "it-one")
    assert record.status is Status.READY
    url = record.outputs["DATABASE_URL"]
    with psycopg.connect(url) as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            "envkit_it_one", "envkit_it_one")
        conn.execute("create table t (id int primary key)")  # the app role owns its database
        # TCP auth is scram; the stored password is a verifier, never the plain text
        assert conn.execute("show password_encryption").fetchone() == ("scram-sha-256",)
    layout = Layout.for_settings(settings)
    pgdata = layout.pgdata("it-one")
    assert postmaster_pid(pgdata) is not None
    hba = (pgdata / "pg_hba.conf").read_text()
    for line in hba.splitlines():  # trust only on the private socket, never on TCP
        if line.startswith("host"):
            assert line.endswith("scram-sha-256")

    assert lifecycle.up(Plan.build("it-one", settings)).outputs == record.outputs

    assert lifecycle.down(Plan.build("it-one", settings)) is None
    assert not layout.env_dir("it-one").exists()
    assert not layout.socket_dir("it-one").exists()
    assert layout.addresses.held_by(layout.owner_key("it-one")) == []
    assert not (settings.home / "envs" / "it-one.json").exists()
    assert not (settings.home / "locks" / "it-one.lock").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    assert lifecycle.down(Plan.build("it-one", settings)) is None  # idempotent


def test_two_pipelines_are_isolated(settings: Settings) -> None:
    a = up(settings, "iso-a").outputs
    b = up(settings, "iso-b").outputs
    assert (a["DATABASE_HOST"], a["DATABASE_PORT"]) != (b["DATABASE_HOST"], b["DATABASE_PORT"])
    assert a["DATABASE_PASSWORD"] != b["DATABASE_PASSWORD"]
    pa, pb = urlsplit(a["DATABASE_URL"]), urlsplit(b["DATABASE_URL"])
    crossed = f"postgresql://{pa.username}:{pa.password}@{pb.hostname}:{pb.port}{pa.path}"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(crossed, connect_timeout=2)
    wrong_password = f"postgresql://{pb.username}:{pa.password}@{pb.hostname}:{pb.port}{pb.path}"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong_password, connect_timeout=2)


def test_up_starts_a_server_that_died_again_on_its_own_data(settings: Settings) -> None:
    first = up(settings, "heal")
    with psycopg.connect(first.outputs["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("create table kept (n int); insert into kept values (42)")
    pgdata = Layout.for_settings(settings).pgdata("heal")
    pid = postmaster_pid(pgdata)
    assert pid is not None
    os.kill(pid, 9)
    from envkit.processes import wait_gone

    wait_gone(pid, 5)
    second = up(settings, "heal")
    assert second.status is Status.READY
    assert second.outputs == first.outputs  # the same server, address and credentials
    with psycopg.connect(second.outputs["DATABASE_URL"]) as conn:
        assert conn.execute("select n from kept").fetchone() == (42,)
    events = [e["event"] for e in Plan.build("heal", settings).store.events("heal")]
    assert events[-1] == "restarted"


def test_up_recreates_a_ready_environment_whose_data_is_gone(settings: Settings) -> None:
    first = up(settings, "lost")
    pgdata = Layout.for_settings(settings).pgdata("lost")
    pid = postmaster_pid(pgdata)
    assert pid is not None
    os.kill(pid, 9)
    from envkit.processes import wait_gone

    wait_gone(pid, 5)
    (pgdata / "PG_VERSION").unlink()  # not a data directory any more
    second = up(settings, "lost")
    assert second.status is Status.READY
    with psycopg.connect(second.outputs["DATABASE_URL"]) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert first.outputs["DATABASE_PASSWORD"] != second.outputs["DATABASE_PASSWORD"]


def test_files_holding_secrets_are_private(settings: Settings) -> None:
    record = up(settings, "private")
    password = record.outputs["DATABASE_PASSWORD"]
    layout = Layout.for_settings(settings)
    for root in (settings.home, layout.env_dir("private")):
        for path in Path(root).rglob("*"):
            try:
                mode = path.stat().st_mode
                data = path.read_bytes() if path.is_file() else b""
            except (PermissionError, FileNotFoundError):
                continue
            if password.encode() in data:
                assert not mode & (stat.S_IROTH | stat.S_IRGRP), path
    # the server log never sees the password (envkit sends a SCRAM verifier)
    log = (layout.logs("private") / "postgres.log").read_text()
    assert password not in log


def test_missing_binaries_is_a_prerequisite_error(settings: Settings, tmp_path: Path) -> None:
    broken = settings.with_(pg_bindir=tmp_path / "nope")
    with pytest.raises(PrerequisiteError, match="ENVKIT_PG_BINDIR"):
        up(broken, "nobin")
    assert lifecycle.list_environments(broken) == []
    assert not (broken.home / "locks" / "nobin.lock").exists()


def test_templates_carry_no_free_space_maps_and_servers_rebuild_them(settings: Settings) -> None:
    """Templates are trimmed of FSM forks and of every WAL segment but the shutdown
    checkpoint's (less to copy per server); writes, VACUUM and WAL past that one segment work,
    and the forks come back."""
    record = lifecycle.up(Plan.build("fsm", settings))
    pgdata = Layout.for_settings(settings).pgdata("fsm")
    assert not list(pgdata.glob("base/*/*_fsm")) and not list(pgdata.glob("global/*_fsm"))
    provider = LocalProvider(settings)
    base = provider.templates(provider.install(), provider.run_as()).base()
    templates = [p for p in base.parent.glob(f"{base.name}*") if (p / "PG_VERSION").is_file()]
    assert templates
    for template in templates:
        segments = [p for p in (template / "pg_wal").iterdir() if p.is_file()]
        assert len(segments) == 1, (template, segments)
    with psycopg.connect(record.outputs["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, pad text)")
        conn.execute("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
        conn.execute("DELETE FROM t WHERE id % 2 = 0")
        conn.execute("VACUUM t")
        row = conn.execute("SELECT pg_relation_size('t', 'fsm') > 0, count(*) FROM t").fetchone()
        conn.execute("INSERT INTO t SELECT g, 'y' FROM generate_series(5001, 6000) g")
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3500,)
        start_lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        conn.execute("INSERT INTO t SELECT g, repeat('z', 500) FROM generate_series(6001, 16000) g")
        moved = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", start_lsn
        ).fetchone()
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (13500,)
    assert row == (True, 2500)
    assert moved is not None and moved[0] > 3 * 1024 * 1024  # past several 1 MB segments
