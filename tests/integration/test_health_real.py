"""Health probes against real things: PostgreSQL servers, an HTTP server, ports, commands, the CLI.

Timing assertions are generous bounds only (fatal "at once" means well before the deadline);
detection lag is measured in bench/bench_health.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import pytest

from envkit import lifecycle
from envkit.health import HealthCheckFailedError, wait_until_healthy
from envkit.health.command import CommandProbe
from envkit.health.network import HttpProbe, TcpProbe
from envkit.health.postgres import PostgresProbe
from envkit.plan import Plan
from envkit.processes import wait_gone
from envkit.providers.local.layout import Layout
from envkit.providers.local.pgserver import stop_server
from envkit.providers.local.provider import LocalProvider
from envkit.settings import Settings
from envkit.state import Record

pytestmark = pytest.mark.integration

Client = Literal["wire", "psycopg"]
CLIENTS: list[Client] = ["wire", "psycopg"]


def up(settings: Settings, pipeline_id: str) -> Record:
    return lifecycle.up(Plan.build(pipeline_id, settings))


def probe(record: Record, client: Client, url: str | None = None) -> PostgresProbe:
    return PostgresProbe(url or record.outputs["DATABASE_URL"], client=client)


def with_url(url: str, *, password: str | None = None, dbname: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password or parts.password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, f"/{dbname}" if dbname else parts.path, "", ""))


def restart_later(settings: Settings, record: Record, delay: float) -> threading.Thread:
    """Stop the environment's server now and start it again in a thread after ``delay``."""
    server = LocalProvider(settings).server_of(record)
    stop_server(server.datadir, fast=True)

    def start() -> None:
        time.sleep(delay)
        server.start()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_postgres_started_after_a_delay_is_detected(settings: Settings, client: Client) -> None:
    record = up(settings, f"late-{client}")
    starter = restart_later(settings, record, delay=0.4)
    try:
        report = wait_until_healthy([probe(record, client)], timeout=30)
    finally:
        starter.join(30)
    (result,) = report.results
    assert result.ok and result.attempts > 3  # it retried while the server was down
    assert 0.3 < result.seconds < 20
    assert report.timings() == {"health.database": round(result.seconds, 4)}


AUTO_WAIT = """
import json, os, sys
from envkit.health import wait_until_healthy
from envkit.health.postgres import PostgresProbe
from pathlib import Path
probe = PostgresProbe(os.environ["PROBE_URL"], client="auto", pidfile=Path(sys.argv[1]))
report = wait_until_healthy([probe], timeout=30)
print(json.dumps({"ok": report.ok, "attempts": report.results[0].attempts,
                  "wire": probe._use_wire(), "psycopg": "psycopg" in sys.modules}))
"""


def test_auto_client_waits_on_the_wire_client_without_psycopg(settings: Settings) -> None:
    """In a fresh process, ``auto`` waits for envkit's own server (its pid file given) with
    envkit's own client: psycopg (~0.1 s to import) is never loaded."""
    record = up(settings, "late-auto")
    pidfile = Layout.for_settings(settings).pgdata("late-auto") / "postmaster.pid"
    starter = restart_later(settings, record, delay=0.6)
    try:
        done = subprocess.run(
            [sys.executable, "-c", AUTO_WAIT, str(pidfile)],
            env={**os.environ, "PROBE_URL": record.outputs["DATABASE_URL"]},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        starter.join(30)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"ok": True, "attempts": result["attempts"], "wire": True, "psycopg": False}
    assert result["attempts"] > 3
    assert record.outputs["DATABASE_PASSWORD"] not in done.stdout + done.stderr


