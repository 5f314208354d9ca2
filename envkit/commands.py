"""The command an ``envkit run`` started, after that envkit died.

``run`` gives its command a random marker in the environment variable ``ENVKIT_RUN_MARKER``
(inherited by everything the command starts) and records, in the pipeline's record, the marker
with its own pid and start time (one entry per run: two runs may share an environment). A
``run`` killed with SIGKILL cannot stop its command: the command's own process gets SIGTERM from
the kernel (``PR_SET_PDEATHSIG``), but what it started does not. So before ``down`` or ``reap``
destroys an environment whose recorded run owner is gone, they stop every process of this user
that carries the marker: SIGTERM, then SIGKILL after a grace period. A run owner that still runs
is left alone (its command is its business), and no process without the marker is ever
signalled. Imported by lifecycle: standard library only at import time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

MARKER_VARIABLE = "ENVKIT_RUN_MARKER"
RESOURCE = "runs"  # the record's resources: marker -> {"pid", "start"} of each run using it
GRACE = 5.0


def new_run() -> tuple[str, dict[str, int]] | None:
    """A marker for a new run and what ``run`` records under it about itself (pid, start
    time); None where processes cannot be told apart (no ``/proc``): then nothing is recorded,
    and nothing is ever stopped."""
    import secrets

    start = start_time(os.getpid())
    if start is None:
        return None
    return secrets.token_hex(12), {"pid": os.getpid(), "start": start}


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22): with
    the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_gone(run: dict[str, Any]) -> bool:
    """Whether the envkit that recorded ``run`` no longer runs: no such process, its zombie
    (killed, not yet reaped by its parent), or another process under its pid."""
    from envkit.processes import process_alive

    pid, start = run.get("pid"), run.get("start")
    if not isinstance(pid, int) or not isinstance(start, int) or pid == os.getpid():
        return False
    return not process_alive(pid, {}) or start_time(pid) != start


def carriers(marker: str, pids: Iterable[int] | None = None) -> list[int]:
    """Processes whose environment holds ``ENVKIT_RUN_MARKER=<marker>`` (those this user may
    read: root reads them all)."""
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    me = os.getpid()
    found = []
    for pid in pids if pids is not None else _all_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(pid)
    return found


def stop_orphaned_command(pipeline_id: str, resources: dict[str, Any]) -> list[int]:
    """Stop what dead ``run``s of this pipeline left running and forget those runs (in
    ``resources``, which the caller saves); the pids signalled. Runs whose envkit still runs are
    left alone.

    Best effort, by the marker alone: a process that cleared its environment (``env -i``,
    sudo, a container) or belongs to another user is not found. Processes forked during the
    grace period are found by scanning again until none is left or the grace is over."""
    runs = resources.get(RESOURCE)
    if not isinstance(runs, dict):
        return []
    signalled: list[int] = []
    for marker, owner in list(runs.items()):
        if isinstance(owner, dict) and owner_gone(owner):
            signalled += _stop(pipeline_id, marker)
            del runs[marker]
    return signalled


def _stop(pipeline_id: str, marker: str) -> list[int]:
    found = carriers(marker)
    if not found:
        return []
    log.warning(
        "stopping %d process(es) left by a run of %s whose envkit died: %s",
        len(found),
        pipeline_id,
        " ".join(map(str, found)),
    )
    signalled = set(found)
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline:
        time.sleep(0.02)
        found = carriers(marker)
        if not found:
            return sorted(signalled)
        _signal([pid for pid in found if pid not in signalled], signal.SIGTERM)
        signalled.update(found)
    # Still carrying the marker right now (so not a reused pid): kill.
    _signal(carriers(marker, found), signal.SIGKILL)
    return sorted(signalled)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _all_pids() -> list[int]:
    try:
        return [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:  # no /proc: nothing can be found (and new_run recorded nothing)
        return []


def spawn_helper(argv: list[str], *, pass_fds: tuple[int, ...] = ()) -> None:
    """Start one of envkit's own detached helpers (spare refill, trash removal): its own session,
    no terminal, no inherited descriptors but ``pass_fds``, and no run's marker."""
    import subprocess

    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=without_marker(),
        start_new_session=True,
        close_fds=True,
        pass_fds=pass_fds,
    )


def without_marker(environ: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for envkit's own detached helpers (spare refills, trash removal): they
    must not carry a run's marker, or cleaning up after that run would kill them mid-work."""
    return {k: v for k, v in (os.environ if environ is None else environ).items()
            if k != MARKER_VARIABLE}
