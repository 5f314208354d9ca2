"""The command an ``envkit run`` started, after that envkit died.

``run`` gives its command a random marker in the environment variable ``ENVKIT_RUN_MARKER``
(inherited by everything the command starts) and records, in the pipeline's record, the marker
and its own pid and start time. A ``run`` killed with SIGKILL cannot stop its command: the
command's own process gets SIGTERM from the kernel (``PR_SET_PDEATHSIG``), but what it started
does not. So before ``down`` or ``reap`` destroys an environment whose recorded run owner is
gone, they stop every process of this user that carries the marker: SIGTERM, then SIGKILL after
a grace period. A run owner that still runs is left alone (its command is its business), and no
process without the marker is ever signalled. Imported by lifecycle: standard library only at
import time.
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
RESOURCE = "run"  # the key of the record's resources that describes the run
GRACE = 5.0


def new_run() -> dict[str, Any]:
    """What ``run`` records about itself before it starts the command."""
    import secrets

    return {"marker": secrets.token_hex(12), "pid": os.getpid(), "start": start_time(os.getpid())}


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22): with
    the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_gone(run: dict[str, Any]) -> bool:
    """Whether the envkit that recorded ``run`` no longer runs."""
    pid, start = run.get("pid"), run.get("start")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    now = start_time(pid)
    return now is None or (start is not None and now != start)


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
    """Stop what a dead ``run`` of this pipeline left running; the pids signalled."""
    run = resources.get(RESOURCE)
    if not isinstance(run, dict) or not isinstance(run.get("marker"), str) or not owner_gone(run):
        return []
    found = carriers(run["marker"])
    if not found:
        return []
    log.warning(
        "stopping %d process(es) left by a run of %s whose envkit died: %s",
        len(found),
        pipeline_id,
        " ".join(map(str, found)),
    )
    from envkit.pgserver import process_alive

    _signal(found, signal.SIGTERM)
    left, deadline = found, time.monotonic() + GRACE
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [pid for pid in left if process_alive(pid, {})]
    _signal(left, signal.SIGKILL)
    return found


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _all_pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]