@pytest.mark.parametrize("client", CLIENTS)
def test_wrong_password_fails_at_once(
    settings: Settings, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    record = up(settings, f"pw-{client}")
    real = record.outputs["DATABASE_PASSWORD"]
    wrong = "Wr0ng-" + real[:6][::-1] + "-pw"
    started = time.monotonic()
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy(
            [probe(record, client, with_url(record.outputs["DATABASE_URL"], password=wrong))],
            timeout=60,
            secrets=[real],
        )
    assert time.monotonic() - started < 15  # not the 60 s deadline
    exc = caught.value
    (result,) = exc.report.results
    assert result.fatal and result.attempts == 1
    assert "password authentication failed" in (result.error or "")
    everything = "\n".join(
        [str(exc), repr(exc.report), json.dumps(exc.report.as_dict()), caplog.text]
    )
    assert wrong not in everything and real not in everything


@pytest.mark.parametrize("client", CLIENTS)
def test_missing_database_fails_at_once(settings: Settings, client: Client) -> None:
    record = up(settings, f"nodb-{client}")
    url = with_url(record.outputs["DATABASE_URL"], dbname="no_such_db")
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([probe(record, client, url)], timeout=60)
    (result,) = caught.value.report.results
    assert result.fatal and "does not exist" in (result.error or "")


@pytest.mark.parametrize("client", CLIENTS)
def test_require_rows_waits_for_migrations(settings: Settings, client: Client) -> None:
    import psycopg

    record = up(settings, f"mig-{client}")
    url = record.outputs["DATABASE_URL"]
    check = probe(record, client)
    check.require_rows = "SELECT 1 FROM schema_migrations WHERE version = 2"

    def migrate() -> None:
        time.sleep(0.2)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_migrations (version int)")
            time.sleep(0.2)
            conn.execute("INSERT INTO schema_migrations VALUES (1), (2)")

    migrator = threading.Thread(target=migrate, daemon=True)
    migrator.start()
    try:
        report = wait_until_healthy([check], timeout=30)
    finally:
        migrator.join(30)
    assert report.ok and report.results[0].attempts > 2


# -- HTTP, TCP, command ---------------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, int]]]:
    """127.0.0.1:<free> answering 503 to the first 3 GETs, then 200 with a JSON body."""
    seen = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen["requests"] += 1
            ready = seen["requests"] > 3
            body = json.dumps({"status": "UP" if ready else "STARTING"}).encode()
            self.send_response(200 if ready else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_http_server_turns_healthy_after_n_requests(
    http_server: tuple[str, dict[str, int]],
) -> None:
    base, seen = http_server
    check = HttpProbe(f"{base}/health", component="api", json_field="status", json_value="UP")
    report = wait_until_healthy([check], timeout=30)
    assert report.ok and report.results[0].attempts == 4 and seen["requests"] == 4


def test_http_body_mismatch_times_out_naming_the_service(
    http_server: tuple[str, dict[str, int]],
) -> None:
    base, _ = http_server
    check = HttpProbe(f"{base}/health", component="api", body_contains="never there")
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([check], timeout=0.5)
    (result,) = caught.value.report.failing
    assert result.component == "api" and "does not contain" in (result.error or "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tcp_port_that_never_opens_times_out_at_the_deadline() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy(
            [TcpProbe("127.0.0.1", port, component="cache", name="redis")], timeout=1.0
        )
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 10
    exc = caught.value
    (result,) = exc.report.failing
    assert (result.component, result.name, result.status) == ("cache", "redis", "not ready")
    assert "refused" in (result.error or "").lower()
    assert "cache (redis)" in str(exc)


def test_command_probe(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    threading.Timer(0.2, flag.touch).start()
    report = wait_until_healthy([CommandProbe(f"test -e {flag}")], timeout=30)
    assert report.ok and report.results[0].attempts > 1

    with pytest.raises(HealthCheckFailedError) as caught:  # cannot run at all: at once
        wait_until_healthy([CommandProbe("no-such-command-envkit")], timeout=60)
    assert caught.value.fatal and "exit 127" in (caught.value.report.results[0].error or "")

    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([CommandProbe(["/no/such/binary"])], timeout=60)
    assert caught.value.fatal


def test_command_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hang = CommandProbe(f"sleep 30 & echo $! > {pidfile}; wait", timeout=0.3)
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([hang], timeout=0.5)
    assert "no exit within" in (caught.value.report.results[0].error or "")
    child = int(pidfile.read_text())
    assert wait_gone(child, 5.0)  # the background sleep died with its group


# -- the CLI --------------------------------------------------------------------------------


def envkit(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_")}
    environ["ENVKIT_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "envkit", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=False,
    )


def test_killed_database_during_wait_exits_1_naming_the_database(envkit_home: Path) -> None:
    created = envkit(envkit_home, "up", "killed-db", "--format", "json")
    assert created.returncode == 0, created.stderr
    ok = envkit(envkit_home, "wait", "killed-db", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True

    record = json.loads((envkit_home / "envs" / "killed-db.json").read_text())
    password = record["outputs"]["DATABASE_PASSWORD"]
    os.kill(int(record["resources"]["pid"]), signal.SIGKILL)  # the postmaster we started
    assert wait_gone(int(record["resources"]["pid"]), 10)

    # Its server is gone: wait fails at once (not after its timeout), naming the database.
    started = time.monotonic()
    failed = envkit(envkit_home, "wait", "killed-db", "--timeout", "60s")
    assert failed.returncode == 1
    assert time.monotonic() - started < 30  # far from the 60 s it was allowed
    assert "database" in failed.stderr and "not running" in failed.stderr

    as_json = envkit(envkit_home, "wait", "killed-db", "--timeout", "60s", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert [(p["component"], p["status"]) for p in report["probes"]] == [("database", "failed")]
    for result in (created, ok, failed, as_json):
        assert password not in result.stdout + result.stderr
    events = (envkit_home / "events.jsonl").read_text()
    assert '"unhealthy"' in events and password not in events


def test_wait_on_an_absent_environment_is_bad_input(envkit_home: Path) -> None:
    result = envkit(envkit_home, "wait", "never-created")
    assert result.returncode == 2 and "envkit up never-created" in result.stderr
