"""Reaper decisions on fake records, and a reap over a home of fake records (no processes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from envkit.locking import FileLock
from envkit.naming import iso_utc
from envkit.providers.local.provider import LocalProvider
from envkit.reaper import Reaper
from envkit.reaping import decide, decide_orphan
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


class FakeProvider(LocalProvider):
    """Records what would be destroyed; creates nothing (its leftovers are the real ones)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.destroyed: list[str] = []

    def destroy(self, pipeline_id: str, record: Record | None) -> None:
        self.destroyed.append(pipeline_id)


def _reaper(settings: Settings, **kwargs: object) -> tuple[Reaper, FakeProvider]:
    reaper = Reaper(settings, now=NOW, **kwargs)  # type: ignore[arg-type]
    fake = FakeProvider(settings)
    reaper._providers["local"] = fake
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
    from envkit.providers.local.layout import Layout

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

    from envkit.providers.local.layout import Layout

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

    from envkit.providers.aws import sweep as cloudsweep

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


# -- other homes: h-<key> directories whose ENVKIT_HOME was deleted ------------------------------

def _stamp(path: Path, when: datetime) -> None:
    import os

    os.utime(path, (when.timestamp(), when.timestamp()))


def _other_home(settings: Settings, home: Path, pipeline_ids: tuple[str, ...] = ("a",),
                *, marker: str | None = None) -> Path:
    """An h-<key> directory of ``home`` as the local provider leaves it (no processes): env
    directories, a socket directory and an address reservation per pipeline, the .home file."""
    from envkit.naming import short_hash
    from envkit.providers.local.layout import Layout

    root = Layout.for_settings(settings).data_root
    other = Layout(root, short_hash(str(home), 10))
    other.envs_root.mkdir(parents=True)
    (other.envs_root / ".home").write_text(str(home) if marker is None else marker)
    for i, pipeline_id in enumerate(pipeline_ids):
        other.pgdata(pipeline_id).mkdir(parents=True)
        other.socket_dir(pipeline_id).mkdir(parents=True)
        other.addresses.folder.mkdir(parents=True, exist_ok=True)
        (other.addresses.folder / f"127.7.7.{i + 1}").write_text(other.owner_key(pipeline_id))
    return other.envs_root


def test_the_directory_of_a_deleted_home_is_reaped(tmp_path: Path, clean_env: None) -> None:
    from envkit.providers.local.layout import Layout

    settings = _home(tmp_path)
    gone = _other_home(settings, tmp_path / "deleted-home", ("a", "b"))
    live_home = tmp_path / "live-home"
    live_home.mkdir()
    live = _other_home(settings, live_home, ("c",))
    book = Layout.for_settings(settings).addresses
    reaper, fake = _reaper(settings)
    report = reaper.run()
    assert fake.destroyed == []  # nothing of this home
    assert not gone.exists()
    entries = [e for e in report.reaped if e["kind"] == "orphaned-home"]
    assert sorted(str(e["pipeline_id"]) for e in entries) == ["None", "a", "b"]
    assert all(e["home"] == str(tmp_path / "deleted-home") for e in entries)
    assert all("no longer exists" in e["reason"] for e in entries)
    whole = next(e for e in entries if e["pipeline_id"] is None)
    assert whole["resource"] == str(gone)
    # a live home is never touched: its directory, reservation and socket directory stay
    assert (live / "c" / "pgdata").is_dir()
    assert sorted(book.owners().values()) == [f"{live.name[2:]}/c"]
    assert not any(e.get("resource") == str(live) for e in report.reaped + report.kept)
    assert report.errors == []
    json.dumps(report.as_json())


def test_sockets_of_a_deleted_home_are_removed(tmp_path: Path, clean_env: None) -> None:
    from envkit.naming import short_hash
    from envkit.providers.local.layout import Layout

    settings = _home(tmp_path)
    home = tmp_path / "deleted-home"
    _other_home(settings, home, ("a",))
    other = Layout(Layout.for_settings(settings).data_root, short_hash(str(home), 10))
    assert other.socket_dir("a").is_dir()
    _reaper(settings)[0].run()
    assert not other.socket_dir("a").exists()


