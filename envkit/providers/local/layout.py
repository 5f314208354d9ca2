"""Where the local provider keeps everything.

Every path derives from (data root, ENVKIT_HOME, pipeline ID), so ``destroy`` finds everything
even when ``up`` was killed before it saved a record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envkit.naming import short_hash
from envkit.providers.local.loopback import AddressBook
from envkit.providers.local.pgserver import socket_dir
from envkit.settings import Settings

MIN_SHM_FREE = 1 << 30  # use /dev/shm only with at least 1 GiB free


def default_data_root(settings: Settings) -> Path:
    """RAM-backed ``/dev/shm`` when it has room (fast, and no ext4 delete stalls), else disk."""
    if settings.data_dir is not None:
        return settings.data_dir
    uid = os.geteuid()
    shm = Path("/dev/shm")  # noqa: S108  (a private, 0711 subdirectory of it)
    try:
        stats = os.statvfs(shm)
        if os.access(shm, os.W_OK) and stats.f_bavail * stats.f_frsize >= MIN_SHM_FREE:
            return shm / f"envkit-{uid}"
    except OSError:
        pass
    if uid == 0:
        # Root's home is 0700: the unprivileged server user could not reach data under it.
        return Path("/var/tmp") / f"envkit-{uid}"  # noqa: S108
    return settings.home / "data"


@dataclass(frozen=True)
class Layout:
    """Where the local provider keeps everything, for one ENVKIT_HOME."""

    data_root: Path
    home_key: str

    @classmethod
    def for_settings(cls, settings: Settings) -> Layout:
        home = settings.home.expanduser().resolve()
        return cls(default_data_root(settings), short_hash(str(home), 10))

    @property
    def envs_root(self) -> Path:
        return self.data_root / f"h-{self.home_key}"

    @property
    def templates(self) -> Path:
        return self.data_root / "templates"

    @property
    def trash(self) -> Path:
        return self.data_root / ".trash"

    @property
    def addresses(self) -> AddressBook:
        return AddressBook(self.data_root / "addr")

    def env_dir(self, pipeline_id: str) -> Path:
        return self.envs_root / pipeline_id

    def pgdata(self, pipeline_id: str) -> Path:
        return self.env_dir(pipeline_id) / "pgdata"

    def logs(self, pipeline_id: str) -> Path:
        return self.env_dir(pipeline_id) / "logs"

    def socket_dir(self, pipeline_id: str) -> Path:
        # Unix socket paths are limited to ~107 bytes: keep this one short whatever the root.
        return socket_dir(self.data_root, short_hash(f"{self.home_key}/{pipeline_id}", 12))

    def owner_key(self, pipeline_id: str) -> str:
        """What address reservations are keyed by: unique per (home, pipeline)."""
        return f"{self.home_key}/{pipeline_id}"
