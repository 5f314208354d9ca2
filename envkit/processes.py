"""One process toolkit: reading, finding and stopping the processes envkit starts.

Finding: one ``/proc`` scan (:func:`scan`) that only ever looks at processes of the users envkit
trusts (see docs/threat-model.md), with two kinds of evidence that a process is envkit's:

- its *marks*: ``ENVKIT_*`` entries in its environment, set by envkit when it starts the process
  and inherited by everything that process starts (services: home key and pipeline ID; the
  command of an ``envkit run``: a random run marker) — :func:`carriers`;
- a path under envkit's own directories in its command line (a PostgreSQL server names its data
  directory, which no environment entry survives into reliably) — :func:`processes_naming`.

Stopping: one loop (:func:`stop`): SIGTERM, wait, SIGKILL what still carries the evidence.
Standard library only: the lifecycle imports this on every ``up``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Children = dict[int, subprocess.Popen[bytes]]


# -- reading one process ---------------------------------------------------------------------------


def process_alive(pid: int, children: Children) -> bool:
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
    stat = _stat(pid)  # a zombie waiting for its (other) parent to reap it is as good as dead
    return bool(stat) and stat[0] != "Z"


def _stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first); [] when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return []


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22): with
    the pid it names one process, even after the pid is reused."""
    try:
        return int(_stat(pid)[19])
    except (IndexError, ValueError):
        return None


def process_age(pid: int) -> float | None:
    """Seconds since ``pid`` started (works for processes of earlier envkits)."""
    started = start_time(pid)
    try:
        with open("/proc/uptime", encoding="ascii") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None if started is None else uptime - started / os.sysconf("SC_CLK_TCK")


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


def cwd(pid: int) -> str:
    """The working directory of a process, or '' when it is gone or unreadable."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def carries(pid: int, marks: Mapping[str, str]) -> bool:
    """Whether the environment of ``pid`` holds every ``KEY=value`` of ``marks``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            entries = set(fh.read().split(b"\0"))
    except OSError:
        return False
    return bool(marks) and all(f"{k}={v}".encode() in entries for k, v in marks.items())


def without_marks(environ: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """``environ`` without the mark variables ``names`` (for processes that must not be
    mistaken for the ones carrying them)."""
    drop = set(names)
    return {k: v for k, v in environ.items() if k not in drop}


# -- finding --------------------------------------------------------------------------------------


def scan(owners: Collection[int], match: Callable[[int], T | None]) -> list[tuple[int, T]]:
    """The one ``/proc`` scan: ``(pid, match(pid))`` of every other process run by one of
    ``owners`` for which ``match`` says something (not ``None``). Other users' processes are
    theirs to shape, so they never count; no ``/proc`` finds nothing."""
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found: list[tuple[int, T]] = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        uid = process_owner(pid)
        if uid is None or uid not in owners:
            continue
        value = match(pid)
        if value is not None and process_owner(pid) == uid:  # not exited and reused meanwhile
            found.append((pid, value))
    return found


def carriers(marks: Mapping[str, str], owners: Collection[int]) -> list[int]:
    """Live processes of ``owners`` whose environment carries all of ``marks``."""
    return [pid for pid, _ in scan(owners, lambda pid: True if carries(pid, marks) else None)]


def processes_naming(prefix: str, owners: Collection[int]) -> Iterator[tuple[int, str]]:
    """(pid, argument) of every other process run by one of ``owners`` with an argument under
    ``prefix`` (a directory path ending in the separator): envkit's mark on its servers."""

    def naming(pid: int) -> str | None:
        return next((arg for arg in cmdline(pid) if arg.startswith(prefix)), None)

    yield from scan(owners, naming)


# -- stopping -------------------------------------------------------------------------------------


def wait_gone(pid: int, timeout: float, children: Children | None = None) -> bool:
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


def stop(
    find: Callable[[], Iterable[int]],
    *,
    grace: float,
    groups: bool = True,
    children: Children | None = None,
    kill_wait: float = 5.0,
    what: str = "processes",
) -> list[int]:
    """The one stop loop: SIGTERM what ``find`` returns, wait up to ``grace`` for it to exit,
    SIGKILL what ``find`` still returns then (at once when ``grace`` is 0); the pids signalled.

    ``find`` is asked again whenever everything signalled has exited, so processes forked
    meanwhile are stopped too, and only what it returns at that moment is ever signalled (a pid
    reused by someone else's process no longer carries the evidence). With ``groups`` the
    process groups of those processes are signalled as well (never this process's own group),
    which reaches children that lost the evidence; without, processes one by one only.
    """
    kids: Children = {} if children is None else children
    own_group = os.getpgrp()
    signalled: set[int] = set()
    pgids: set[int] = set()
    deadline = time.monotonic() + grace
    found = set(find()) if grace > 0 else set()  # no grace: straight to SIGKILL
    while found:
        new = found - signalled
        if new:
            new_groups = _groups(new, own_group) - pgids if groups else set()
            _send(new_groups, new, signal.SIGTERM)
            pgids |= new_groups
            signalled |= new
        while any(process_alive(p, kids) for p in found) and time.monotonic() < deadline:
            time.sleep(0.01)
        if time.monotonic() >= deadline:
            break
        found = set(find())
        if found and not found - signalled:
            time.sleep(0.01)  # reported but no longer running: look again shortly
    else:
        if grace > 0:
            return sorted(signalled)
    left = set(find())
    if left:
        late = f" did not stop within {grace:.1f}s of SIGTERM" if grace > 0 else ""
        log.warning("%s %s%s: killing them", what, " ".join(map(str, sorted(left))), late)
        _send(pgids | (_groups(left, own_group) if groups else set()), left, signal.SIGKILL)
        signalled |= left
        end = time.monotonic() + kill_wait
        while any(process_alive(p, kids) for p in left) and time.monotonic() < end:
            time.sleep(0.005)
    return sorted(signalled)


def _groups(pids: Iterable[int], own_group: int) -> set[int]:
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            if group != own_group:
                found.add(group)
    return found


def _send(groups: Iterable[int], pids: Iterable[int], sig: signal.Signals) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
    for pid in pids:  # members that left their group (setsid) are signalled one by one
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
