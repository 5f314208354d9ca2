"""What a killed ``envkit run`` left running is found by its marker alone and stopped only once
its envkit is gone (real processes: ``sh`` and ``sleep``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from envkit import commands
from envkit.pgserver import process_alive


@pytest.fixture()
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def marked(procs: list[subprocess.Popen[bytes]], marker: str) -> subprocess.Popen[bytes]:
    """A shell (marked) with a child of its own (marked too, by inheritance)."""
    env = {**os.environ, commands.MARKER_VARIABLE: marker}
    proc = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], env=env)
    procs.append(proc)
    return proc


def dead_owner() -> dict[str, object]:
    """A run record whose envkit has exited."""
    owner = subprocess.run(
        [sys.executable, "-c", "import json; from envkit import commands; "
         "print(json.dumps(commands.new_run()))"],
        capture_output=True, text=True, check=True,
    )
    run = json.loads(owner.stdout)
    assert isinstance(run, dict)
    return run


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_the_run_record_names_this_process() -> None:
    run = commands.new_run()
    assert run["pid"] == os.getpid() and run["start"] == commands.start_time(os.getpid())
    assert len(str(run["marker"])) == 24
    assert not commands.owner_gone(run)  # ourselves


def test_a_dead_runs_command_and_its_children_are_stopped(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    run = dead_owner()
    assert commands.owner_gone(run)
    shell = marked(spawned, str(run["marker"]))
    other = marked(spawned, "someone-elses-marker")
    assert wait_for(lambda: len(commands.carriers(str(run["marker"]))) == 2)  # sh and sleep
    found = commands.carriers(str(run["marker"]))
    assert shell.pid in found
    stopped = commands.stop_orphaned_command("p1", {commands.RESOURCE: run})
    assert sorted(stopped) == sorted(found)
    assert wait_for(lambda: not any(process_alive(p, {}) for p in found if p != shell.pid))
    assert shell.wait(timeout=5) != 0
    assert other.poll() is None  # not its marker: untouched
    assert commands.carriers("someone-elses-marker")


def test_a_live_owner_or_no_run_leaves_everything_alone(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    run = commands.new_run()  # this process: alive
    shell = marked(spawned, str(run["marker"]))
    assert wait_for(lambda: len(commands.carriers(str(run["marker"]))) == 2)
    assert commands.stop_orphaned_command("p1", {commands.RESOURCE: run}) == []
    assert commands.stop_orphaned_command("p1", {}) == []
    assert commands.stop_orphaned_command("p1", {commands.RESOURCE: "garbage"}) == []
    assert shell.poll() is None


def test_a_reused_pid_does_not_count_as_the_owner() -> None:
    run = commands.new_run()
    assert not commands.owner_gone(run)
    # same pid, another start time: a different process that got the pid
    assert commands.owner_gone({**run, "pid": os.getppid(), "start": -1})
