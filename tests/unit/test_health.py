"""Pure logic of envkit.health: classification, backoff, deadline, report, spec parsing.

Fake probes only: no network, no processes. Timing bounds are deliberately generous; speed is
judged in bench/bench_health.py.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from envkit.errors import ConfigError, HealthCheckTimeoutError
from envkit.health import HealthCheckFailedError, ProbeError, TransientError, wait_until_healthy
from envkit.health.command import CommandProbe
from envkit.health.engine import backoff_delay, probe_cap, redact_text
from envkit.health.network import DEFAULT_HTTP_STATUSES, HttpProbe, TcpProbe, json_path, judge_http
from envkit.health.postgres import PostgresProbe, is_transient_pg_error
from envkit.health.spec import probe_from_spec
from envkit.providers.aws.probes import (
    EcsServicesProbe,
    RdsInstanceProbe,
    judge_ecs,
    judge_rds_status,
)

SECRET = "s3cr3t-Pa55"


@dataclass
class FakeProbe:
    """Fails transiently ``failures`` times, then passes (or raises ``fatal`` at attempt N)."""

    name: str = "fake"
    component: str = "thing"
    failures: int = 0
    fatal_at: int | None = None
    fatal: Exception = field(default_factory=lambda: ProbeError("no way"))
    message: str = "not yet"
    max_delay: float = 0.005
    calls: int = 0

    def check(self) -> None:
        self.calls += 1
        if self.fatal_at is not None and self.calls >= self.fatal_at:
            raise self.fatal
        if self.calls <= self.failures:
            raise TransientError(self.message)


class PgError(Exception):
    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


# -- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "sqlstate", "transient"),
    [
        ('connection to server at "127.0.0.1", port 5432 failed: Connection refused', None, True),
        ("FATAL:  the database system is starting up", None, True),
        ("FATAL:  the database system is starting up", "57P03", True),
        ("connection timeout expired", None, True),
        ('could not translate host name "db.example" to address', None, True),
        ("FATAL:  sorry, too many clients already", "53300", True),
        ('FATAL:  password authentication failed for user "app"', None, False),
        ('FATAL:  password authentication failed for user "app"', "28P01", False),
        ('FATAL:  database "nope" does not exist', None, False),
        ('FATAL:  database "nope" does not exist', "3D000", False),
        ('FATAL:  role "ghost" does not exist', None, False),
        ("something nobody has seen before", None, False),
    ],
)
def test_postgres_errors_are_classified(
    message: str, sqlstate: str | None, transient: bool
) -> None:
    assert is_transient_pg_error(PgError(message, sqlstate)) is transient


def test_rds_statuses() -> None:
    judge_rds_status("db1", "available")
    for status in ("creating", "backing-up", "modifying", "rebooting"):
        with pytest.raises(TransientError, match=status):
            judge_rds_status("db1", status)
    for status in ("failed", "stopped", "deleting", "storage-full"):
        with pytest.raises(ProbeError, match=status):
            judge_rds_status("db1", status)


def _service(name: str, running: int, desired: int, **extra: object) -> dict[str, object]:
    deployments = extra.pop("deployments", [{"rolloutState": "COMPLETED"}])
    return {
        "serviceName": name,
        "status": "ACTIVE",
        "runningCount": running,
        "desiredCount": desired,
        "pendingCount": 0,
        "deployments": deployments,
        **extra,
    }


def test_ecs_stability_rules() -> None:
    active = {"clusterName": "c", "status": "ACTIVE"}
    judge_ecs(active, [_service("api", 2, 2), _service("worker", 0, 0)])
    with pytest.raises(TransientError, match="api running 1/2"):
        judge_ecs(active, [_service("api", 1, 2)])
    with pytest.raises(TransientError, match="2 deployments"):
        judge_ecs(active, [_service("api", 2, 2, deployments=[{}, {}])])
    with pytest.raises(TransientError, match="PROVISIONING"):
        judge_ecs({"clusterName": "c", "status": "PROVISIONING"}, [])
    with pytest.raises(ProbeError, match="INACTIVE"):
        judge_ecs({"clusterName": "c", "status": "INACTIVE"}, [])
    with pytest.raises(ProbeError, match="DRAINING"):
        judge_ecs(active, [_service("api", 2, 2, status="DRAINING")])
    with pytest.raises(ProbeError, match="deployment failed"):
        judge_ecs(active, [_service("api", 0, 2, deployments=[{"rolloutState": "FAILED"}])])


def test_http_judgement() -> None:
    url = "http://127.0.0.1:1/health"
    judge_http(url, 200, b"ok")
    judge_http(url, 302, b"")
    with pytest.raises(TransientError, match="HTTP 503"):
        judge_http(url, 503, b"")
    with pytest.raises(TransientError, match="HTTP 404"):
        judge_http(url, 404, b"")
    with pytest.raises(ProbeError, match="401"):
        judge_http(url, 401, b"")
    judge_http(url, 204, b"", statuses={204})
    with pytest.raises(TransientError):
        judge_http(url, 200, b"", statuses={204})
    with pytest.raises(TransientError, match="does not contain"):
        judge_http(url, 200, b"starting", body_contains="ok")
    body = json.dumps({"status": "UP", "checks": {"db": [True, False]}}).encode()
    judge_http(url, 200, body, json_field="status", json_value="UP")
    judge_http(url, 200, body, json_field="checks.db.0")
    with pytest.raises(TransientError, match="expected 'DOWN'"):
        judge_http(url, 200, body, json_field="status", json_value="DOWN")
    with pytest.raises(TransientError, match="missing"):
        judge_http(url, 200, body, json_field="checks.cache")
    with pytest.raises(TransientError, match="is False"):
        judge_http(url, 200, body, json_field="checks.db.1")
    with pytest.raises(TransientError, match="not JSON"):
        judge_http(url, 200, b"<html>", json_field="status")
    assert 200 in DEFAULT_HTTP_STATUSES and 399 in DEFAULT_HTTP_STATUSES
    assert 400 not in DEFAULT_HTTP_STATUSES


def test_json_path() -> None:
    doc = {"a": {"b": [1, {"c": None}]}}
    assert json_path(doc, "a.b.0") == 1
    assert json_path(doc, "a.b.1.c") is None
    assert json_path(doc, "a.x") is not None  # the sentinel, not None


# -- backoff and the wait -------------------------------------------------------------------


def test_backoff_doubles_from_a_few_ms_to_the_cap() -> None:
    delays = [backoff_delay(n, first=0.002, cap=0.25) for n in range(1, 12)]
    assert delays[:4] == [0.002, 0.004, 0.008, 0.016]
    assert delays[-1] == 0.25
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert backoff_delay(10_000, first=0.002, cap=3.0) == 3.0  # no overflow


def test_probe_cap_prefers_override_then_own_then_default() -> None:
    assert probe_cap(FakeProbe(max_delay=0.5)) == 0.5
    assert probe_cap(FakeProbe(max_delay=0.5), 0.1) == 0.1
    assert probe_cap(TcpProbe("127.0.0.1", 1)) < 0.05  # local probes poll in ms
    assert probe_cap(RdsInstanceProbe("db")) >= 1.0  # cloud APIs poll in seconds


def test_all_pass_after_transient_failures() -> None:
    probes = [FakeProbe(name="a", failures=3), FakeProbe(name="b", failures=0)]
    report = wait_until_healthy(probes, timeout=10)
    assert report.ok
    assert [r.attempts for r in report.results] == [4, 1]
    assert all(r.error is None for r in report.results)
    assert report.seconds < 5


def test_no_probes_is_healthy() -> None:
    assert wait_until_healthy([], timeout=1).ok


def test_deadline_stops_a_probe_that_never_passes() -> None:
    never = FakeProbe(name="never", component="network", failures=10**9, message="refused")
    started = time.monotonic()
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([never, FakeProbe(name="fine")], timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5
    exc = caught.value
    assert isinstance(exc, HealthCheckTimeoutError)  # callers may catch the documented parent
    assert exc.exit_code == 1 and not exc.fatal
    (failing,) = exc.report.failing
    assert (failing.name, failing.component, failing.status) == ("never", "network", "not ready")
    assert failing.error == "refused" and failing.attempts > 5
    assert "network (never)" in str(exc) and "within 0.3s" in exc.headline
    ok = [r for r in exc.report.results if r.ok]
    assert [r.name for r in ok] == ["fine"]


def test_fatal_fails_at_once_and_stops_the_others() -> None:
    slow = FakeProbe(name="slow", failures=10**9, max_delay=5.0)  # asleep most of the time
    bad = FakeProbe(
        name="bad", component="database", failures=10, fatal_at=3, fatal=ProbeError("bad pw")
    )
    started = time.monotonic()
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([slow, bad], timeout=30)
    assert time.monotonic() - started < 5  # not the 30 s deadline
    exc = caught.value
    assert exc.fatal
    by_name = {r.name: r for r in exc.report.results}
    assert by_name["bad"].status == "failed" and by_name["bad"].error == "bad pw"
    assert by_name["bad"].attempts == 3
    assert by_name["slow"].status == "not ready"
    assert "waiting would not help" in exc.headline


def test_unexpected_exception_is_fatal_with_its_type() -> None:
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([FakeProbe(fatal_at=1, fatal=KeyError("x"))], timeout=5)
    assert caught.value.report.results[0].error == "KeyError: 'x'"


def test_probes_run_in_parallel() -> None:
    barrier = threading.Barrier(3, timeout=5)

    @dataclass
    class Meeting:
        name: str
        component: str = "c"

        def check(self) -> None:
            barrier.wait()  # passes only if all three are inside check() at once

    report = wait_until_healthy([Meeting("a"), Meeting("b"), Meeting("c")], timeout=10)
    assert report.ok


def test_a_hung_attempt_is_reported_at_the_deadline() -> None:
    release = threading.Event()

    @dataclass
    class Hung:
        name: str = "hung"
        component: str = "service"

        def check(self) -> None:
            release.wait(10)

    try:
        with pytest.raises(HealthCheckFailedError) as caught:
            wait_until_healthy([Hung()], timeout=0.1)
        assert "no answer before the deadline" in (caught.value.report.results[0].error or "")
    finally:
        release.set()


def test_report_shapes_and_timings() -> None:
    probes = [
        FakeProbe(name="postgres", component="database"),
        FakeProbe(name="tcp", component="network"),
        FakeProbe(name="http /health", component="api"),
        FakeProbe(name="http /ready", component="api"),
    ]
    report = wait_until_healthy(probes, timeout=5)
    data = report.as_dict()
    assert data["ok"] is True and len(data["probes"]) == 4
    assert set(data["probes"][0]) == {
        "name",
        "component",
        "ok",
        "status",
        "attempts",
        "seconds",
        "error",
        "fatal",
    }
    json.dumps(data)  # serialisable as is
    assert set(report.timings()) == {
        "health.database",
        "health.network",
        "health.api.http /health",
        "health.api.http /ready",
    }


# -- secrets --------------------------------------------------------------------------------


def test_secrets_never_reach_the_report() -> None:
    leaky = FakeProbe(
        fatal_at=1,
        fatal=ProbeError(f"cannot reach postgresql://app:{SECRET}@db:5432/app password={SECRET}"),
    )
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([leaky], timeout=5, secrets=[SECRET])
    exc = caught.value
    for text in (str(exc), exc.message, json.dumps(exc.report.as_dict()), repr(exc.report)):
        assert SECRET not in text


def test_url_passwords_are_masked_without_being_told() -> None:
    text = redact_text(f"x postgresql://u:{SECRET}@h/db y https://a:{SECRET}@b/ password={SECRET}")
    assert SECRET not in text and "postgresql://u:********@h/db" in text


def test_probe_reprs_hide_passwords() -> None:
    probes: list[object] = [
        PostgresProbe(f"postgresql://app:{SECRET}@127.0.0.1:5432/app"),
        HttpProbe(f"http://admin:{SECRET}@127.0.0.1:8080/health"),
        CommandProbe("true", env={"DATABASE_PASSWORD": SECRET}),
        RdsInstanceProbe("db", user="app", password=SECRET),
    ]
    for probe in probes:
        assert SECRET not in repr(probe)


# -- specs ----------------------------------------------------------------------------------


def test_probe_from_spec_forms() -> None:
    http = probe_from_spec({"http": "/health"}, component="api", base_url="http://127.0.0.2:8000")
    assert isinstance(http, HttpProbe) and http.url == "http://127.0.0.2:8000/health"
    assert http.component == "api"

    tcp = probe_from_spec({"tcp": 5432}, host="127.0.0.3")
    assert isinstance(tcp, TcpProbe) and (tcp.host, tcp.port) == ("127.0.0.3", 5432)
    tcp2 = probe_from_spec({"tcp": "10.0.0.1:6379", "name": "redis", "timeout": "2s"})
    assert isinstance(tcp2, TcpProbe) and tcp2.host == "10.0.0.1" and tcp2.name == "redis"
    assert tcp2.timeout == 2.0

    cmd = probe_from_spec({"command": "pg_isready", "timeout": 3})
    assert isinstance(cmd, CommandProbe) and cmd.timeout == 3.0

    full = probe_from_spec(
        {"http": "http://x/h", "status": [200, 204], "body": "ok", "json": {"status": "UP"}}
    )
    assert isinstance(full, HttpProbe)
    assert set(full.statuses) == {200, 204} and full.body_contains == "ok"
    assert (full.json_field, full.json_value) == ("status", "UP")

    pg = probe_from_spec({"postgres": "postgresql://u:p@h/d", "query": "SELECT 1 FROM t"})
    assert isinstance(pg, PostgresProbe) and pg.require_rows == "SELECT 1 FROM t"

    ecs = probe_from_spec({"aws-ecs": "c1", "services": ["api"]})
    assert isinstance(ecs, EcsServicesProbe) and list(ecs.services) == ["api"]
    rds = probe_from_spec({"aws-rds": "db-1", "component": "db"})
    assert isinstance(rds, RdsInstanceProbe) and rds.component == "db"


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"smtp": 25},
        {"tcp": 1, "http": "/"},
        {"tcp": "host:notaport"},
        {"tcp": 70000},
        {"command": ""},
        {"http": "/", "json": {"a": 1, "b": 2}},
    ],
)
def test_bad_specs_are_config_errors(spec: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        probe_from_spec(spec)
    assert caught.value.exit_code == 2


def _pidfile(tmp_path: Path, status: str | None) -> Path:
    path = tmp_path / "postmaster.pid"
    if status is not None:
        lines = ["4242", str(tmp_path), "1700000000", "5432", "/tmp", "127.0.0.1", "1 2", status]
        path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("starting", "the server is starting"),
        ("stopping", "the server is stopping"),
        (None, "not running (no postmaster.pid)"),
    ],
)
def test_postgres_probe_waits_on_the_pidfile_without_touching_the_server(
    tmp_path: Path, status: str | None, message: str
) -> None:
    with socket.socket() as listener:  # a server that would see any connection attempt
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.05)
        port = listener.getsockname()[1]
        probe = PostgresProbe(
            f"postgresql://app:{SECRET}@127.0.0.1:{port}/app",
            pidfile=_pidfile(tmp_path, status),
            client="psycopg",
        )
        with pytest.raises(TransientError, match=re.escape(message)):
            probe.check()
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody knocked


def test_postgres_probe_connects_once_the_pidfile_says_ready(tmp_path: Path) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]  # bound, not listening: connections are refused
        probe = PostgresProbe(
            f"postgresql://app:{SECRET}@127.0.0.1:{port}/app",
            pidfile=_pidfile(tmp_path, "ready"),
            client="psycopg",
        )
        with pytest.raises(TransientError, match=r"refused|Connection"):
            probe.check()
        # Ready on paper, refused in fact (a killed server's leftover pid file): back off.
        assert probe.current_max_delay() == 0.05
        assert probe_cap(probe) == 0.05
        _pidfile(tmp_path, "starting")
        with pytest.raises(TransientError, match="starting"):
            probe.check()
        assert probe.current_max_delay() == probe.max_delay


def test_auto_uses_envkit_client_only_for_envkit_servers(tmp_path: Path) -> None:
    url = f"postgresql://app:{SECRET}@127.0.0.1:5432/app"
    own = tmp_path / "postmaster.pid"
    assert PostgresProbe(url, pidfile=own)._use_wire()
    assert not PostgresProbe(url)._use_wire()  # someone else's server: libpq (TLS, .pgpass)
    assert not PostgresProbe(f"{url}?sslmode=require", pidfile=own)._use_wire()
    assert not PostgresProbe("postgresql://127.0.0.1/app", pidfile=own)._use_wire()
    assert PostgresProbe(url, client="wire")._use_wire()
