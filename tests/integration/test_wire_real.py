"""envkit.wire against a real PostgreSQL: SCRAM over TCP as the pipeline's role, errors with
their SQLSTATE, and the superuser over the private unix socket (what ``up`` configures with)."""

from __future__ import annotations

import pytest

from envkit import lifecycle
from envkit.plan import Plan
from envkit.providers.local.layout import Layout
from envkit.providers.local.pgserver import ADMIN_USER
from envkit.settings import Settings
from envkit.wire import WireError, connect

pytestmark = pytest.mark.integration


def test_scram_login_rows_and_errors(settings: Settings) -> None:
    record = lifecycle.up(Plan.build("wire", settings))
    out = record.outputs
    host, port, user, db = (
        out["DATABASE_HOST"],
        int(out["DATABASE_PORT"]),
        out["DATABASE_USER"],
        out["DATABASE_NAME"],
    )
    with connect(host, port, user, db, password=out["DATABASE_PASSWORD"]) as session:
        assert session.query("SELECT 1, NULL::text, 'é' || 'x'") == [["1", None, "éx"]]
        assert session.query("CREATE TEMP TABLE t (i int); INSERT INTO t VALUES (1), (2)") == []
        assert session.query("SELECT i FROM t ORDER BY i") == [["1"], ["2"]]
        with pytest.raises(WireError) as caught:
            session.query("SELECT * FROM no_such_table")
        assert caught.value.sqlstate == "42P01"
        assert session.query("SELECT 2") == [["2"]]  # the session survives an error

    with pytest.raises(WireError) as caught, connect(host, port, user, db, password="wrong"):
        pass
    assert caught.value.sqlstate == "28P01"
    assert out["DATABASE_PASSWORD"] not in str(caught.value)

    with (
        pytest.raises(WireError) as caught,
        connect(host, port, user, "no_such_db", password=out["DATABASE_PASSWORD"]),
    ):
        pass
    assert caught.value.sqlstate == "3D000"


def test_superuser_over_the_private_socket(settings: Settings) -> None:
    record = lifecycle.up(Plan.build("wire-admin", settings))
    socket_dir = Layout.for_settings(settings).socket_dir("wire-admin")
    port = int(record.outputs["DATABASE_PORT"])
    with connect(str(socket_dir), port, ADMIN_USER, "template1") as s:
        assert s.query("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [["t"]]
