from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from envkit.errors import LockedError
from envkit.locking import FileLock, is_locked
from envkit.state import Record, StateStore, Status


def make_record(pipeline_id: str = "p1") -> Record:
    return Record(pipeline_id=pipeline_id, provider="local", status=Status.READY,
                  created_at="2026-01-01T00:00:00Z", expires_at="2026-01-01T04:00:00Z",
                  owner="me", outputs={"DATABASE_PASSWORD": "s3cret"})


def test_round_trip_and_modes(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "home")
    store.save(make_record())
    loaded = store.load("p1")
    assert loaded is not None and loaded.status is Status.READY
    assert loaded.outputs["DATABASE_PASSWORD"] == "s3cret"
    path = store.record_path("p1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "s3cret" not in str(loaded.public())
    assert [r.pipeline_id for r in store.all()] == ["p1"]
    store.delete("p1")
    store.delete("p1")  # absent is fine
    assert store.load("p1") is None


def test_corrupt_or_partial_records_read_as_absent(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.envs_dir.mkdir(parents=True)
    store.record_path("bad").write_text("{not json")
    (store.envs_dir / ".p1.tmp123").write_text("partial")  # a temp file left by a crash
    assert store.load("bad") is None
    assert store.all() == []


def test_events_append_and_filter(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.event("a", "provisioning")
    store.event("b", "ready", timings={"total": 0.1})
    store.event("a", "ready")
    with open(store.events_path, "a") as fh:
        fh.write('{"torn": \n')
    assert [e["event"] for e in store.events("a")] == ["provisioning", "ready"]
    assert len(store.events()) == 3
    assert stat.S_IMODE(store.events_path.stat().st_mode) == 0o600


def _hold(path: str, seconds: float, ready: multiprocessing.synchronize.Event) -> None:
    lock = FileLock(Path(path), what="test")
    lock.acquire(5)
    ready.set()
    time.sleep(seconds)


def test_lock_excludes_and_dies_with_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold, args=(str(path), 30, ready))
    holder.start()
    try:
        assert ready.wait(10)
        assert is_locked(path)
        with pytest.raises(LockedError, match="locked by another envkit process"):
            FileLock(path, what="Pipeline 'x'").acquire(0.05)
        os.kill(holder.pid or 0, 9)  # a holder killed with SIGKILL frees the lock at once
        holder.join()
        lock = FileLock(path, what="x")
        lock.acquire(2)
        assert lock.held
        lock.release(unlink=True)
        assert not path.exists()
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join()


def test_waiter_survives_unlink_by_holder(tmp_path: Path) -> None:
    path = tmp_path / "y.lock"
    first = FileLock(path, what="y")
    first.acquire(1)
    first.release(unlink=True)
    second = FileLock(path, what="y")
    second.acquire(1)
    assert second.held and path.exists()
    second.release()
