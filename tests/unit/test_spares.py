"""Spare data-directory copies: claimed by rename, topped up by a detached shell holding a lock.

The "template" here is a small directory with the files a checkout verifies; ``cp`` and the
refill shell do not care what is in it, so no PostgreSQL is needed.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from envkit.providers.local import spares as pool
from envkit.providers.local.spares import (
    DEMAND_MEMORY,
    MAX_SPARES,
    SPARES,
    affordable,
    checkout,
    note_demand,
    refill,
    spares_dir,
    trim,
    wanted,
)


@pytest.fixture(autouse=True)
def no_wait_for_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refill waits (up to 2 s a copy) while more than half the CPUs' worth of tasks run;
    on a loaded test machine that is most of these tests' time, and not what they check. As
    if there were 64 CPUs, every moment is quiet enough."""
    monkeypatch.setattr(pool.os, "sched_getaffinity", lambda pid: set(range(64)))


@pytest.fixture()
def template(tmp_path: Path) -> Path:
    root = tmp_path / "templates" / "pg-test"
    (root / "global").mkdir(parents=True)
    (root / "base" / "1").mkdir(parents=True)
    (root / "PG_VERSION").write_text("15\n")
    (root / "postgresql.conf").write_text("# test\n")
    (root / "global" / "pg_control").write_bytes(b"\0" * 64)
    (root / "base" / "1" / "1259").write_bytes(os.urandom(8192))
    (root / "base" / "1" / "1259").chmod(0o600)
    return root


def ready(template: Path) -> list[str]:
    return pool.ready(spares_dir(template))


