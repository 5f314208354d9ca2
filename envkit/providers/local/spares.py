"""Spare data directories: ready copies of a template, so ``up`` gets its own with one rename.

Each template ``<root>/<key>`` has a pool ``<root>/<key>.spares/``: complete copies named
``spare-*``, claimed by ``checkout`` with an atomic ``rename`` (two racing claimers cannot get
the same one), and topped up afterwards by a detached, idle-priority shell that holds the pool's
``.refill.lock``. A copy is ~27 MB in RAM, so the pool is small by default and grows with
demand: every ``up`` that found it empty (and so copied the template on its own critical path)
appends one byte to ``.misses``, and the refill target is the resting size (``ENVKIT_SPARES``,
default ``SPARES``) plus those misses, up to ``MAX_SPARES`` (or the resting size, if larger) and
to what the file system can spare. After ``DEMAND_MEMORY`` without pressure the target falls back
to the resting size and ``trim`` (run by ``envkit reap``) drops the surplus. A resting size of 0
turns the pool off: every ``up`` copies the template itself, nothing is refilled.

Why: parallel ``up``s that each have to copy a template spend a good share of their CPU on the
copy; a pool sized to the burst moves that work to the idle time after it
(bench/bench_lifecycle.py measures it).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

from envkit.commands import spawn_helper
from envkit.locking import is_locked
from envkit.providers.local.templates import COPY_COMMAND, copy_tree
from envkit.securefs import remove_tree_quietly
from envkit.state import write_atomic

log = logging.getLogger(__name__)

SPARES = 2
"""Ready copies kept per template when there is no demand for more (``ENVKIT_SPARES``)."""
MAX_SPARES = 8
"""The most a pool grows to after bursts of parallel ``up``s (unless its resting size is more)."""
DEMAND_MEMORY = 3600.0
"""Seconds a burst is remembered: after that long without pressure the pool shrinks back."""
MAX_SHARE_OF_FREE = 0.25
"""A pool never grows into more than this share of the free space of its file system."""

# Runs detached at idle priority, holding the refill lock through a
# descriptor inherited from the caller, which took it. A shell costs ~1 ms of CPU to start
# where a Python interpreter costs ~70 ms, which eight parallel ups on two cores feel. Spare
# names are unique per (caller pid, nonce), so a reused pid never meets an old spare.
# It first moves itself (and so its cp) to SCHED_IDLE, or to nice 19 where that is refused or
# util-linux lacks chrt. Before each copy it waits (up to ~2 s) for the machine to be quiet: at
# most half the CPUs' worth of runnable tasks (itself included; 1 on two cores) in two readings
# of /proc/loadavg 50 ms apart, looking again every 200 ms while busy (every look costs a
# ``sleep`` exec, CPU the ups it waits for would otherwise have). Even at idle priority, copies
# made while ups run slow a burst of parallel ups: the copy's kernel work and memory traffic
# are not preempted the instant an up wakes.
# Arguments: the pool, the template, the target when started, a unique nonce, the base size,
# the cap and the number of CPUs. The target is re-read every round (misses recorded after the
# start count, and so do spares claimed meanwhile), so a burst of ups that each found the lock
# held and left the refill to the one running is still served in full once it ends.
# Everything but chrt, sleep, cp and mv is a shell builtin: the refill starts while the up that
# spawned it is still running, and every other exec would be CPU taken from that up.
_REFILL = rf"""
chrt --idle -p 0 $$ >/dev/null 2>&1 || renice -n 19 -p $$ >/dev/null 2>&1
busy=$(( $7 / 2 ))
[ "$busy" -ge 1 ] || busy=1
quiet() {{
  calm=0; waited=0
  while [ "$calm" -lt 2 ] && [ "$waited" -lt 40 ]; do
    read -r l1 l5 l15 now rest < /proc/loadavg 2>/dev/null || return 0
    if [ "${{now%/*}}" -le "$busy" ]; then
      calm=$((calm + 1)); waited=$((waited + 1)); sleep 0.05
    else
      calm=0; waited=$((waited + 4)); sleep 0.2
    fi
  done
}}
cd "$1" || exit 0
for stale in .tmp-*; do [ -e "$stale" ] && rm -rf .tmp-*; break; done
i=0
while :; do
  ready=0
  for name in *; do [ -e "$name" ] && ready=$((ready + 1)); done
  want=$3
  misses=
  [ -s .misses ] && read -r misses < .misses
  if [ -n "$misses" ]; then
    grown=$(( $5 + ${{#misses}} ))
    [ "$grown" -gt "$want" ] && want=$grown
  fi
  [ "$want" -gt "$6" ] && want=$6
  [ "$ready" -lt "$want" ] || break
  quiet
  tmp=".tmp-$4-$i"
  if ! {" ".join(COPY_COMMAND)} "$2" "$tmp"; then rm -rf "$tmp"; exit 1; fi
  mv -T "$tmp" "spare-$4-$i" || {{ rm -rf "$tmp"; exit 1; }}
  i=$((i + 1))
done
"""

_COMPLETE = ("PG_VERSION", "postgresql.conf", "global/pg_control")


def spares_dir(template: Path) -> Path:
    """Where ready copies of ``template`` wait to be claimed."""
    return template.with_name(template.name + ".spares")


def ready(spares: Path) -> list[str]:
    """Names of the ready copies in a pool, oldest name first."""
    try:
        return sorted(n for n in os.listdir(spares) if not n.startswith("."))
    except FileNotFoundError:
        return []


def checkout(template: Path, datadir: Path, *, resting: int = SPARES) -> bool:
    """Give ``datadir`` a fresh copy of ``template``; whether a ready spare was used.

    Without one the template is copied here, and the miss is recorded so the pool grows.
    Either way a detached, idle-priority process then tops the pool up, off the critical path
    of this and the next ``up`` — unless ``resting`` is 0 (no pool: a spare left from before is
    still used, none is made).
    """
    spares = spares_dir(template)
    claimed = False
    names = ready(spares)
    for name in names:
        try:
            os.rename(spares / name, datadir)
        except OSError:
            continue  # claimed by someone else a moment ago
        if all((datadir / f).is_file() for f in _COMPLETE):
            claimed = True
            break
        # Not a whole copy (someone tampered with the pool): never start from it.
        log.warning("discarding an incomplete spare data directory %s", name)
        remove_tree_quietly(datadir, datadir.parent)
    if not claimed:
        copy_tree(template, datadir)
    remember_resting(spares, resting)
    if resting == 0:
        with contextlib.suppress(OSError):
            os.utime(template)  # a use, for reap's template TTL: nothing else records it
        return claimed
    if not claimed:
        note_demand(spares, missed=True)
    elif not ready(spares):  # took the last one: the pool is running dry
        note_demand(spares, missed=False)
    refill(template, resting=resting)
    return claimed


def note_demand(spares: Path, *, missed: bool) -> None:
    """Record pressure on a pool: a miss grows it by one (one appended byte, so concurrent
    misses all count); a claim that emptied it keeps the current size remembered."""
    path = spares / ".misses"
    with contextlib.suppress(OSError):
        if missed:
            spares.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b".")
            finally:
                os.close(fd)
            os.utime(spares)  # a use, for reap's template TTL, even if no refill follows
        else:
            os.utime(path)


def wanted(spares: Path, *, resting: int = SPARES, now: float | None = None) -> int:
    """How many ready copies the pool should hold now."""
    if resting == 0:
        return 0
    try:
        stats = os.stat(spares / ".misses")
    except OSError:
        return resting
    if (now if now is not None else time.time()) - stats.st_mtime > DEMAND_MEMORY:
        return resting
    return min(largest(resting), resting + stats.st_size)


def remember_resting(spares: Path, resting: int) -> None:
    """Record the resting size the pool's last ``up`` asked for (``.resting``), so that a reap
    run with another ``ENVKIT_SPARES`` (a cron job without it) trims to this one, not its own."""
    if resting == SPARES and not (spares / ".resting").exists():
        return  # the default, and nothing else was ever asked: nothing to remember
    if resting == 0 and not spares.is_dir():
        return
    with contextlib.suppress(OSError):
        if resting_of(spares, -1) != resting:
            spares.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(spares / ".resting", str(resting).encode())


def resting_of(spares: Path, default: int) -> int:
    """The resting size recorded for a pool, else ``default``."""
    try:
        return max(0, int((spares / ".resting").read_text()))
    except (OSError, ValueError):
        return default


def largest(resting: int) -> int:
    """The most copies a pool with this resting size grows to."""
    return max(MAX_SPARES, resting)


def affordable(template: Path, spares: Path) -> int:
    """How many more copies the pool's file system can take within ``MAX_SHARE_OF_FREE``."""
    size = template_bytes(template, spares)
    try:
        stats = os.statvfs(spares)
    except OSError:
        return 0
    return int(stats.f_bavail * stats.f_frsize * MAX_SHARE_OF_FREE) // max(size, 1)


def template_bytes(template: Path, spares: Path) -> int:
    """The size of one copy, summed once per pool (``.bytes``; a template never changes)."""
    cache = spares / ".bytes"
    with contextlib.suppress(OSError, ValueError):
        return int(cache.read_text())
    size = sum(
        (Path(folder) / name).lstat().st_size
        for folder, _, files in os.walk(template)
        for name in files
    )
    if size == 0:  # the template is gone (pruned meanwhile): nothing worth remembering
        return 1 << 40
    with contextlib.suppress(OSError):
        write_atomic(cache, str(size).encode())
    return size


def refill(template: Path, *, resting: int = SPARES) -> bool:
    """Start a detached, idle-priority shell that copies ``template`` until the pool holds what
    ``wanted`` says (within what the file system can take); whether one was started (not when a
    refill already running holds the lock: it tops up for us too). The lock is taken here and
    handed down, so it is held from this moment on."""
    spares = spares_dir(template)
    spares.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(spares / ".refill.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        room = len(ready(spares)) + affordable(template, spares)
        want = wanted(spares, resting=resting)
        if want == resting:  # no burst remembered: count the misses of the next one afresh
            (spares / ".misses").unlink(missing_ok=True)
        cap = min(largest(resting), room)  # misses recorded while it runs grow it up to this
        want = min(want, room)
        spawn_helper(
            [
                "sh",
                "-c",
                _REFILL,
                "refill",
                str(spares),
                str(template),
                str(want),
                f"{os.getpid()}-{time.time_ns():x}",
                str(resting),
                str(cap),
                str(len(os.sched_getaffinity(0)) or 2),
            ],
            pass_fds=(lock,),
        )
        return True
    finally:
        os.close(lock)  # the shell's inherited descriptor keeps the lock until it exits


def trim(template: Path, *, resting: int = SPARES, dry_run: bool = False) -> list[str]:
    """Remove ready copies beyond what the pool wants now (after a burst is forgotten, or all
    of them when the resting size is 0); the names removed. The resting size is the one the
    pool's last ``up`` recorded, ``resting`` when none did. Skipped while a refill holds the
    lock."""
    spares = spares_dir(template)
    if not spares.is_dir() or spares.is_symlink():
        return []
    resting = resting_of(spares, resting)
    if dry_run:  # probe, write nothing: not even the lock file
        if is_locked(spares / ".refill.lock"):
            return []
        return ready(spares)[wanted(spares, resting=resting) :]
    lock = os.open(spares / ".refill.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        want = wanted(spares, resting=resting)
        surplus = ready(spares)[want:]
        if want == resting:
            (spares / ".misses").unlink(missing_ok=True)
        for name in surplus:
            # Renamed out of the pool first, so no checkout can claim a half-deleted copy.
            doomed = spares / f".tmp-trim-{name}"
            try:
                os.rename(spares / name, doomed)
            except OSError:
                continue  # claimed meanwhile
            remove_tree_quietly(doomed, spares)
        return surplus
    finally:
        os.close(lock)
