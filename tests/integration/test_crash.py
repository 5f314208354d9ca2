"""Crash injection: SIGKILL ``envkit up`` at 50 random moments, then ``reap`` or ``down``.

Each kill is followed, alternately, by ``envkit reap`` and ``envkit down ID``; after each, nothing
of the pipeline may remain: no state record, lock file, data directory, marked process, address
reservation or socket directory. Afterwards a normal ``up`` works.

The test uses a private data root, so its template and spare copies are its own: before every
other kill it empties the spares, so ``up`` copies the template itself and kills land mid-copy
as well as mid-start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import kill_processes_under

from envkit import lifecycle
from envkit.plan import Plan
from envkit.processes import cmdline, process_alive, processes_naming
from envkit.providers.local.layout import Layout
from envkit.providers.local.leftovers import inventory
from envkit.providers.local.osuser import trusted_uids
from envkit.reaper import reap
from envkit.settings import Settings
from envkit.state import Record, StateStore, Status

pytestmark = pytest.mark.integration

KILLS = 50
SEED = 20261121
IDS = ("crash-a", "crash-b", "crash-c")


def envkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def empty_spares(settings: Settings) -> None:
    """Remove the ready spare copies and the pool's demand record, so the next up copies. A
    refill still running is stopped, not waited for: it waits for a quiet machine first."""
    templates = Layout.for_settings(settings).templates
    for spares in templates.glob("*.spares"):
        lock = os.open(spares / ".refill.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                kill_processes_under(str(spares))
                fcntl.flock(lock, fcntl.LOCK_EX)
            for child in spares.iterdir():
                if child.name.startswith(".refill"):
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        finally:
            os.close(lock)


def phase(record: Record | None) -> str:
    """How far the killed up got, from what its write-ahead record says."""
    if record is None:
        return "before-record"
    if record.status is Status.READY:
        return "ready"
    if "host" not in record.resources:
        return "record-saved"
    if "port" not in record.resources:
        return "copy-or-start"
    if not record.outputs:
        return "configure"
    return "health"


def leftovers(settings: Settings) -> dict[str, list[str]]:
    return {k: v for k, v in inventory(settings, IDS).items() if v}


def test_sigkill_during_up_leaves_nothing_reap_or_down_cannot_clean(
    private_data: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # private_data first: settings must be resolved after ENVKIT_DATA_DIR is set, or the
    # in-process reaps below would work on the machine's shared data root.
    assert Layout.for_settings(settings).data_root == private_data
    # Every `envkit up` below also starts a Redis server (issue 19), which kills land beside
    # the database's copy and start: its redis-server must be found and stopped too.
    monkeypatch.setenv("ENVKIT_REDIS", "1")
    # Warm up (builds the template) and time one `envkit up` process: when its record appears
    # (interpreter start-up and imports come before) and when it exits.
    store = StateStore(settings.home)
    marks = []
    for _ in range(4):
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "envkit", "up", "crash-warm"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        recorded = ready = None
        while proc.poll() is None and ready is None:
            record = store.load("crash-warm")
            if record is not None and recorded is None:
                recorded = time.perf_counter() - started
            if record is not None and record.status is Status.READY:
                ready = time.perf_counter() - started
            time.sleep(0.001)
        assert proc.wait(timeout=60) == 0
        marks.append((recorded or 0.0, ready or time.perf_counter() - started))
        assert envkit("down", "crash-warm").returncode == 0
    # The first run built the template; of the rest take the median of each mark.
    t_record = sorted(m[0] for m in marks[1:])[1]
    t_ready = t_record + sorted(m[1] - m[0] for m in marks[1:])[1]

    rng = random.Random(SEED)
    outcomes = {"killed": 0, "finished-first": 0, "reap": 0, "down": 0, "copy-forced": 0}
    phases: Counter[str] = Counter()
    for i in range(KILLS):
        pipeline_id = IDS[i % len(IDS)]
        if i % 2 == 0:
            empty_spares(settings)
            outcomes["copy-forced"] += 1
        # One kill in five lands before the up's own work starts (interpreter start-up, imports,
        # lock); the rest are spread over that work, timed from when its record appears, so the
        # machine's load (other tests) does not push them all into the start-up.
        proc = subprocess.Popen([sys.executable, "-m", "envkit", "up", pipeline_id],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 5 == 0:
            delay = rng.uniform(0.0, t_record)
        else:
            delay = rng.uniform(0.0, 1.1 * (t_ready - t_record))
            while proc.poll() is None and not store.record_path(pipeline_id).exists():
                time.sleep(0.0005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # An up that got as far as "ready" (exited, or killed after its last save) leaves a
        # ready, unexpired environment, which reap rightly keeps: down cleans that one.
        record = StateStore(settings.home).load(pipeline_id)
        finished = record is not None and record.status is Status.READY
        outcomes["finished-first" if finished else "killed"] += 1
        phases[phase(record)] += 1
        use_reap = i % 2 == 1 and not finished
        outcomes["reap" if use_reap else "down"] += 1
        if i % 3 == 0:  # the CLI, as a user or a cron job runs it
            cleanup = envkit("reap", "--json") if use_reap else envkit("down", pipeline_id)
            assert cleanup.returncode == 0, (i, delay, cleanup.stdout, cleanup.stderr)
        elif use_reap:  # the same code in-process: no interpreter start-up, so more kills fit
            report = reap(settings)
            assert report.errors == [], report.errors
        else:
            lifecycle.down(Plan.build(pipeline_id, settings))
        left = leftovers(settings)
        after = StateStore(settings.home).load(pipeline_id)
        assert left == {}, (
            f"kill {i} after {delay:.3f}s ({'reap' if use_reap else 'down'}); record before "
            f"cleanup: {record and (record.status, record.error)}; after: "
            f"{after and (after.status, after.error)}"
        )

    print(f"crash injection: {KILLS} kills, record at {t_record:.2f}s, ready at {t_ready:.2f}s: "
          f"{outcomes}; phases {dict(phases)}")
    assert outcomes["killed"] >= KILLS * 0.7  # most kills really landed inside the up
    assert phases["copy-or-start"] + phases["configure"] >= 5  # and some mid-copy/mid-start

    # Afterwards a normal up works, and down leaves nothing.
    ctx = Plan.build("crash-a", settings.with_(redis=True))
    record = lifecycle.up(ctx)
    import psycopg

    from envkit.kvwire import KvAddress, connect

    with psycopg.connect(record.outputs["DATABASE_URL"], connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    with connect(KvAddress.from_url(record.outputs["REDIS_URL"])) as session:
        assert session.command("PING") == b"PONG"
    lifecycle.down(ctx)
    assert leftovers(settings) == {}
    assert not [pid for pid, _ in processes_naming(str(private_data) + os.sep, {os.geteuid(),
                *trusted_uids(None)}) if "redis-server" in cmdline(pid)[0]]


KILLS_EACH = 10


def _timed(*args: str) -> float:
    started = time.perf_counter()
    done = envkit(*args)
    assert done.returncode in (0, 7), done.stderr
    return time.perf_counter() - started


def test_sigkill_during_down_run_and_reap_leaves_nothing_they_cannot_clean(
    private_data: Path, settings: Settings, tmp_path: Path
) -> None:
    """The same guarantee for the other commands that change state: ``down`` (killed while it
    stops and deletes), ``run`` (killed mid-up or while its command runs: the command dies with
    it) and ``reap`` (killed while it destroys several expired environments). Each kill is
    followed by ``down`` or ``reap``, alternately; nothing may remain."""
    assert Layout.for_settings(settings).data_root == private_data
    rng = random.Random(SEED + 1)

    def up_one(pipeline_id: str) -> Record:
        return lifecycle.up(Plan.build(pipeline_id, settings))
    # Timings of each command, uninterrupted (the first up also builds the template).
    up_one("crash-d")
    t_down = _timed("down", "crash-d")
    # The command (a shell) starts a child of its own, which no signal of the kernel reaches
    # when envkit dies: down or reap must find it by the run's marker and stop it.
    marker, grandchild = tmp_path / "command.pid", tmp_path / "grandchild.pid"
    command = ["sh", "-c", f"sleep 30 & echo $! > {grandchild}; echo $$ > {marker}; wait"]
    t_run = _timed("run", "crash-r", "--", "sh", "-c", "exit 7")
    envkit("down", "crash-r")
    store = StateStore(settings.home)

    def expire(record: Record) -> None:
        """As if its TTL had passed (no waiting): what reap looks at is the record."""
        store.save(replace(record, expires_at="2000-01-01T00:00:00Z"))

    for pid in ("crash-x0", "crash-x1", "crash-x2"):
        expire(up_one(pid))
    t_reap = _timed("reap")

    counts: Counter[str] = Counter()
    seen: list[int] = []  # the commands' pids: killed at the end whatever happened
    try:
        for i in range(3 * KILLS_EACH):
            kind = ("down", "run", "reap")[i % 3]
            if kind == "down":
                up_one("crash-d")
                argv, window, ids = ["down", "crash-d"], t_down, ["crash-d"]
            elif kind == "run":
                marker.unlink(missing_ok=True)
                grandchild.unlink(missing_ok=True)
                # killed during its up, or (half of them) while the command runs
                argv, window, ids = ["run", "crash-r", "--", *command], t_run, ["crash-r"]
            else:
                ids = [f"crash-x{k}" for k in range(3)]
                for pid in ids:
                    expire(up_one(pid))
                argv, window = ["reap"], t_reap
            proc = subprocess.Popen([sys.executable, "-m", "envkit", *argv],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if kind == "run" and (i // 6) % 2 == 0:  # once the command runs, however slow the up
                deadline = time.monotonic() + 60
                while proc.poll() is None and time.monotonic() < deadline and not (
                    marker.exists() and marker.read_text().strip()
                ):
                    time.sleep(0.005)
                window = 0.3
            time.sleep(rng.uniform(0.0, window))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            counts[kind] += 1
            text = marker.read_text().strip() if kind == "run" and marker.exists() else ""
            if text:  # the command had started (empty: killed mid-echo, no pid to check)
                child = int(text)
                seen += [child, int(grandchild.read_text().strip())]
                deadline = time.monotonic() + 5
                while process_alive(child, {}) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert not process_alive(child, {}), "the command of a killed run still runs"
                counts["run-command-started"] += 1
            if i % 2 == 0:
                if kind == "run" and (record := store.load("crash-r")) is not None:
                    expire(record)  # its TTL passes: reap, not down, must stop what the run left
                report = reap(settings)
                assert report.errors == [], report.errors
                for pid in ids:  # a ready environment the kill came too late for: down cleans it
                    if StateStore(settings.home).load(pid) is not None:
                        lifecycle.down(Plan.build(pid, settings))
            else:
                for pid in ids:
                    assert envkit("down", pid).returncode == 0
            assert leftovers_of(settings, ids) == {}, f"kill {i} of {kind}"
            if text:
                started = int(grandchild.read_text().strip())
                deadline = time.monotonic() + 2
                while process_alive(started, {}) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert not process_alive(started, {}), f"kill {i}: the command's child lived on"
                counts["run-grandchild-stopped"] += 1
    finally:
        for pid in seen:
            with contextlib.suppress(OSError):  # still ours (not a reused pid): kill
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith((b"sleep\0", b"sh\0")):
                    os.kill(pid, signal.SIGKILL)

    print(f"crash injection (down/run/reap): {dict(counts)}")
    assert counts["run-command-started"] >= KILLS_EACH // 2  # half the run kills waited for it

    record = up_one("crash-a")
    assert record.status is Status.READY
    lifecycle.down(Plan.build("crash-a", settings))
    assert leftovers_of(settings, ["crash-a"]) == {}


def leftovers_of(settings: Settings, ids: list[str]) -> dict[str, list[str]]:
    return {k: v for k, v in inventory(settings, ids).items() if v}
