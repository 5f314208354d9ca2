"""Per-pipeline loopback addresses, so every pipeline's services keep their standard ports.

Linux routes all of 127.0.0.0/8 to ``lo``; envkit gives each pipeline an address derived from its
ID (127.A.B.C with A >= 1, so 127.0.0.1 and 127.0.1.1 are never used) and reserves it with a
file named after it, so two pipelines never share one. The file is created whole: the owner is
written to a temporary file that is then hard-linked to the address's name (``link`` fails when the
name is taken), so a process killed at any moment never leaves an empty reservation. Where such an
address cannot be bound (other systems route only 127.0.0.1), it falls back to 127.0.0.1 and a free
port.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import ProvisionError

FALLBACK_HOST = "127.0.0.1"
TEMP_PREFIX = ".tmp-"  # a reservation being written; never an address (those start with a digit)
# Where hard links are not supported, a reservation falls back to O_EXCL-then-write.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


@dataclass(frozen=True)
class Address:
    """A reserved host for one pipeline; ``dedicated`` is false on the shared fallback."""

    host: str
    dedicated: bool


def candidates(pipeline_id: str) -> Iterator[str]:
    """Addresses for ``pipeline_id`` in the order to try them (stable across machines)."""
    for attempt in range(64):
        digest = hashlib.sha256(f"{pipeline_id}#{attempt}".encode()).digest()
        yield f"127.{1 + digest[0] % 254}.{digest[1]}.{1 + digest[2] % 254}"


def bind_error(host: str, port: int) -> int | None:
    """The errno of binding ``host:port`` (``None`` when it is free) the way servers bind it,
    with SO_REUSEADDR: connections closed a moment ago (TIME_WAIT) do not make a port busy for
    PostgreSQL or an HTTP server, so they must not here either; a listener still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno or -1
    return None


def free_port(host: str) -> int:
    """A port the kernel says is free on ``host`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class AddressBook:
    """Reservations of loopback addresses, one file each under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, host: str) -> Path:
        return self.folder / host

    def reserve(self, owner: str, pipeline_id: str, *, probe_port: int = 5432) -> Address:
        """Reserve an address for ``owner`` (a unique key of the pipeline); reuse its own."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for host in candidates(pipeline_id):
            path = self._path(host)
            if not self._claim(path, owner):
                if self.owner_of(host) == owner:
                    return Address(host, dedicated=True)
                continue
            error = bind_error(host, probe_port)
            if error == errno.EADDRNOTAVAIL:
                path.unlink(missing_ok=True)
                return Address(FALLBACK_HOST, dedicated=False)
            return Address(host, dedicated=True)
        raise ProvisionError(
            "No free loopback address was found after 64 candidates.",
            hint="Run 'envkit reap' to release addresses of dead environments.",
        )

    def _claim(self, path: Path, owner: str) -> bool:
        """Create the reservation ``path`` holding ``owner``, whole or not at all; whether it was
        free. The temporary file is unlinked whatever happens; one left by a process killed in
        between is swept by ``envkit reap``."""
        tmp = self.folder / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(owner)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                return self._claim_unlinked(path, owner)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _claim_unlinked(path: Path, owner: str) -> bool:
        # No hard links on this file system: create exclusively, then write (a kill in between
        # leaves an empty file, which reap removes after a grace period).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(owner)
        return True

    def owner_of(self, host: str) -> str | None:
        try:
            return self._path(host).read_text()
        except OSError:
            return None

    def release(self, owner: str) -> None:
        """Drop every reservation held by ``owner``."""
        for host in self.held_by(owner):
            self._path(host).unlink(missing_ok=True)

    def held_by(self, owner: str) -> list[str]:
        """Hosts reserved by ``owner``."""
        return [h for h in self._hosts() if self.owner_of(h) == owner]

    def owners(self) -> dict[str, str]:
        """host -> owner of every reservation."""
        found = {}
        for host in self._hosts():
            owner = self.owner_of(host)
            if owner is not None:
                found[host] = owner
        return found

    def _hosts(self) -> list[str]:
        """Names of the reservations (temporary files being written are not ones)."""
        if not self.folder.is_dir():
            return []
        return [p.name for p in self.folder.iterdir() if not p.name.startswith(".")]

    def unfinished(self) -> dict[Path, int | None]:
        """Temporary files of reservations being written (or left by writers killed meanwhile),
        each with the pid of its writer (``None`` when the name does not say)."""
        if not self.folder.is_dir():
            return {}
        found: dict[Path, int | None] = {}
        for path in self.folder.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                pid = path.name[len(TEMP_PREFIX) :].split("-", 1)[0]
                found[path] = int(pid) if pid.isdigit() else None
        return found