def wait_for_refill(template: Path, timeout: float = 60.0) -> None:
    """Until no refill holds the lock (the shell exits when it has topped up)."""
    deadline = time.monotonic() + timeout
    lock = os.open(spares_dir(template) / ".refill.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError("the refill never finished") from None
                time.sleep(0.01)
    finally:
        os.close(lock)


def test_refill_tops_up_to_the_wanted_count_with_whole_copies(template: Path) -> None:
    assert refill(template) is True
    wait_for_refill(template)
    names = ready(template)
    assert len(names) == SPARES
    for name in names:
        copy = spares_dir(template) / name
        assert (copy / "base" / "1" / "1259").read_bytes() == (
            template / "base" / "1" / "1259"
        ).read_bytes()
        assert (copy / "base" / "1" / "1259").stat().st_mode & 0o777 == 0o600
    # Already full: a second refill copies nothing.
    assert refill(template) is True
    wait_for_refill(template)
    assert ready(template) == names


def test_a_refill_already_running_is_not_doubled(template: Path) -> None:
    spares = spares_dir(template)
    spares.mkdir(parents=True)
    holder = os.open(spares / ".refill.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert refill(template) is False
        assert ready(template) == []
    finally:
        os.close(holder)


def test_half_done_copies_are_cleared_and_checkout_claims_a_spare(
    template: Path, tmp_path: Path
) -> None:
    spares = spares_dir(template)
    (spares / ".tmp-999-0" / "base").mkdir(parents=True)  # a refill killed mid-copy
    refill(template)
    wait_for_refill(template)
    assert not (spares / ".tmp-999-0").exists()
    first = ready(template)

    target = tmp_path / "env" / "pgdata"
    target.parent.mkdir()
    assert checkout(template, target) is True
    assert (target / "global" / "pg_control").is_file()
    wait_for_refill(template)
    after = ready(template)
    assert len(after) == SPARES
    assert set(first) - set(after)  # the claimed one is gone, a new one took its place


def test_checkout_copies_the_template_when_no_spare_is_ready(
    template: Path, tmp_path: Path
) -> None:
    spares = spares_dir(template)
    spares.mkdir(parents=True)
    holder = os.open(spares / ".refill.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # no refill can run: nothing will be ready
        target = tmp_path / "pgdata"
        assert checkout(template, target) is False
        assert (target / "PG_VERSION").read_text() == "15\n"
    finally:
        os.close(holder)


def test_misses_grow_the_pool_up_to_the_cap_and_are_forgotten(template: Path) -> None:
    spares = spares_dir(template)
    spares.mkdir(parents=True)
    assert wanted(spares) == SPARES
    for _ in range(3):
        note_demand(spares, missed=True)
    assert wanted(spares) == SPARES + 3
    for _ in range(MAX_SPARES * 2):
        note_demand(spares, missed=True)
    assert wanted(spares) == MAX_SPARES
    later = time.time() + DEMAND_MEMORY + 1
    assert wanted(spares, now=later) == SPARES
    # Emptying the pool (not a miss) keeps the burst remembered.
    old = time.time() - DEMAND_MEMORY + 5
    os.utime(spares / ".misses", (old, old))
    note_demand(spares, missed=False)
    assert wanted(spares, now=time.time() + 10) == MAX_SPARES


def test_a_checkout_without_a_spare_grows_the_next_refill(template: Path, tmp_path: Path) -> None:
    spares = spares_dir(template)
    spares.mkdir(parents=True)
    holder = os.open(spares / ".refill.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # keep the pool empty for the three checkouts
        for i in range(3):
            assert checkout(template, tmp_path / f"data-{i}") is False
    finally:
        os.close(holder)
    assert wanted(spares) == SPARES + 3
    assert refill(template) is True
    wait_for_refill(template)
    assert len(ready(template)) == SPARES + 3


def test_the_pool_never_takes_more_than_its_share_of_free_space(template: Path) -> None:
    spares = spares_dir(template)
    spares.mkdir(parents=True)
    (spares / ".bytes").write_text(str(10**15))  # one copy "weighs" a petabyte
    for _ in range(4):
        note_demand(spares, missed=True)
    assert affordable(template, spares) == 0
    assert refill(template) is True
    wait_for_refill(template)
    assert ready(template) == []


def test_trim_drops_the_surplus_once_the_burst_is_forgotten(template: Path) -> None:
    spares = spares_dir(template)
    spares.mkdir(parents=True)
    for _ in range(2):
        note_demand(spares, missed=True)
    refill(template)
    wait_for_refill(template)
    assert len(ready(template)) == SPARES + 2
    assert trim(template) == []  # still wanted
    old = time.time() - DEMAND_MEMORY - 1
    os.utime(spares / ".misses", (old, old))
    assert len(trim(template, dry_run=True)) == 2
    assert len(ready(template)) == SPARES + 2
    assert len(trim(template)) == 2
    assert len(ready(template)) == SPARES
    assert not (spares / ".misses").exists()
    assert not list(spares.glob(".tmp-*"))


@pytest.mark.parametrize(("misses", "copies"), [("", 1), ("....", 6), ("." * 20, 8)])
def test_the_refill_shell_rereads_the_misses_itself(
    template: Path, misses: str, copies: int
) -> None:
    """Misses recorded after a refill started grow it: the shell reads ``.misses`` every round
    (without a trailing newline, as ``note_demand`` writes it) and stays under its cap."""
    import subprocess

    spares = spares_dir(template)
    spares.mkdir(parents=True)
    if misses:
        (spares / ".misses").write_text(misses)
    # started with a target of 1, a base of SPARES and a cap of MAX_SPARES (on "64 CPUs": no
    # waiting for a quiet machine)
    args = [str(spares), str(template), "1", "t", str(SPARES), str(MAX_SPARES), "64"]
    done = subprocess.run(["sh", "-c", pool._REFILL, "refill", *args], timeout=60, check=False)
    assert done.returncode == 0
    assert len(ready(template)) == copies
    assert not list(spares.glob(".tmp-*"))


def test_a_resting_size_of_zero_keeps_no_pool(template: Path, tmp_path: Path) -> None:
    spares = spares_dir(template)
    assert checkout(template, tmp_path / "a", resting=0) is False
    assert (tmp_path / "a" / "PG_VERSION").is_file()
    assert not (spares / ".misses").exists()  # no demand recorded, no refill started
    assert not (spares / ".refill.lock").exists()
    assert wanted(spares, resting=0) == 0
    # a pool left from before is used up, then trimmed away entirely
    refill(template)
    wait_for_refill(template)
    assert checkout(template, tmp_path / "b", resting=0) is True
    assert len(ready(template)) == SPARES - 1
    assert len(trim(template, resting=0)) == SPARES - 1
    assert ready(template) == []


def test_a_refill_tops_up_to_the_resting_size(template: Path) -> None:
    assert refill(template, resting=3) is True
    wait_for_refill(template)
    assert len(ready(template)) == 3


@pytest.mark.parametrize("resting", [1, 5, 12])
def test_the_resting_size_is_what_the_pool_grows_from_and_falls_back_to(
    template: Path, resting: int
) -> None:
    spares = spares_dir(template)
    spares.mkdir(parents=True)
    assert wanted(spares, resting=resting) == resting
    note_demand(spares, missed=True)
    assert wanted(spares, resting=resting) == min(max(MAX_SPARES, resting), resting + 1)
    for _ in range(20):
        note_demand(spares, missed=True)
    assert wanted(spares, resting=resting) == max(MAX_SPARES, resting)
    later = time.time() + DEMAND_MEMORY + 1
    assert wanted(spares, resting=resting, now=later) == resting


def test_a_reap_without_the_setting_trims_to_what_the_pools_ups_asked(
    template: Path, tmp_path: Path
) -> None:
    """ENVKIT_SPARES=4 on the ups, a cron reap with the default: the pool keeps its 4."""
    spares = spares_dir(template)
    assert checkout(template, tmp_path / "a", resting=4) is False
    wait_for_refill(template)
    (spares / ".misses").unlink(missing_ok=True)  # the burst is forgotten
    assert len(ready(template)) >= 4
    trim(template)  # the reap's own (default) resting size
    assert len(ready(template)) == 4
    # lowered on the next up: the reap follows
    assert checkout(template, tmp_path / "b", resting=1) is True
    wait_for_refill(template)
    (spares / ".misses").unlink(missing_ok=True)
    trim(template, resting=SPARES)
    assert len(ready(template)) == 1


def test_an_up_without_a_pool_still_marks_its_template_used(
    template: Path, tmp_path: Path
) -> None:
    old = time.time() - 30 * 86400
    os.utime(template, (old, old))
    checkout(template, tmp_path / "a", resting=0)
    assert template.stat().st_mtime > old + 86400
