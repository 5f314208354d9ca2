"""The issue 17 checks with the CLI as a user runs it, against a plain server started by the
test (tests/shared_pg.py: admin with CREATEDB CREATEROLE, not superuser): two seeded databases
with distinct roles, isolation, down drops only its own, a failed run preserves, reap from a
fresh ENVKIT_HOME drops the expired one only; 16 concurrent ups; the admin password nowhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from shared_pg import SharedServer, bindirs, connects, shared_server, wait_for_refills

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not bindirs(), reason="needs PostgreSQL")]


@pytest.fixture(scope="module")
def server() -> Iterator[SharedServer]:
    with shared_server(bindirs()[min(bindirs())]) as running:
        yield running


def envkit(home: Path, *args: str, password: str | None, **extra: str
           ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVKIT_", "PG"))}
    env.update(ENVKIT_HOME=str(home), **extra)
    if password is not None:
        env["PGPASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def url_of(home: Path, pipeline_id: str) -> str:
    shown = envkit(home, "outputs", pipeline_id, "--format", "json", "--show-secrets",
                   password=None)
    assert shown.returncode == 0, shown.stderr
    return str(json.loads(shown.stdout)["DATABASE_URL"])


def databases(server: SharedServer) -> set[str]:
    """The server's databases but spares (refills running in the background change those)."""
    names = server.psql("SELECT datname FROM pg_database").split()
    return {name for name in names if not name.startswith("envkit-sp-")}


def test_the_issue_checks(server: SharedServer, tmp_path: Path) -> None:
    home, outputs = tmp_path / "home", []
    pw, ref = server.password, server.reference
    for pipeline_id in ("a", "b"):
        up = envkit(home, "up", pipeline_id, "--database-server", ref, "--format", "json",
                    password=pw)
        assert up.returncode == 0, up.stderr
        outputs.append(up.stdout + up.stderr)
    a, b = url_of(home, "a"), url_of(home, "b")
    with psycopg.connect(a) as conn_a, psycopg.connect(b) as conn_b:
        user_a = conn_a.execute("SELECT current_user, count(*) FROM users").fetchone()
        user_b = conn_b.execute("SELECT current_user, count(*) FROM users").fetchone()
    assert user_a is not None and user_b is not None
    assert user_a[0] != user_b[0] and user_a[1] == user_b[1] > 0  # two seeded, distinct roles
    assert not connects(a, "envkit_b") and not connects(a, "postgres")
    server.psql("CREATE DATABASE handmade")
    before = databases(server)
    down = envkit(home, "down", "a", password=pw)
    assert down.returncode == 0, down.stderr
    assert databases(server) == before - {"envkit_a"}  # a's database, nothing else
    assert "envkit_a" not in server.psql("SELECT rolname FROM pg_roles").split()
    run = envkit(home, "run", "c", "--database-server", ref, "--ttl", "2s", "--", "sh", "-c",
                 "exit 3", password=pw)
    assert run.returncode == 3, run.stderr
    assert "preserved" in run.stderr
    assert "envkit_c" in databases(server)
    time.sleep(3)
    fresh = tmp_path / "fresh-home"
    reap = envkit(fresh, "reap", "--database-server", ref, "--json", password=pw)
    assert reap.returncode == 0, reap.stderr
    reaped = json.loads(reap.stdout)["reaped"]
    # The server's entries: a reap from a fresh home may also sweep other runs' local leftovers
    # on this machine (its data root is machine-wide), and spares of the server's pools.
    assert [e["pipeline_id"] for e in reaped if e.get("kind") == "database-server"] == ["c"]
    assert databases(server) == before - {"envkit_a", "envkit_c"}  # b and handmade kept
    missing = envkit(home, "down", "b", password=None, HOME=str(tmp_path))
    assert missing.returncode == 2 and "PGPASSWORD" in missing.stderr
    in_argv = envkit(home, "up", "d", "--database-server", server.dsn, password=None)
    assert in_argv.returncode == 2 and "visible to other users" in in_argv.stderr
    outputs += [reap.stdout, reap.stderr, run.stdout, run.stderr, in_argv.stderr]
    assert envkit(home, "down", "b", password=pw).returncode == 0
    server.psql("DROP DATABASE handmade")
    wait_for_refills(server)
    assert not any(pw in text for text in outputs)
    for path in (p for root in (home, fresh) for p in root.rglob("*") if p.is_file()):
        assert pw.encode() not in path.read_bytes(), path


def test_sixteen_concurrent_ups(server: SharedServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ids = [f"par-{n}" for n in range(16)]

    def up(pipeline_id: str) -> subprocess.CompletedProcess[str]:
        return envkit(home, "up", pipeline_id, "--format", "json", password=None,
                      ENVKIT_DATABASE_SERVER=server.dsn)

    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(up, ids))
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        names = {json.loads(r.stdout)["outputs"]["DATABASE_NAME"] for r in results}
        assert len(names) == 16 and names <= databases(server)
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: envkit(home, "down", i, password=None,
                                           ENVKIT_DATABASE_SERVER=server.dsn), ids))
    assert not {f"envkit_par_{n}" for n in range(16)} & databases(server)
    wait_for_refills(server)


@pytest.mark.parametrize(
    "command",
    [["up", "p1"], ["down", "p1"], ["extend", "p1", "--ttl", "1h"], ["reap", "--dry-run"],
     ["run", "p1", "--", "true"]],
)
def test_every_command_refuses_a_password_on_its_command_line(
    tmp_path: Path, command: list[str]
) -> None:
    """Command lines are visible to every local user: --database-server with a password is
    refused (exit 2) by each command taking it, before anything is written."""
    home = tmp_path / "home"
    dsn = "postgresql://admin:S3cret-in-argv@127.0.0.1:5432/postgres"
    done = envkit(home, *command[:2], "--database-server", dsn, *command[2:], password=None)
    assert done.returncode == 2, done.stderr
    assert "--database-server holds a password" in done.stderr
    assert "S3cret-in-argv" not in done.stdout + done.stderr
    assert not home.exists()
