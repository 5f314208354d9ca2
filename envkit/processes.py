"""One process toolkit: reading, finding and stopping the processes envkit starts.

Every process envkit starts is found again by what it carries (a path under envkit's own
directories in its command line, or a marker in its environment), and only when it runs as a
user envkit trusts (see docs/threat-model.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Collection, Iterator


def process_alive(pid: int, children: dict[int, subprocess.Popen[bytes]]) -> bool:
    """Whether ``pid`` runs (zombies count as dead); ``children`` are processes this process
    spawned, which are reaped here so they do not linger as zombies."""
    child = children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie waiting for its (other) parent to reap it is as good as dead
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> list[str]:
    """The argv of a process ('' parts dropped), or [] when it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [p.decode(errors="replace") for p in fh.read().split(b"\0") if p]
    except OSError:
        return []


def process_owner(pid: int) -> int | None:
    """The (effective) uid a process runs as, or ``None`` when it is gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def processes_naming(prefix: str, owners: Collection[int]) -> Iterator[tuple[int, str]]:
    """(pid, argument) of every other process run by one of ``owners`` with an argument under
    ``prefix`` (a directory path ending in the separator): envkit's marker on what it starts.
    Other users' command lines are theirs to write, so they never count."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        uid = process_owner(pid)
        if uid not in owners:
            continue
        args = cmdline(pid)
        if process_owner(pid) != uid:  # exited, and its pid reused, while we read
            continue
        for arg in args:
            if arg.startswith(prefix):
                yield pid, arg
                break


def wait_gone(
    pid: int, timeout: float, children: dict[int, subprocess.Popen[bytes]] | None = None
) -> bool:
    """Poll every 2 ms until ``pid`` has exited; whether it did within ``timeout``
    (``children``: as for :func:`process_alive`)."""
    deadline = time.monotonic() + timeout
    while process_alive(pid, {} if children is None else children):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (servers are started in their own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