def test_a_dry_run_only_reports_a_deleted_home(tmp_path: Path, clean_env: None) -> None:
    settings = _home(tmp_path)
    gone = _other_home(settings, tmp_path / "deleted-home", ("a",))
    report = _reaper(settings, dry_run=True)[0].run()
    assert sorted(str(e["pipeline_id"]) for e in report.reaped) == ["None", "a"]
    assert (gone / "a" / "pgdata").is_dir() and (gone / ".home").is_file()


def test_a_deleted_home_respects_older_than(tmp_path: Path, clean_env: None) -> None:
    settings = _home(tmp_path)
    gone = _other_home(settings, tmp_path / "deleted-home", ("a",))
    for path in (gone, gone / "a", gone / ".home"):
        _stamp(path, NOW - timedelta(minutes=5))
    report = _reaper(settings, older_than=timedelta(hours=1))[0].run()
    assert [e["resource"] for e in report.kept] == [str(gone)]
    assert "older-than" in report.kept[0]["reason"]
    assert gone.exists()
    _reaper(settings, older_than=timedelta(minutes=1))[0].run()
    assert not gone.exists()


def test_a_marker_naming_another_home_is_not_trusted(tmp_path: Path, clean_env: None) -> None:
    settings = _home(tmp_path)
    forged = _other_home(settings, tmp_path / "deleted-home", ("a",),
                         marker=str(tmp_path / "some-other-deleted-home"))
    report = _reaper(settings)[0].run()
    assert forged.exists()
    assert [e["kind"] for e in report.kept] == ["orphaned-home"]
    assert "does not name" in report.kept[0]["reason"]


def test_an_unmarked_home_directory_is_removed_only_when_empty_and_old(
    tmp_path: Path, clean_env: None
) -> None:
    from envkit.providers.local.layout import Layout

    settings = _home(tmp_path)
    root = Layout.for_settings(settings).data_root
    old_empty, young_empty, full = (
        root / "h-0000000001", root / "h-0000000002", root / "h-0000000003")
    for folder in (old_empty, young_empty, full / "pr-9" / "pgdata"):
        folder.mkdir(parents=True)
    _stamp(old_empty, NOW - timedelta(hours=1))
    _stamp(young_empty, NOW - timedelta(minutes=1))
    for path in (full, full / "pr-9"):
        _stamp(path, NOW - timedelta(days=30))
    dry = _reaper(settings, dry_run=True)[0].run()
    assert [e["resource"] for e in dry.reaped] == [str(old_empty)] and old_empty.exists()
    report = _reaper(settings)[0].run()
    assert not old_empty.exists()
    assert young_empty.exists()
    assert (full / "pr-9" / "pgdata").is_dir()
    assert [(e["kind"], e["resource"]) for e in report.reaped] == [
        ("home-directory", str(old_empty))]
    assert [(e["kind"], e["resource"]) for e in report.kept] == [("home-directory", str(full))]
    assert "no .home file" in report.kept[0]["reason"]


def test_the_own_home_directory_is_left_to_the_record_reap(tmp_path: Path,
                                                          clean_env: None) -> None:
    from envkit.providers.local.layout import Layout

    settings = _home(tmp_path)  # its home does not even exist: still never "orphaned"
    layout = Layout.for_settings(settings)
    layout.envs_root.mkdir(parents=True)
    (layout.envs_root / ".home").write_text(str(settings.home.resolve()))
    report = _reaper(settings)[0].run()
    assert layout.envs_root.is_dir()
    assert report.reaped == report.kept == report.errors == []


# -- templates unused for template_ttl -----------------------------------------------------------

def _template(templates: Path, name: str, used: datetime, *, seeded: bool = False) -> list[Path]:
    """A template as TemplateCache and the spare refill leave it (fake data, no server)."""
    template, spares = templates / name, templates / f"{name}.spares"
    (template / "base").mkdir(parents=True)
    (template / "PG_VERSION").write_text("15\n")
    (spares / "spare-1-0").mkdir(parents=True)
    (spares / ".refill.lock").write_text("")
    lock = templates / f"{name}.lock"
    lock.write_text("")
    paths = [template, spares, lock]
    if seeded:
        paths.append(templates / f"{name}.seed.json")
        paths[-1].write_text("{}")
    for path in (*paths, spares / "spare-1-0"):
        _stamp(path, used)
    _stamp(lock, NOW)  # a lock file's time says nothing about use (reaps take it too)
    return paths


