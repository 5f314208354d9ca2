"""Issue 15's checks, as users meet them: every front end seeds alike, state tells the truth
after a server dies, kept and attached environments survive it, and every command that takes
a pipeline ID finds it from CI variables or ENVKIT_PIPELINE_ID.

Every environment lives in the test's private ENVKIT_HOME (the ``envkit_home`` fixture), which
destroys whatever is left there even when an assertion fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import CI_VARIABLES

from envkit.naming import detect_pipeline_id, parse_iso
from envkit.processes import wait_gone
from envkit.state import utcnow

pytestmark = pytest.mark.e2e

PSQL = "/usr/bin/psql"
# Every user table and its exact row count, one "schema.table|count" line each.
COUNTS = (
    "select table_schema || '.' || table_name, (xpath('/row/n/text()', query_to_xml(format("
    "'select count(*) as n from %I.%I', table_schema, table_name), false, true, '')))[1]::text "
    "from information_schema.tables where table_type = 'BASE TABLE' "
    "and table_schema not in ('pg_catalog', 'information_schema') order by 1"
)
# What the environment() script and the plugin's test print: the counts, seen from inside.
PRINT_COUNTS = """
import json, os

def dump(conn, path):
    rows = conn.execute(os.environ["COUNTS"]).fetchall()
    with open(path, "w") as handle:
        json.dump({name: int(n) for name, n in rows}, handle)
"""


def environ(**extra: str) -> dict[str, str]:
    """This process's environment without any CI or envkit variable, plus ``extra``."""
    cleared = (*CI_VARIABLES, "GITHUB_ACTIONS", "GITHUB_OUTPUT", "GITHUB_ENV", "GITLAB_CI")
    env = {k: v for k, v in os.environ.items() if k not in cleared}
    return {**env, "COUNTS": COUNTS, **extra}


def envkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env or environ())


