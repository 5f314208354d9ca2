"""The operating-system user PostgreSQL and services run as.

PostgreSQL refuses to run as root, and CI containers often are root. Then envkit runs its
servers as an unprivileged user (``ENVKIT_PG_USER``, default ``envkit``), creating it once with
``useradd`` when it does not exist. As anyone else, envkit runs them as the invoking user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.errors import PrerequisiteError

log = logging.getLogger(__name__)

DEFAULT_USER = "envkit"


@dataclass(frozen=True)
class RunAs:
    """Who child processes run as; ``switch`` is false when that is the current user."""

    name: str
    uid: int
    gid: int
    switch: bool

    def chown(self, path: Path) -> None:
        """Give ``path`` to this user (no-op when not switching)."""
        if self.switch:
            os.chown(path, self.uid, self.gid)

    def popen_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``subprocess.Popen`` that drop to this user."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def server_user(requested: str | None) -> RunAs:
    """The user to run servers as, created if envkit runs as root and it is missing."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=False)
    name = requested or DEFAULT_USER
    if name == "root":
        raise PrerequisiteError(
            "ENVKIT_PG_USER is 'root', but PostgreSQL refuses to run as root.",
            hint="Unset it (envkit then uses the unprivileged user 'envkit') or name another.",
        )
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = _create_user(name)
    return RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


def trusted_uids(requested: str | None) -> frozenset[int]:
    """The users whose processes can be envkit's: the invoking user and, as root, the server
    user (when it exists; it is never created here). Processes of anyone else are never taken
    as envkit's, whatever their command line says."""
    uids = {os.geteuid()}
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            uids.add(pwd.getpwnam(requested or DEFAULT_USER).pw_uid)
    return frozenset(uids)


def _create_user(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if not Path(useradd).exists():
        raise PrerequisiteError(
            f"envkit runs as root and must run PostgreSQL as the unprivileged user {name!r}, "
            "which does not exist, and there is no 'useradd' to create it.",
            hint="Create the user yourself, or set ENVKIT_PG_USER to an existing non-root user.",
        )
    nologin = next(
        (p for p in ("/usr/sbin/nologin", "/sbin/nologin") if Path(p).exists()), "/bin/false"
    )
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            nologin,
            "--comment",
            "envkit test servers",
            name,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrerequisiteError(
            f"Could not create the unprivileged user {name!r} to run PostgreSQL: "
            f"{result.stderr.strip() or 'useradd failed'}.",
            hint="Create it yourself or set ENVKIT_PG_USER to an existing non-root user.",
        ) from None
    log.warning("running as root: created the unprivileged user %r for PostgreSQL", name)
    return entry
