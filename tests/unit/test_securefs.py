"""envkit.securefs: owned, checked directories and confined deletes (issue 14)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

import pytest

from envkit.errors import PrerequisiteError
from envkit.locking import FileLock, is_locked
from envkit.pgbin import PgInstall
from envkit.providers.local.leftovers import pipeline_dirs as _pipeline_dirs
from envkit.providers.local.leftovers import reserved_by as _reserved_by
from envkit.providers.local.templates import trim
from envkit.securefs import (
    check_parents,
    is_within,
    open_dir,
    private_dir,
    remove_tree,
    write_in,
)

OTHER_UID = 54321  # no such user needed: root can give a path to any uid
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def test_private_dir_creates_with_exactly_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        private_dir(tmp_path / "root", 0o711)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(tmp_path / "root").st_mode) == 0o711
    private_dir(tmp_path / "root", 0o711)  # an existing one of ours is fine


def test_private_dir_refuses_a_symlink_a_file_and_a_writable_dir(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "file").write_text("")
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    for name, words in (("link", "symbolic link"), ("file", "not a directory"),
                        ("loose", "other users can write to it (mode 777)")):
        with pytest.raises(PrerequisiteError) as caught:
            private_dir(tmp_path / name, 0o711)
        assert words in caught.value.message and str(tmp_path / name) in caught.value.message
        assert caught.value.hint


@as_root
def test_private_dir_refuses_one_another_user_made(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(PrerequisiteError, match="belongs to uid 54321"):
        private_dir(theirs, 0o711)


@as_root
def test_check_parents_refuses_a_swappable_ancestor(tmp_path: Path) -> None:
    sticky = tmp_path / "shm"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    check_parents(sticky / "envkit-0")  # a sticky, root-owned parent is fine (/dev/shm)
    open_ = tmp_path / "open"
    open_.mkdir()
    os.chmod(open_, 0o777)
    with pytest.raises(PrerequisiteError, match="writable by other users and not sticky"):
        check_parents(open_ / "data")
    owned = sticky / "someone"
    owned.mkdir()
    os.chown(owned, OTHER_UID, OTHER_UID)
    with pytest.raises(PrerequisiteError, match="belongs to uid 54321"):
        check_parents(owned / "data")


def test_remove_tree_stays_inside_its_root_and_never_follows_a_link(tmp_path: Path) -> None:
    root, victim = tmp_path / "root", tmp_path / "victim"
    (root / "env" / "pgdata").mkdir(parents=True)
    victim.mkdir()
    (victim / "precious").write_text("x")
    (root / "env" / "pgdata" / "link").symlink_to(victim)
    (root / "env" / "dirlink").symlink_to(victim)
    (root / "top-link").symlink_to(victim)

    for outside in (root / "..", root / "env" / ".." / "..", tmp_path / "victim", root):
        with pytest.raises(ValueError, match="not inside"):
            remove_tree(outside, root)
    remove_tree(root / "top-link", root)  # the link goes, not what it names
    remove_tree(root / "env", root)
    remove_tree(root / "absent", root)
    assert not os.path.lexists(root / "env") and not os.path.lexists(root / "top-link")
    assert (victim / "precious").read_text() == "x"
    assert is_within(root / "a" / "b", root) and not is_within(root / "a" / "..", root)


def test_write_in_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "pg_hba.conf").symlink_to(victim)
    with open_dir(data) as fd, pytest.raises(OSError) as caught:
        write_in(fd, "pg_hba.conf", b"host all all 0.0.0.0/0 trust\n")
    assert caught.value.errno == errno.ELOOP
    assert victim.read_text() == "precious"
    (tmp_path / "datalink").symlink_to(data)
    with pytest.raises(OSError) as refused, open_dir(tmp_path / "datalink"):
        pass
    assert refused.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_trim_never_follows_links_planted_in_a_data_directory(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "1234_fsm").write_text("precious")
    datadir = tmp_path / "pgdata"
    for folder in ("base/1", "global", "pg_wal"):
        (datadir / folder).mkdir(parents=True)
    (datadir / "base" / "1" / "16384_fsm").write_text("")
    (datadir / "base" / "1" / "16385").write_text("")
    (datadir / "base" / "2").symlink_to(victim)  # a database directory swapped for a link
    (datadir / "global" / "1260_fsm").symlink_to(victim / "1234_fsm")
    trim(datadir, PgInstall(tmp_path / "no-bin"))  # no pg_controldata: WAL is kept
    assert not (datadir / "base" / "1" / "16384_fsm").exists()
    assert (datadir / "base" / "1" / "16385").exists()
    assert (victim / "1234_fsm").read_text() == "precious"


def test_is_locked_probes_without_writing_or_creating(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    assert not is_locked(path) and not path.exists()
    path.write_text("")
    before = os.stat(path)
    assert not is_locked(path)
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    holder = FileLock(path, what="x")
    assert holder.try_acquire()
    try:
        assert is_locked(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # still held by its owner
        finally:
            os.close(fd)
    finally:
        holder.release()


def test_the_reaper_takes_only_valid_ids_from_names_it_reads(tmp_path: Path) -> None:
    for name in ("ok-1", ".hidden", "UPPER", "x\n", "a" * 64):
        (tmp_path / name).mkdir()
    (tmp_path / "link-1").symlink_to(tmp_path / "ok-1")
    (tmp_path / "file-1").write_text("")
    assert _pipeline_dirs(tmp_path) == ["ok-1"]
    assert _pipeline_dirs(tmp_path / "absent") == []
    owners = ["k/ok-2", "k/..", "k/../x", "k/", "other/ok-3", "k/ok-2"]
    assert _reserved_by(owners, "k") == ["ok-2"]