def ok(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = envkit(*args, env=env)
    assert done.returncode == 0, f"envkit {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def status(pipeline_id: str) -> dict[str, Any]:
    return dict(json.loads(ok("status", pipeline_id, "--json").stdout))


def url_of(pipeline_id: str, env: dict[str, str] | None = None) -> str:
    args = ("outputs", pipeline_id, "--format", "json", "--show-secrets")
    return str(json.loads(ok(*args, env=env).stdout)["DATABASE_URL"])


def psql(url: str, sql: str) -> str:
    done = subprocess.run([PSQL, url, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def parse_counts(text: str) -> dict[str, int]:
    return {name: int(n) for name, n in (line.split("|") for line in text.splitlines() if line)}


def kill_server(home: Path, pipeline_id: str) -> None:
    """SIGKILL the environment's postmaster (the pid its record holds) and wait until it is
    dead (gone, or a zombie nobody reaped)."""
    record = json.loads((home / "envs" / f"{pipeline_id}.json").read_text())
    pid = int(record["resources"]["pid"])
    os.kill(pid, signal.SIGKILL)
    if not wait_gone(pid, 10.0):
        raise AssertionError(f"postmaster {pid} of {pipeline_id} survived SIGKILL")


def inner_pytest(folder: Path, test: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A pytest session in ``folder`` with the envkit plugin (loaded by its entry point)."""
    (folder / "counts_helper.py").write_text(PRINT_COUNTS)
    (folder / "test_inner.py").write_text(test)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=folder, capture_output=True, text=True, timeout=120, check=False, env=env)


# -- 1. every front end, no dataset named, seeds the same data -------------------------------

LIBRARY = """
import sys, envkit
from counts_helper import dump

with envkit.environment("fe-lib") as env, env.connect() as conn:
    dump(conn, sys.argv[1])
"""

PLUGIN_TEST = """
import os
from counts_helper import dump

def test_counts(envkit_db):
    dump(envkit_db, os.environ["COUNTS_FILE"])
"""


def test_every_front_end_seeds_the_same_data(envkit_home: Path, tmp_path: Path) -> None:
    try:
        ok("up", "fe-up")
        by_up = parse_counts(psql(url_of("fe-up"), COUNTS))
    finally:
        envkit("down", "fe-up")
    assert by_up and all(n > 0 for n in by_up.values()), by_up  # the default dataset

    run = envkit("run", "fe-run", "--", "sh", "-c", f'{PSQL} "$DATABASE_URL" -Atc "$1"', "sh",
                 COUNTS)
    assert run.returncode == 0, run.stderr
    by_run = parse_counts(run.stdout)

    (tmp_path / "counts_helper.py").write_text(PRINT_COUNTS)
    library = subprocess.run([sys.executable, "-c", LIBRARY, str(tmp_path / "lib.json")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120,
                             check=False, env=environ())
    assert library.returncode == 0, library.stderr
    by_library = json.loads((tmp_path / "lib.json").read_text())

    session_dir = tmp_path / "session"
    session_dir.mkdir()
    counts_file = str(tmp_path / "plugin.json")
    session = inner_pytest(session_dir, PLUGIN_TEST, environ(COUNTS_FILE=counts_file))
    assert session.returncode == 0, session.stdout + session.stderr
    by_plugin = json.loads(Path(counts_file).read_text())

    assert {"up": by_up, "run": by_run, "environment()": by_library, "plugin": by_plugin} == {
        "up": by_up, "run": by_up, "environment()": by_up, "plugin": by_up}
    # run, environment() and the plugin's session destroyed what they created, on success.
    assert [status(i)["status"] for i in ("fe-run", "fe-lib")] == ["absent", "absent"]
    assert json.loads(ok("list", "--json").stdout) == []


# -- 2. state tells the truth once the server is dead ---------------------------------------


def test_status_list_and_wait_see_a_killed_server(envkit_home: Path) -> None:
    try:
        ok("up", "fe-kill", "--no-seed")
        assert status("fe-kill")["status"] == "ready"
        kill_server(envkit_home, "fe-kill")

        # The first reads after the death, with no retry: neither says "ready".
        after_kill = status("fe-kill")
        listed = json.loads(ok("list", "--json").stdout)
        assert (after_kill["status"], after_kill["alive"]) == ("failed", False), after_kill
        assert "database" in after_kill["error"], after_kill
        (entry,) = [e for e in listed if e["pipeline_id"] == "fe-kill"]
        assert entry["status"] != "ready" and entry["alive"] is False, entry

        started = time.monotonic()
        waited = envkit("wait", "fe-kill", "--timeout", "60s")
        took = time.monotonic() - started
        assert waited.returncode == 1, waited.stdout + waited.stderr
        assert "database" in waited.stderr and "not running" in waited.stderr, waited.stderr
        assert took < 30, f"wait took {took:.1f}s: it waited for its timeout"
    finally:
        envkit("down", "fe-kill")


# -- 3. a preserved environment keeps its data when its server died ---------------------------


def test_up_of_a_preserved_environment_whose_server_died_keeps_its_rows(
    envkit_home: Path,
) -> None:
    try:
        ok("up", "fe-keep")
        psql(url_of("fe-keep"), "create table kept (note text); "
                                "insert into kept values ('debug me')")
        ok("down", "fe-keep", "--preserve")
        kill_server(envkit_home, "fe-keep")
        dead = status("fe-keep")
        assert (dead["status"], dead["alive"]) == ("preserved", False), dead

        again = envkit("up", "fe-keep")
        assert again.returncode == 0, again.stdout + again.stderr
        assert psql(url_of("fe-keep"), "select note from kept") == "debug me\n"
        alive = status("fe-keep")
        assert (alive["status"], alive["alive"]) == ("preserved", True), alive
    finally:
        envkit("down", "fe-keep")


# -- 4. a session attached to an environment whose server died never destroys it ------------

ATTACHED_TEST = """
def test_uses_it(envkit_env, envkit_db):
    assert envkit_env.pipeline_id == "fe-attach"
    assert envkit_db.execute("select 1").fetchone() == (1,)
"""


def test_attached_session_leaves_the_environment_after_its_server_died(
    envkit_home: Path, tmp_path: Path
) -> None:
    try:
        ok("up", "fe-attach", "--no-seed")
        before = url_of("fe-attach")
        with psycopg.connect(before, connect_timeout=5, autocommit=True) as conn:
            conn.execute("create table kept (n int); insert into kept values (7)")
        kill_server(envkit_home, "fe-attach")

        session = inner_pytest(tmp_path, ATTACHED_TEST, environ(ENVKIT_PIPELINE_ID="fe-attach"))
        assert session.returncode == 0, session.stdout + session.stderr
        assert "1 passed" in session.stdout, session.stdout

        after = status("fe-attach")
        assert after["status"] != "absent", after
        assert (after["status"], after["alive"]) == ("ready", True), after
        assert url_of("fe-attach") == before  # started again on its data, not recreated
        with psycopg.connect(before, connect_timeout=5) as conn:
            assert conn.execute("select n from kept").fetchone() == (7,)
    finally:
        envkit("down", "fe-attach")


# -- 5. every command finds the pipeline ID the same way -------------------------------------

CI_RUNS = {
    "github": {"GITHUB_RUN_ID": "77", "GITHUB_RUN_ATTEMPT": "1"},
    "gitlab": {"CI_PIPELINE_ID": "4242", "CI_JOB_ID": "99"},
    "envkit": {"ENVKIT_PIPELINE_ID": "some-id"},
}


@pytest.mark.parametrize("ci", list(CI_RUNS))
def test_commands_find_the_pipeline_id_without_one(envkit_home: Path, ci: str) -> None:
    variables = CI_RUNS[ci]
    expected = variables.get("ENVKIT_PIPELINE_ID") or detect_pipeline_id(variables)
    assert expected
    env = environ(**variables)
    try:
        created = json.loads(ok("up", "--no-seed", "--format", "json", env=env).stdout)
        assert created["pipeline_id"] == expected

        outputs = json.loads(ok("outputs", "--format", "json", "--show-secrets", env=env).stdout)
        assert outputs["ENVKIT_PIPELINE_ID"] == expected
        assert outputs["DATABASE_URL"] == url_of(expected)

        waited = ok("wait", "--timeout", "30s", env=env)
        assert expected in waited.stdout and "healthy" in waited.stdout

        logs = ok("logs", env=env)
        assert "database system is ready to accept connections" in logs.stdout

        ok("extend", "--ttl", "2h", env=env)
        left = parse_iso(status(expected)["expires_at"]) - utcnow()
        assert timedelta(hours=1, minutes=58) < left <= timedelta(hours=2), left

        ok("seed", env=env)
        counts = parse_counts(psql(outputs["DATABASE_URL"], COUNTS))
        assert counts and all(n > 0 for n in counts.values()), counts
    finally:
        envkit("down", expected)
