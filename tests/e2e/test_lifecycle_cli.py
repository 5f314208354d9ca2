"""``envkit run / reap / extend / history / down --preserve`` and concurrency, as users run them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from envkit.providers.local.layout import Layout
from envkit.providers.local.leftovers import inventory, marked_processes
from envkit.settings import Settings
from envkit.state import StateStore, Status

pytestmark = pytest.mark.e2e


def envkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def nothing_left(settings: Settings, *ids: str) -> dict[str, list[str]]:
    return {k: v for k, v in inventory(settings, ids).items() if v}


def in_order(events: list[str], expected: list[str]) -> bool:
    """Whether ``expected`` occurs in ``events`` in this order (other events may come between)."""
    rest = iter(events)
    return all(name in rest for name in expected)


def status(pipeline_id: str) -> dict[str, Any]:
    done = envkit("status", pipeline_id, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def secret_outputs(pipeline_id: str) -> dict[str, str]:
    done = envkit("outputs", pipeline_id, "--format", "json", "--show-secrets")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_run_true_destroys_and_leaves_nothing(settings: Settings) -> None:
    done = envkit("run", "run-ok", "--", "sh", "-c",
                  'test -n "$DATABASE_URL" && test "$ENVKIT_PIPELINE_ID" = run-ok')
    assert done.returncode == 0, done.stderr
    assert status("run-ok")["status"] == "absent"
    assert nothing_left(settings, "run-ok") == {}
    events = [e["event"] for e in StateStore(settings.home).events("run-ok")]
    assert in_order(events, ["provisioning", "ready", "destroying", "absent"]), events


def test_run_failure_preserves_then_ttl_and_reap_remove_only_it(settings: Settings) -> None:
    keeper = envkit("up", "keeper", "--ttl", "4h")
    assert keeper.returncode == 0, keeper.stderr

    done = envkit("run", "run-fail", "--ttl", "2s", "--", "sh", "-c", "exit 7")
    assert done.returncode == 7, done.stderr
    assert status("run-fail")["status"] == "preserved"
    outputs = secret_outputs("run-fail")
    assert outputs["DATABASE_PASSWORD"] not in done.stdout + done.stderr  # hidden by default
    for line in ("connect:", "logs:", "extend:", "destroy:"):
        assert line in done.stderr
    with psycopg.connect(outputs["DATABASE_URL"], connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    not_yet = json.loads(envkit("reap", "--json", "--dry-run").stdout)
    assert "keeper" in [e["pipeline_id"] for e in not_yet["kept"]]
    time.sleep(3.1)  # the TTL is 2 s, recorded to the second
    reaped = envkit("reap", "--json")
    assert reaped.returncode == 0, reaped.stderr
    report = json.loads(reaped.stdout)
    # Environments only: the data root is the machine's, shared with other homes, so machine-wide
    # entries (templates, homes deleted elsewhere) may appear too.
    envs = {k: [e["pipeline_id"] for e in report[k] if e["kind"] == "environment"]
            for k in ("reaped", "kept")}
    assert envs == {"reaped": ["run-fail"], "kept": ["keeper"]}
    assert report["errors"] == []
    assert status("run-fail")["status"] == "absent"
    assert nothing_left(settings, "run-fail") == {
        "records": ["keeper"],
        "locks": ["keeper.lock"],
        "directories": ["keeper"],
        "processes": nothing_left(settings)["processes"],
        "addresses": nothing_left(settings)["addresses"],
    }
    assert list(marked_processes(Layout.for_settings(settings).envs_root)) == ["keeper"]
    with psycopg.connect(secret_outputs("keeper")["DATABASE_URL"], connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    history = json.loads(envkit("history", "run-fail", "--json").stdout)
    assert in_order([e["event"] for e in history], ["preserved", "destroying", "reaped"])


def test_run_policies(settings: Settings) -> None:
    kept = envkit("run", "pol-keep", "--on-success", "keep", "--", "true")
    assert kept.returncode == 0, kept.stderr
    assert status("pol-keep")["status"] == "ready"
    gone = envkit("run", "pol-destroy", "--on-failure", "destroy", "--", "false")
    assert gone.returncode == 1
    assert status("pol-destroy")["status"] == "absent"
    missing = envkit("run", "pol-missing", "--on-failure", "destroy", "--",
                     "/nonexistent/command")
    assert missing.returncode == 127
    assert envkit("run", "pol-none").returncode == 2  # no command after --


def test_sigterm_is_forwarded_and_the_environment_preserved(settings: Settings) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "envkit", "run", "run-term", "--", "sleep", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = StateStore(settings.home)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = store.load("run-term")
        if record is not None and record.status is Status.READY:
            break
        time.sleep(0.01)
    time.sleep(0.2)  # let it spawn the command
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert status("run-term")["status"] == "preserved"
    assert "sleep" not in " ".join(  # the command was stopped, not orphaned
        p for p in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                                  check=False).stdout.splitlines() if p.startswith("sleep 60"))


@pytest.mark.parametrize("ttl", ["nonsense", "0s", "-5m", "5", "10y"])
def test_bad_ttls_exit_2(settings: Settings, ttl: str) -> None:
    assert envkit("up", "bad-ttl", f"--ttl={ttl}").returncode == 2
    assert envkit("down", "bad-ttl", "--preserve", f"--ttl={ttl}").returncode == 2
    assert envkit("extend", "bad-ttl", f"--ttl={ttl}").returncode == 2
    assert envkit("run", "bad-ttl", f"--ttl={ttl}", "--", "true").returncode == 2
    assert envkit("reap", f"--older-than={ttl}").returncode == 2
    assert nothing_left(settings, "bad-ttl") == {}


def test_preserve_extend_and_history(settings: Settings) -> None:
    assert envkit("up", "pres").returncode == 0
    done = envkit("down", "pres", "--preserve", "--ttl", "90s")
    assert done.returncode == 0, done.stderr
    assert "envkit extend pres --ttl" in done.stdout
    assert "envkit down pres" in done.stdout
    assert "********" in done.stdout
    assert secret_outputs("pres")["DATABASE_PASSWORD"] not in done.stdout
    shown = envkit("down", "pres", "--preserve", "--show-secrets")
    assert secret_outputs("pres")["DATABASE_PASSWORD"] in shown.stdout
    assert status("pres")["status"] == "preserved"
    before = status("pres")["expires_at"]
    assert envkit("extend", "pres", "--ttl", "2d").returncode == 0
    assert status("pres")["expires_at"] > before
    assert envkit("extend", "absent-one", "--ttl", "2d").returncode == 2
    history = json.loads(envkit("history", "pres", "--json").stdout)
    names = [e["event"] for e in history]
    assert in_order(names, ["provisioning", "ready", "preserved", "preserved", "extended"])
    assert history[names.index("ready")]["timings"]["total"] > 0
    text = envkit("history", "pres")
    assert text.returncode == 0 and "extended" in text.stdout
    # probe results read as name:status(attempts, seconds), not as a Python repr
    healthy = next(line for line in text.stdout.splitlines() if " healthy " in line)
    assert "probes=database/postgres:ok(" in healthy and "attempt" in healthy, healthy
    assert "{'" not in text.stdout


def test_eight_concurrent_ups_of_distinct_ids(settings: Settings) -> None:
    ids = [f"par-{i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: envkit("up", i, "--format", "json"), ids))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    endpoints = set()
    for r in results:
        outputs = json.loads(r.stdout)["outputs"]
        endpoints.add((outputs["DATABASE_HOST"], outputs["DATABASE_PORT"]))
    assert len(endpoints) == 8
    for pipeline_id in ids:
        with psycopg.connect(secret_outputs(pipeline_id)["DATABASE_URL"],
                             connect_timeout=5) as conn:
            assert conn.execute("select current_database()").fetchone() == (
                "envkit_" + pipeline_id.replace("-", "_"),)


def test_two_concurrent_ups_of_one_id_give_one_server(settings: Settings) -> None:
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(
            lambda _: envkit("up", "same", "--format", "json", "--show-secrets"), range(2)))
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    first, second = (json.loads(r.stdout)["outputs"] for r in results)
    assert first == second
    servers = marked_processes(Layout.for_settings(settings).envs_root)["same"]
    assert len(servers) == 1  # one postmaster (its backends rename themselves)
    events = [e["event"] for e in StateStore(settings.home).events("same")]
    assert events.count("provisioning") == 1


def test_up_and_down_of_one_id_serialise(settings: Settings) -> None:
    for round_ in range(3):
        with ThreadPoolExecutor(2) as pool:
            up = pool.submit(envkit, "up", "serial")
            time.sleep(0.05 * round_)
            down = pool.submit(envkit, "down", "serial")
            assert up.result().returncode == 0, up.result().stderr
            assert down.result().returncode == 0, down.result().stderr
        final = status("serial")["status"]
        if final == "absent":
            assert nothing_left(settings, "serial") == {}
        else:
            assert final == "ready"
            assert envkit("down", "serial").returncode == 0
    # Transitions never interleave: each provisioning is followed by its ready, each
    # destroying by its absent.
    events = [e["event"] for e in StateStore(settings.home).events("serial")]
    transitions = [e for e in events if e in ("provisioning", "ready", "destroying", "absent")]
    for i, name in enumerate(transitions):
        if name == "provisioning":
            assert transitions[i + 1] == "ready", events
        if name == "destroying":
            assert transitions[i + 1] == "absent", events
