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


# -- filesystem failures: clear errors naming the path, never "Internal error" -------------------


def test_prepare_creates_a_private_home(tmp_path: Path) -> None:
    home = tmp_path / "a" / "home"
    StateStore(home).prepare(need_space=True)
    assert home.is_dir() and stat.S_IMODE(home.stat().st_mode) == 0o700


@pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
def test_an_unusable_home_is_a_config_error_naming_it(where: str, tmp_path: Path) -> None:
    from envkit.errors import ConfigError

    if where == "under-a-file":
        (tmp_path / "afile").write_text("")
        home = tmp_path / "afile" / "home"
    else:
        home = Path("/proc/envkit-no-such/home")
    store = StateStore(home)
    with pytest.raises(ConfigError, match="ENVKIT_HOME") as caught:
        store.prepare()
    assert str(home) in caught.value.message and caught.value.exit_code == 2
    with pytest.raises(ConfigError, match="ENVKIT_HOME"):
        store.lock("p1")  # every transition starts with a lock
    if where == "under-a-file":  # reading a record says the same, not NotADirectoryError
        with pytest.raises(ConfigError, match="ENVKIT_HOME"):
            store.load("p1")
        with pytest.raises(ConfigError, match="ENVKIT_HOME"):
            store.events()


def test_a_full_home_is_refused_before_an_up_not_before_a_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envkit.errors import ConfigError

    real = os.statvfs(tmp_path)

    class Full:
        f_frsize, f_bavail, f_bfree, f_files, f_favail = real.f_frsize, 0, 0, 1000, 10

    monkeypatch.setattr("envkit.state.os.statvfs", lambda path: Full())
    store = StateStore(tmp_path / "home")
    with pytest.raises(ConfigError, match="full filesystem") as caught:
        store.prepare(need_space=True)
    assert str(tmp_path / "home") in caught.value.message and caught.value.exit_code == 2
    store.prepare()  # down and reap free space: they must still run
    store.lock("p1")


def test_a_failing_write_mid_way_is_a_state_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from envkit.errors import StateError

    store = StateStore(tmp_path / "home")
    store.save(make_record())

    def no_space(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("envkit.state.write_atomic", no_space)
    with pytest.raises(StateError, match="No space left on device") as caught:
        store.save(make_record())
    assert str(store.record_path("p1")) in caught.value.message
    assert caught.value.exit_code == 1
    assert "ENVKIT_HOME" in (caught.value.hint or "")
    store.events_path.mkdir()  # the event log cannot be appended to
    with pytest.raises(StateError, match="event log"):
        store.event("p1", "x")


# -- a refused up leaves no record and no lock file -----------------------------------------------


class _FakeProvider:
    """A provider that refuses (exit 2) inside provision, before or after recording anything."""

    name = "local"

    def __init__(self, record_first: bool) -> None:
        self.record_first = record_first

    def preflight(self) -> None:
        return None

    def check_spec(self, spec: object) -> None:
        return None

    def provision(self, request: object) -> dict[str, str]:
        from envkit.errors import PrerequisiteError

        if self.record_first:
            request.record.resources["made"] = "something"  # type: ignore[attr-defined]
            request.save()  # type: ignore[attr-defined]
        raise PrerequisiteError("Cannot create the data root: read-only file system.")

    def probes(self, record: Record) -> list[object]:
        return []

    def gone(self, record: Record) -> list[str]:
        return ["database: gone"]

    def restart(self, record: Record) -> bool:
        return False

    def logs(self, record: Record, component: str | None = None) -> dict[str, Path]:
        return {}

    def destroy(self, pipeline_id: str, record: Record | None) -> None:
        return None


@pytest.mark.parametrize("record_first", [False, True], ids=["refused", "failed-midway"])
def test_a_provider_refusal_before_creating_anything_leaves_no_record(
    record_first: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envkit import lifecycle
    from envkit.errors import PrerequisiteError
    from envkit.plan import Plan
    from envkit.settings import Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lifecycle, "get_provider", lambda name, s: _FakeProvider(record_first))
    settings = Settings(home=tmp_path / "home", lock_timeout=0)
    ctx = Plan(settings, "p1", StateStore(settings.home), seed=False)
    with pytest.raises(PrerequisiteError):
        lifecycle.up(ctx)
    store = ctx.store
    if record_first:  # something was created: the failed record stays, for down and reap
        record = store.load("p1")
        assert record is not None and record.status is Status.FAILED
    else:
        assert store.load("p1") is None
        assert list(store.envs_dir.iterdir()) == []
        assert not store.lock_path("p1").exists()
        assert [e["event"] for e in store.events("p1")][-1] == "refused"


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_the_cli_reports_a_machine_oserror_clearly_not_as_a_bug(
    code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import errno

    from envkit import lifecycle
    from envkit.cli import main

    number = getattr(errno, code)

    def fails(ctx: object) -> None:
        raise OSError(number, os.strerror(number), str(tmp_path / "data" / "x"))

    monkeypatch.delenv("ENVKIT_DEBUG", raising=False)
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lifecycle, "status", fails)
    with pytest.raises(SystemExit) as exited:
        main(["status", "p1"])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Internal error" not in err and "bug" not in err
    assert os.strerror(number) in err and str(tmp_path / "data" / "x") in err
