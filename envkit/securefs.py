"""Directories envkit can trust on a machine other accounts share, and deletes that stay in them.

envkit often runs as root beside other local users, and its servers run as an unprivileged user
that anything a test database's superuser runs can act as. A path in a world-writable place
(``/dev/shm``, ``/tmp``, ``/var/tmp``) may have been made by any of them before envkit looked, and
a directory the server user can write may hold symlinks it planted. So:

- every directory envkit keeps its data in is made by envkit with the mode it needs, or, if it is
  already there, checked with ``lstat`` (no symlink followed) to be a directory owned by the
  invoking user that no one else can write; everything above it must be owned by root or that
  user and be unwritable by others unless sticky (so no one else can swap it);
- deletes are confined: the path must lie inside the root it belongs to, must not be a symlink,
  and is removed with ``shutil.rmtree``'s descriptor-based walk, which never follows a symlink.

See docs/threat-model.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from envkit.errors import PrerequisiteError

OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _who(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _refuse(path: Path, problem: str, fix: str) -> PrerequisiteError:
    return PrerequisiteError(
        f"envkit will not use {path}: {problem}. Another local user could have made it to read "
        "or take over envkit's servers.",
        hint=fix,
    )


def check_parents(path: Path) -> None:
    """Refuse ``path`` when a directory above it could be swapped by another user: each must be
    owned by root or the invoking user and not writable by others unless sticky (``/tmp``)."""
    me = os.geteuid()
    parent = Path(os.path.realpath(path.parent))
    for folder in (parent, *parent.parents):
        try:
            st = os.lstat(folder)
        except OSError as exc:
            raise PrerequisiteError(
                f"Cannot check {folder} (above {path}): {exc.strerror}.",
                hint="Point ENVKIT_DATA_DIR / ENVKIT_HOME at a directory you own.",
            ) from None
        if st.st_uid not in (0, me):
            raise _refuse(
                path,
                f"{folder} above it belongs to {_who(st.st_uid)}",
                "Set ENVKIT_DATA_DIR (or ENVKIT_HOME) to a directory under one you own.",
            )
        if st.st_mode & OTHERS_WRITE and not st.st_mode & stat.S_ISVTX:
            raise _refuse(
                path,
                f"{folder} above it is writable by other users and not sticky",
                f"Make it private ('chmod go-w {folder}') or point ENVKIT_DATA_DIR elsewhere.",
            )


def private_dir(path: Path, mode: int, *, check_above: bool = False) -> Path:
    """Create ``path`` (one level) with exactly ``mode``, or verify the existing one: a real
    directory (not a symlink) owned by the invoking user with no group/other write. Raise
    ``PrerequisiteError`` naming the path and the fix otherwise."""
    if check_above:
        check_parents(path)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise PrerequisiteError(
            f"Cannot create {path}: {exc.strerror}.",
            hint="Point ENVKIT_DATA_DIR at a directory you can write.",
        ) from None
    else:
        os.chmod(path, mode)  # mkdir's mode is cut by the umask
        return path
    verify_private_dir(path)
    return path


def verify_private_dir(path: Path) -> os.stat_result:
    """The ``lstat`` of ``path`` once it is proved a directory only the invoking user owns and
    can write; ``PrerequisiteError`` otherwise."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "it is a symbolic link", f"Remove it ('rm {path}') and run again.")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "it is not a directory", f"Remove it ('rm {path}') and run again.")
    if st.st_uid != os.geteuid():
        raise _refuse(
            path,
            f"it belongs to {_who(st.st_uid)}, not to you ({_who(os.geteuid())})",
            f"Remove it (as root: 'rm -rf {path}'), or set ENVKIT_DATA_DIR to a directory "
            "you own.",
        )
    if st.st_mode & OTHERS_WRITE:
        raise _refuse(
            path,
            f"other users can write to it (mode {stat.S_IMODE(st.st_mode):o})",
            f"Remove it ('rm -rf {path}') so envkit recreates it, or 'chmod go-w {path}' if "
            "you are sure nothing in it was planted.",
        )
    return st


def is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` names an entry inside ``root`` once the directories above it are
    resolved (``path`` itself may be a symlink: deleting it removes only the link)."""
    if path.name in ("", ".", ".."):
        return False
    real_root = os.path.realpath(root)
    real_parent = os.path.realpath(path.parent)
    return real_parent == real_root or real_parent.startswith(real_root.rstrip(os.sep) + os.sep)


def remove_tree(path: Path, root: Path) -> None:
    """Delete ``path`` and everything in it, never leaving ``root``: refused (``ValueError``)
    when ``path`` is not inside ``root``; a symlink is unlinked, not followed; inside, the
    descriptor-based walk of ``shutil.rmtree`` never follows a symlink either."""
    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux always has it
        raise RuntimeError("this platform's rmtree can follow symlinks: refusing to delete")
    if not is_within(path, root):
        raise ValueError(f"refusing to delete {path}: it is not inside {root}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_tree_quietly(path: Path, root: Path) -> None:
    """:func:`remove_tree`, ignoring what cannot be removed (the next reap retries)."""
    with contextlib.suppress(OSError):
        remove_tree(path, root)


@contextlib.contextmanager
def open_dir(path: Path, *, dir_fd: int | None = None) -> Iterator[int]:
    """A descriptor of the directory ``path`` (relative to ``dir_fd`` when given), opened
    without following a symlink in its last component."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def write_in(dir_fd: int, name: str, data: bytes, *, append: bool = False) -> None:
    """Write a file in the directory ``dir_fd`` without following a symlink planted as ``name``
    (the directory belongs to a user envkit does not trust)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_APPEND if append else os.O_TRUNC
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
