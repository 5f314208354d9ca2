"""Per-pipeline loopback addresses, so every pipeline's services keep their standard ports.

Linux routes all of 127.0.0.0/8 to ``lo``; envkit gives each pipeline an address derived from its
ID (127.A.B.C with A >= 1, so 127.0.0.1 and 127.0.1.1 are never used) and reserves it with an
``O_EXCL`` file, so two pipelines never share one. Where such an address cannot be bound (other
systems route only 127.0.0.1), it falls back to 127.0.0.1 and a free port.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import ProvisionError

FALLBACK_HOST = "127.0.0.1"


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
    """The errno of binding ``host:port`` (``None`` when it is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if self.owner_of(host) == owner:
                    return Address(host, dedicated=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(owner)
            error = bind_error(host, probe_port)
            if error == errno.EADDRNOTAVAIL:
                path.unlink(missing_ok=True)
                return Address(FALLBACK_HOST, dedicated=False)
            return Address(host, dedicated=True)
        raise ProvisionError(
            "No free loopback address was found after 64 candidates.",
            hint="Run 'envkit reap' to release addresses of dead environments.",
        )

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
        if not self.folder.is_dir():
            return []
        return [p.name for p in self.folder.iterdir() if self.owner_of(p.name) == owner]

    def owners(self) -> dict[str, str]:
        """host -> owner of every reservation."""
        if not self.folder.is_dir():
            return {}
        found = {}
        for path in self.folder.iterdir():
            owner = self.owner_of(path.name)
            if owner is not None:
                found[path.name] = owner
        return found
