"""Reaper decisions on fake records, and a reap over a home of fake records (no processes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from envkit.locking import FileLock
from envkit.naming import iso_utc
from envkit.reaper import Reaper, decide, decide_orphan
from envkit.settings import Settings
from envkit.state import Record, StateStore, Status

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def record(pipeline_id: str = "pr-1", status: Status = Status.READY, *,
           expires_in: timedelta = timedelta(hours=1),
           updated_ago: timedelta = timedelta(minutes=5)) -> Record:
    return Record(
        pipeline_id=pipeline_id,
        provider="local",
        status=status,
        created_at=iso_utc(NOW - timedelta(hours=2)),
        expires_at=iso_utc(NOW + expires_in),
        owner="test",
        updated_at=iso_utc(NOW - updated_ago),
        owner_pid=999999,
    )


@pytest.mark.parametrize("status", [Status.READY, Status.PRESERVED, Status.FAILED])
def test_an_unexpired_environment_is_kept(status: Status) -> None:
    decision = decide(record(status=status), now=NOW, locked=False)
    assert not decision.reap
    assert "until" in decision.reason


@pytest.mark.parametrize("status", [Status.READY, Status.PRESERVED, Status.FAILED])
def test_an_expired_environment_is_reaped(status: Status) -> None:
    decision = decide(record(status=status, expires_in=-timedelta(seconds=1)), now=NOW,
                      locked=False)
    assert decision.reap
    assert "expired" in decision.reason


@pytest.mark.parametrize("status", [Status.PROVISIONING, Status.DESTROYING])
def test_a_busy_record_with_a_free_lock_has_a_dead_owner_and_is_reaped(status: Status) -> None:
    decision = decide(record(status=status), now=NOW, locked=False)
    assert decision.reap
    assert "died" in decision.reason


@pytest.mark.parametrize("status", list(Status))
def test_a_locked_environment_is_never_reaped_even_when_expired(status: Status) -> None:
    expired = record(status=status, expires_in=-timedelta(days=3))
    assert not decide(expired, now=NOW, locked=True).reap


def test_older_than_is_a_grace_period() -> None:
    just_expired = record(expires_in=-timedelta(minutes=10))
    assert not decide(just_expired, now=NOW, locked=False, older_than=timedelta(hours=1)).reap
    assert decide(just_expired, now=NOW, locked=False, older_than=timedelta(minutes=5)).reap
    stuck = record(status=Status.PROVISIONING, updated_ago=timedelta(minutes=1))
    assert not decide(stuck, now=NOW, locked=False, older_than=timedelta(minutes=30)).reap
    assert decide(stuck, now=NOW, locked=False, older_than=timedelta(seconds=30)).reap


def test_orphans() -> None:
    assert not decide_orphan([], now=NOW, since=None, older_than=None).reap
    assert decide_orphan(["directory"], now=NOW, since=NOW, older_than=None).reap
    young = decide_orphan(["directory"], now=NOW, since=NOW - timedelta(minutes=1),
                          older_than=timedelta(hours=1))
    assert not young.reap
    assert decide_orphan(["process"], now=NOW, since=None, older_than=timedelta(hours=1)).reap


class FakeProvider:
    """Records what would be destroyed; creates nothing."""

    name = "local"

    def __init__(self) -> None:
        self.destroyed: list[str] = []

    def destroy(self, pipeline_id: str, record: Record | None) -> None:
        self.destroyed.append(pipeline_id)


def _reaper(settings: Settings, **kwargs: object) -> tuple[Reaper, FakeProvider]:
    reaper = Reaper(settings, now=NOW, **kwargs)  # type: ignore[arg-type]
    fake = FakeProvider()
    reaper._providers["local"] = fake  # type: ignore[assignment]
    return reaper, fake


def _home(tmp_path: Path) -> Settings:
    # A data dir inside tmp_path, so the leftover scans look only at this test's directories.
    return Settings.resolve({"home": tmp_path / "home", "data_dir": tmp_path / "data"})


def test_reap_over_fake_records(tmp_path: Path, clean_env: None) -> None:
    settings = _home(tmp_path)
    store = StateStore(settings.home)
    store.save(record("expired", expires_in=-timedelta(minutes=1)))
    store.save(record("fresh"))
    store.save(record("preserved-old", Status.PRESERVED, expires_in=-timedelta(hours=1)))
    store.save(record("stuck", Status.PROVISIONING))
    store.save(record("busy", Status.PROVISIONING, expires_in=-timedelta(days=1)))
    holder = FileLock(store.lock_path("busy"), what="busy")
    assert holder.try_acquire()
    try:
        reaper, fake = _reaper(settings)
        report = reaper.run()
    finally:
        holder.release()
    assert sorted(fake.destroyed) == ["expired", "preserved-old", "stuck"]
    assert sorted(e["pipeline_id"] for e in report.reaped) == sorted(fake.destroyed)
    assert sorted(e["pipeline_id"] for e in report.kept) == ["busy", "fresh"]
    assert report.errors == []
    assert sorted(r.pipeline_id for r in store.all()) == ["busy", "fresh"]
    assert not store.lock_path("expired").exists()  # reaped pipelines leave no lock file
    events = [e for e in store.events() if e["event"] == "reaped"]
    assert sorted(e["pipeline_id"] for e in events) == sorted(fake.destroyed)
    assert all(isinstance(e["seconds"], float) for e in events)
    json.dumps(report.as_json())  # the --json shape serialises


def test_dry_run_changes_nothing(tmp_path: Path, clean_env: None) -> None:
    settings = _home(tmp_path)
    store = StateStore(settings.home)
    store.save(record("expired", expires_in=-timedelta(minutes=1)))
    reaper, fake = _reaper(settings, dry_run=True)
    report = reaper.run()
    assert fake.destroyed == []
    assert [e["pipeline_id"] for e in report.reaped] == ["expired"]
    assert report.as_json()["dry_run"] is True
    assert store.load("expired") is not None


def test_leftovers_without_records_are_found_by_markers_only(tmp_path: Path,
                                                             clean_env: None) -> None:
    from envkit.providers.local import Layout

    settings = _home(tmp_path)
    layout = Layout.for_settings(settings)
    (layout.env_dir("ghost") / "pgdata").mkdir(parents=True)
    layout.addresses.folder.mkdir(parents=True)
    (layout.addresses.folder / "127.9.9.9").write_text(layout.owner_key("addr-only"))
    (layout.addresses.folder / "127.9.9.8").write_text("someone-else/home")  # not ours
    StateStore(settings.home).save(record("fresh"))
    layout.env_dir("fresh").mkdir(parents=True)
    reaper, fake = _reaper(settings)
    report = reaper.run()
    assert sorted(fake.destroyed) == ["addr-only", "ghost"]
    kinds = {e["pipeline_id"]: e["kind"] for e in report.reaped}
    assert kinds == {"addr-only": "leftover", "ghost": "leftover"}
    assert (layout.addresses.folder / "127.9.9.8").exists()
    assert [e["pipeline_id"] for e in report.kept] == ["fresh"]


def test_an_empty_reservation_is_reaped_only_after_a_grace(tmp_path: Path,
                                                          clean_env: None) -> None:
    import os

    from envkit.providers.local import Layout

    settings = _home(tmp_path)
    folder = Layout.for_settings(settings).addresses.folder
    folder.mkdir(parents=True)
    old, new = folder / "127.1.1.1", folder / "127.1.1.2"
    old.write_text("")
    new.write_text("")
    stamp = (NOW - timedelta(minutes=5)).timestamp()
    os.utime(old, (stamp, stamp))
    os.utime(new, (NOW.timestamp(), NOW.timestamp()))
    reaper, _fake = _reaper(settings)
    report = reaper.run()
    assert [e["resource"] for e in report.reaped] == ["127.1.1.1"]
    assert not old.exists() and new.exists()


def test_reap_aws_merges_the_cloud_sweep(tmp_path: Path, clean_env: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass, field

    from envkit import cloudsweep

    calls: list[dict[str, object]] = []

    @dataclass
    class FakeReport:
        reaped: list[dict[str, object]] = field(default_factory=list)
        kept: list[dict[str, object]] = field(default_factory=list)
        errors: list[dict[str, object]] = field(default_factory=list)

    def fake_sweep(**kwargs: object) -> FakeReport:
        calls.append(kwargs)
        return FakeReport(reaped=[{"pipeline_id": "cloud-1", "arns": ["arn:aws:ec2:x"]}],
                          kept=[{"pipeline_id": "cloud-2", "arns": []}])

    monkeypatch.setattr(cloudsweep, "sweep", fake_sweep)
    settings = Settings.resolve({"home": tmp_path / "home", "data_dir": tmp_path / "data",
                                 "aws_region": "eu-west-1"})
    report = Reaper(settings, provider="aws", dry_run=True, now=NOW,
                    older_than=timedelta(hours=1)).run()
    assert calls == [{"region": "eu-west-1", "dry_run": True, "now": NOW,
                      "older_than": timedelta(hours=1)}]
    assert [e["pipeline_id"] for e in report.reaped] == ["cloud-1"]
    assert [e["pipeline_id"] for e in report.kept] == ["cloud-2"]
