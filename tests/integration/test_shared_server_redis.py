"""Redis and a database on a shared server together (issues 17 and 19): the database goes to
the server, Redis still runs on this machine at the pipeline's address, and ``down`` removes
both."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from shared_pg import SharedServer, bindirs, connects

from envkit import lifecycle
from envkit.errors import EnvkitError
from envkit.kvwire import KvAddress, connect
from envkit.plan import Plan
from envkit.processes import cmdline, processes_naming
from envkit.providers.local.osuser import trusted_uids
from envkit.settings import Settings
from envkit.state import Status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server() -> Iterator[SharedServer]:
    from shared_pg import shared_server as start

    with start(bindirs()[sorted(bindirs())[0]]) as running:
        yield running


def test_redis_runs_locally_beside_a_database_on_a_shared_server(
    server: SharedServer, private_data: Path, settings: Settings
) -> None:
    mixed = settings.with_(redis=True, database_server=server.dsn)
    record = lifecycle.up(Plan.build("mix-a", mixed, seed=False))
    assert record.status is Status.READY
    assert record.outputs["DATABASE_PORT"] == str(server.port)  # the shared server's
    with psycopg.connect(record.outputs["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (record.outputs["DATABASE_USER"],)
    with connect(KvAddress.from_url(record.outputs["REDIS_URL"])) as session:
        assert session.command("PING") == b"PONG"
    assert record.outputs["REDIS_HOST"] == record.outputs["NETWORK_ID"].removeprefix("lo:")

    assert lifecycle.down(Plan.build("mix-a", mixed)) is None
    owners = trusted_uids(None) | {os.geteuid()}
    left = [pid for pid, _ in processes_naming(str(private_data) + os.sep, owners)
            if cmdline(pid) and cmdline(pid)[0].endswith("redis-server")]
    assert left == []
    names = server.psql("SELECT string_agg(datname, ',') FROM pg_database")
    assert record.outputs["DATABASE_NAME"] not in names.split(",")


def test_down_without_the_admin_password_is_refused_and_changes_nothing(
    server: SharedServer, private_data: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record keeps only the server's password-less reference: a ``down`` that cannot find
    the admin password again exits 2 before stopping anything (Redis keeps running, the record
    stays ready), and succeeds once the password is given."""
    from envkit.errors import PrerequisiteError

    monkeypatch.setenv("PGPASSWORD", server.password)
    mixed = settings.with_(redis=True, database_server=server.reference)
    record = lifecycle.up(Plan.build("mix-b", mixed, seed=False))
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", str(private_data / "no-such-pgpass"))
    with pytest.raises(PrerequisiteError):
        lifecycle.down(Plan.build("mix-b", settings))
    kept = Plan.build("mix-b", settings).store.load("mix-b")
    assert kept is not None and kept.status is Status.READY
    with connect(KvAddress.from_url(record.outputs["REDIS_URL"])) as session:
        assert session.command("PING") == b"PONG"
    with psycopg.connect(record.outputs["DATABASE_URL"]):
        pass

    monkeypatch.setenv("PGPASSWORD", server.password)
    assert lifecycle.down(Plan.build("mix-b", settings)) is None
    names = server.psql("SELECT string_agg(datname, ',') FROM pg_database")
    assert record.outputs["DATABASE_NAME"] not in names.split(",")


def test_doctor_checks_the_database_server_when_one_is_set(
    server: SharedServer, settings: Settings
) -> None:
    """``ENVKIT_DATABASE_SERVER`` set: doctor reaches the server and checks the admin, and says
    what is wrong (a wrong password) without showing the password."""
    from envkit.providers import get_provider

    def server_check(dsn: str) -> tuple[bool, str]:
        checks = get_provider("local", settings.with_(database_server=dsn)).checks()
        (check,) = [c for c in checks if c.name == "database server (ENVKIT_DATABASE_SERVER)"]
        assert check.required
        try:
            return True, check.probe()
        except EnvkitError as exc:
            return False, str(exc)

    ok, detail = server_check(server.dsn)
    assert ok and detail.startswith(server.reference) and server.password not in detail
    wrong = server.dsn.replace(server.password, "not-the-password")
    ok, detail = server_check(wrong)
    assert not ok and "password authentication failed" in detail
    assert "not-the-password" not in detail
    assert not [c for c in get_provider("local", settings).checks()
                if c.name.startswith("database server")]


def test_databases_every_role_may_enter_are_reported_not_touched(
    server: SharedServer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """PUBLIC's CONNECT on the server's own databases would let pipeline roles log in there;
    envkit does not change databases it did not create, so doctor and up say so, with the fix."""
    from envkit.providers import get_provider

    mixed = settings.with_(database_server=server.dsn)

    def isolation() -> str:
        checks = get_provider("local", mixed).checks()
        (check,) = [c for c in checks if c.name == "database server isolation"]
        assert not check.required
        try:
            return check.probe()
        except EnvkitError as exc:
            return f"{exc} | {exc.hint}"

    assert "own database only" in isolation()  # the test server is set up as an operator would
    server.psql("GRANT CONNECT ON DATABASE postgres TO PUBLIC")
    try:
        found = isolation()
        assert "can also log in to postgres" in found
        assert 'REVOKE CONNECT ON DATABASE "postgres" FROM PUBLIC' in found
        with caplog.at_level("WARNING", logger="envkit.shared_server.placement"):
            record = lifecycle.up(Plan.build("open-a", mixed, seed=False))
        assert any("can also log in to postgres" in r.getMessage() for r in caplog.records)
        assert server.password not in caplog.text
        assert connects(record.outputs["DATABASE_URL"], "postgres")  # what the warning is about
        assert server.psql("SELECT has_database_privilege('public', 'postgres', 'CONNECT')") == "t"
        lifecycle.down(Plan.build("open-a", mixed))
    finally:
        server.psql("REVOKE CONNECT ON DATABASE postgres FROM PUBLIC")
