"""Per-pipeline file locks (``flock``), so distinct pipelines never share a lock on the hot path.

``flock`` locks die with their process, so a lock "held" by a process killed with SIGKILL is free
at once: there is nothing stale to break. The lock file may be unlinked by the holder (``down``
removes every file of a pipeline); a waiter that then wins the lock on the unlinked inode notices
and retries on the new file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from envkit.errors import LockedError

log = logging.getLogger(__name__)


class FileLock:
    """An exclusive lock on ``path``, held between :meth:`acquire` and :meth:`release`."""

    def __init__(self, path: Path, *, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never wait."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                # release() empties the file, so a pid still in it belongs to a holder that died
                # (SIGKILL) with the lock: flock already freed it; say so once.
                previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if previous and previous != str(os.getpid()):
                    log.warning(
                        "%s: the previous lock holder (pid %s) died while holding it; taking over",
                        self.what,
                        previous,
                    )
                # The pid is only for messages: a full disk must not stop a `down` that frees it.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                return True
            os.close(fd)  # the holder unlinked it while we waited: lock the new file

    def acquire(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the lock, then raise ``LockedError``."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        announced = False
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise LockedError(
                    f"{self.what} is locked by another envkit process (pid {self.holder()}) "
                    f"and stayed locked for {timeout:.0f}s.",
                    hint="Wait for that process to finish, or raise ENVKIT_LOCK_TIMEOUT.",
                )
            if not announced:
                log.info("waiting for the lock of %s (held by pid %s)", self.what, self.holder())
                announced = True
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def holder(self) -> str:
        """The pid written by the current holder, or '?'."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self, *, unlink: bool = False) -> None:
        """Give the lock up; with ``unlink``, remove the lock file first (still holding it)."""
        if self._fd is None:
            return
        if unlink:
            self.path.unlink(missing_ok=True)
        else:
            os.ftruncate(self._fd, 0)  # an empty file means "released cleanly" (see above)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None


@contextmanager
def locked(path: Path, *, what: str, timeout: float) -> Iterator[FileLock]:
    """Hold the lock at ``path`` for the ``with`` block."""
    lock = FileLock(path, what=what)
    lock.acquire(timeout)
    try:
        yield lock
    finally:
        lock.release()


def is_locked(path: Path) -> bool:
    """Whether some live process holds the lock at ``path`` (probing without waiting, and
    without writing: the file is opened read-only, never created, its content left alone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing the only descriptor drops a lock taken by the probe
    return False
