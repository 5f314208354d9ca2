"""What a killed ``envkit run`` left running is found by its marker alone and stopped only once
its envkit is gone (real processes: ``sh``, ``sleep`` and short-lived Pythons)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from envkit import commands, lifecycle
from envkit.plan import Plan
from envkit.processes import cmdline, process_alive
from envkit.settings import Settings
from envkit.state import Record, StateStore, Status


@pytest.fixture()
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Shells started in sessions of their own: their whole group is killed afterwards, children
    included, whatever the test did."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def marked(procs: list[subprocess.Popen[bytes]], marker: str) -> subprocess.Popen[bytes]:
    """A shell (marked) with a child of its own (marked too, by inheritance)."""
    env = {**os.environ, commands.MARKER_VARIABLE: marker}
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], env=env, start_new_session=True)
    procs.append(proc)
    return proc


def settled(marker: str) -> bool:
    """Both marked processes are there and the child has become ``sleep``: while it is still
    exec'ing, its /proc environ can be unreadable for a moment, and a scan would miss it."""
    pids = commands.carriers(marker)
    return len(pids) == 2 and any(cmdline(pid)[:1] == ["sleep"] for pid in pids)


def dead_owner() -> tuple[str, dict[str, int]]:
    """A marker and a run record whose envkit has exited (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import json; from envkit import commands; "
         "print(json.dumps(commands.new_run()))"],
        capture_output=True, text=True, check=True,
    )
    marker, owner = json.loads(done.stdout)
    return marker, owner


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_the_run_record_names_this_process() -> None:
    new = commands.new_run()
    assert new is not None
    marker, owner = new
    assert len(marker) == 24
    assert owner == {"pid": os.getpid(), "start": commands.start_time(os.getpid())}
    assert not commands.owner_gone(owner)  # ourselves


def test_a_dead_runs_command_and_its_children_are_stopped_and_forgotten(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    marker, owner = dead_owner()
    assert commands.owner_gone(owner)
    shell = marked(spawned, marker)
    other = marked(spawned, "someone-elses-marker")
    assert wait_for(lambda: settled(marker))  # sh and its sleep
    found = commands.carriers(marker)
    assert shell.pid in found
    resources = {commands.RESOURCE: {marker: owner}}
    stopped = commands.stop_orphaned_command("p1", resources)
    assert sorted(stopped) == sorted(found)
    assert resources == {commands.RESOURCE: {}}  # forgotten: the caller saves that
    assert wait_for(lambda: not any(process_alive(p, {}) for p in found if p != shell.pid))
    assert shell.wait(timeout=5) != 0
    assert other.poll() is None  # not its marker: untouched
    assert wait_for(lambda: settled("someone-elses-marker"))


def test_a_live_owner_or_no_run_leaves_everything_alone(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    new = commands.new_run()  # this process: alive
    assert new is not None
    marker, owner = new
    shell = marked(spawned, marker)
    assert wait_for(lambda: settled(marker))
    resources: dict[str, object] = {commands.RESOURCE: {marker: owner}}
    assert commands.stop_orphaned_command("p1", resources) == []
    assert resources == {commands.RESOURCE: {marker: owner}}
    assert commands.stop_orphaned_command("p1", {}) == []
    assert commands.stop_orphaned_command("p1", {commands.RESOURCE: "garbage"}) == []
    assert commands.stop_orphaned_command("p1", {commands.RESOURCE: {marker: "garbage"}}) == []
    assert shell.poll() is None


def test_a_zombie_or_a_reused_pid_counts_as_gone() -> None:
    new = commands.new_run()
    assert new is not None
    _, owner = new
    # another start time under a live pid: a different process that got the pid
    assert commands.owner_gone({"pid": os.getppid(), "start": -1})
    assert not commands.owner_gone(owner)
    # killed, not yet reaped by its parent (us): a zombie, which is as good as gone
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = commands.start_time(child.pid)
        assert start is not None
        assert not commands.owner_gone({"pid": child.pid, "start": start})
        os.kill(child.pid, signal.SIGKILL)
        assert wait_for(lambda: commands.owner_gone({"pid": child.pid, "start": start}))
        assert os.waitpid(child.pid, os.WNOHANG) != (0, 0)  # it was a zombie until now
    finally:
        child.kill()
        child.wait()


def test_runs_are_recorded_apart_and_a_retry_stops_what_a_killed_run_left(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    ctx = Plan.build("p1", settings)
    ctx.store.save(
        Record(pipeline_id="p1", provider="local", status=Status.READY,
               created_at="2026-01-01T00:00:00Z", expires_at="2099-01-01T00:00:00Z",
               owner="me")
    )
    killed, killed_owner = dead_owner()
    left = marked(spawned, killed)
    lifecycle.note_run(ctx, killed, killed_owner)  # as the killed run did
    assert wait_for(lambda: settled(killed))
    live, live_owner = commands.new_run() or ("", {})
    lifecycle.note_run(ctx, live, live_owner)  # the retry: the killed run's leftovers go
    assert left.wait(timeout=10) != 0
    runs = StateStore(settings.home).load("p1").resources[commands.RESOURCE]  # type: ignore[union-attr]
    assert runs == {live: live_owner}
    lifecycle.forget_run(ctx, "not-ours")  # another run's marker is never dropped
    lifecycle.forget_run(ctx, live)
    record = StateStore(settings.home).load("p1")
    assert record is not None and commands.RESOURCE not in record.resources


def test_envkits_own_helpers_do_not_carry_a_marker() -> None:
    env = {"PATH": "/bin", commands.MARKER_VARIABLE: "m"}
    assert commands.without_marker(env) == {"PATH": "/bin"}
