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

import logging
import os
from typing import Any

from envkit import processes
from envkit.processes import process_alive, start_time

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


def owner_gone(run: dict[str, Any]) -> bool:
    """Whether the envkit that recorded ``run`` no longer runs: no such process, its zombie
    (killed, not yet reaped by its parent), or another process under its pid."""
    pid, start = run.get("pid"), run.get("start")
    if not isinstance(pid, int) or not isinstance(start, int) or pid == os.getpid():
        return False
    return not process_alive(pid, {}) or start_time(pid) != start


def carriers(marker: str) -> list[int]:
    """This user's processes whose environment holds ``ENVKIT_RUN_MARKER=<marker>``."""
    return processes.carriers({MARKER_VARIABLE: marker}, {os.geteuid()})


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
    # One by one, not by process group: the command may share a group with processes that do
    # not carry the marker, and no process without the marker is ever signalled.
    return processes.stop(
        lambda: carriers(marker),
        grace=GRACE,
        groups=False,
        what=f"processes of a run of {pipeline_id}",
    )


def spawn_helper(
    argv: list[str], *, pass_fds: tuple[int, ...] = (), env: dict[str, str] | None = None
) -> None:
    """Start one of envkit's own detached helpers (spare refill, trash removal): its own session,
    no terminal, no inherited descriptors but ``pass_fds``, and no run's marker; ``env`` adds
    variables (a secret goes there, never in ``argv``: command lines are public)."""
    import subprocess

    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**without_marker(), **(env or {})},
        start_new_session=True,
        close_fds=True,
        pass_fds=pass_fds,
    )


def without_marker(environ: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for envkit's own detached helpers (spare refills, trash removal): they
    must not carry a run's marker, or cleaning up after that run would kill them mid-work."""
    return processes.without_marks(os.environ if environ is None else environ, [MARKER_VARIABLE])