def test_templates_unused_for_the_ttl_are_removed(tmp_path: Path, clean_env: None) -> None:
    from envkit.providers.local.layout import Layout

    settings = _home(tmp_path)
    templates = Layout.for_settings(settings).templates
    old = _template(templates, "pg-0000000000000001", NOW - timedelta(days=8))
    old_seeded = _template(templates, "pg-0000000000000001-dsaaaa", NOW - timedelta(days=9),
                           seeded=True)
    fresh = _template(templates, "pg-0000000000000002", NOW - timedelta(days=6))
    # a base unused itself, but a template derived from it is in use: both stay
    base = _template(templates, "pg-0000000000000003", NOW - timedelta(days=30))
    derived = _template(templates, "pg-0000000000000003-dsbbbb", NOW - timedelta(hours=1),
                        seeded=True)
    half = templates / f".prune-pg-0000000000000004-{2**22 + 12345}"  # its reap was killed
    (half / "base").mkdir(parents=True)

    dry = _reaper(settings, dry_run=True)[0].run()
    assert all(p.exists() for p in (*old, *old_seeded, half))
    assert sorted(e["resource"] for e in dry.reaped) == sorted(
        [str(old[0]), str(old_seeded[0]), str(half)])

    report = _reaper(settings)[0].run()
    assert not any(p.exists() for p in (*old, *old_seeded, half))
    assert all(p.exists() for p in (*fresh, *base, *derived))
    reaped = {e["resource"]: e for e in report.reaped}
    assert set(reaped) == {str(old[0]), str(old_seeded[0]), str(half)}
    assert reaped[str(old[0])]["kind"] == "template"
    assert reaped[str(old[0])]["last_used"] == iso_utc(NOW - timedelta(days=8))
    assert "7d" in reaped[str(old[0])]["reason"]
    assert not list(templates.glob(".prune-*"))
    assert report.errors == []


def test_the_template_ttl_is_a_setting(tmp_path: Path, clean_env: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.providers.local.layout import Layout

    monkeypatch.setenv("ENVKIT_TEMPLATE_TTL", "1d")
    settings = _home(tmp_path)
    assert settings.template_ttl == timedelta(days=1)
    templates = Layout.for_settings(settings).templates
    two_days = _template(templates, "pg-0000000000000001", NOW - timedelta(days=2))
    _reaper(settings)[0].run()
    assert not any(p.exists() for p in two_days)


def test_a_busy_stale_template_is_kept(tmp_path: Path, clean_env: None) -> None:
    from envkit.providers.local.layout import Layout

    settings = _home(tmp_path)
    templates = Layout.for_settings(settings).templates
    building = _template(templates, "pg-0000000000000001", NOW - timedelta(days=8))
    refilling = _template(templates, "pg-0000000000000002", NOW - timedelta(days=8))
    build_lock = FileLock(building[2], what="build")
    refill_lock = FileLock(refilling[1] / ".refill.lock", what="refill")
    assert build_lock.try_acquire() and refill_lock.try_acquire()
    try:
        for dry_run in (True, False):
            report = _reaper(settings, dry_run=dry_run)[0].run()
            assert report.reaped == []
            assert sorted(e["resource"] for e in report.kept) == [str(building[0]),
                                                                  str(refilling[0])]
            assert all("busy" in e["reason"] for e in report.kept)
    finally:
        build_lock.release()
        refill_lock.release()
    assert all(p.exists() for p in (*building, *refilling))


def test_unfinished_reservations_are_swept_once_their_writer_is_gone(
    tmp_path: Path, clean_env: None
) -> None:
    import os

    from envkit.providers.local.layout import Layout

    settings = _home(tmp_path)
    folder = Layout.for_settings(settings).addresses.folder
    folder.mkdir(parents=True)
    dead = folder / f".tmp-{2**22 + 12345}-ab12"  # beyond pid_max: no such process
    mine = folder / f".tmp-{os.getpid()}-cd34"  # a writer still alive
    young = folder / f".tmp-{2**22 + 12346}-ef56"
    for path in (dead, mine, young):
        path.write_text("h/x")
    _stamp(dead, NOW - timedelta(minutes=5))
    _stamp(mine, NOW - timedelta(minutes=5))
    _stamp(young, NOW)
    report = _reaper(settings)[0].run()
    assert [e["resource"] for e in report.reaped] == [dead.name]
    assert not dead.exists() and mine.exists() and young.exists()
