"""Reap beyond one home: environments of deleted homes, stale templates, unfinished reservations.

Every test runs on a private data root (RAM-backed when possible), so neither the environments it
starts nor the reaps it runs can see, let alone touch, anything else on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from conftest import tear_down_home

from envkit import lifecycle
from envkit.locking import is_locked
from envkit.plan import Plan
from envkit.processes import wait_gone
from envkit.providers.local.layout import Layout
from envkit.providers.local.leftovers import marked_processes
from envkit.providers.local.pgserver import postmaster_pid
from envkit.providers.local.spares import spares_dir
from envkit.reaper import reap
from envkit.reaping import ReapReport
from envkit.settings import Settings
from envkit.state import Status, utcnow

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(envkit_home: Path, private_data: Path) -> Settings:
    """This test's own home on the private data root, named explicitly: never resolved before
    ENVKIT_DATA_DIR is set (which would point it at the machine's real, shared data root)."""
    resolved = Settings.resolve({"home": envkit_home, "data_dir": private_data})
    assert Layout.for_settings(resolved).data_root == private_data
    return resolved


def another(home: Path, private_data: Path) -> Settings:
    """Settings of another home on the same private data root."""
    return Settings.resolve({"home": home, "data_dir": private_data})


@pytest.fixture
def other_homes(tmp_path: Path, private_data: Path) -> Iterator[list[Path]]:
    """Append homes here: each is torn down afterwards (its environments destroyed, its
    processes killed), whether the test deleted it or not, and whether it passed or not."""
    homes: list[Path] = []
    yield homes
    for home in homes:
        tear_down_home(home)


def envkit(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI, as a user or a cron job runs it (ENVKIT_HOME and ENVKIT_DATA_DIR inherited)."""
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def up(settings: Settings, pipeline_id: str) -> lifecycle.Record:
    """An unseeded environment: one template per data root keeps these checks exact."""
    return lifecycle.up(Plan.build(pipeline_id, settings, seed=False))


def connects(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_reap_from_another_home_removes_the_environments_of_a_deleted_home(
    settings: Settings, tmp_path: Path, private_data: Path, other_homes: list[Path]
) -> None:
    gone_home, kept_home = tmp_path / "home-a", tmp_path / "home-c"
    other_homes += [gone_home, kept_home]
    gone, kept = another(gone_home, private_data), another(kept_home, private_data)
    doomed = up(gone, "orphan-1")
    mine = up(settings, "live-b")  # this home's own, unexpired
    theirs = up(kept, "live-c")  # another home that still exists
    layout = Layout.for_settings(gone)
    assert (layout.envs_root / ".home").read_text() == str(gone_home.resolve())
    pid = postmaster_pid(layout.pgdata("orphan-1"))
    assert pid is not None
    alive = {
        r.pipeline_id: postmaster_pid(Layout.for_settings(s).pgdata(r.pipeline_id))
        for s, r in ((settings, mine), (kept, theirs))
    }
    assert None not in alive.values()

    shutil.rmtree(gone_home)  # a CI workspace wiped with its environment still running

    dry = envkit("reap", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    would = [e for e in json.loads(dry.stdout)["reaped"] if e["kind"] == "orphaned-home"]
    assert sorted(str(e["pipeline_id"]) for e in would) == ["None", "orphan-1"]
    assert postmaster_pid(layout.pgdata("orphan-1")) == pid  # a dry run changes nothing

    result = envkit("reap", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["errors"] == []
    reaped = {(e["kind"], e["pipeline_id"]): e for e in data["reaped"]}
    assert set(reaped) == {("orphaned-home", "orphan-1"), ("orphaned-home", None)}
    entry = reaped[("orphaned-home", "orphan-1")]
    assert entry["home"] == str(gone_home.resolve())
    assert entry["resource"] == str(layout.env_dir("orphan-1"))
    assert "no longer exists" in entry["reason"] and "process" in entry["reason"]
    assert reaped[("orphaned-home", None)]["resource"] == str(layout.envs_root)
    assert [(e["kind"], e["pipeline_id"]) for e in data["kept"]] == [("environment", "live-b")]

    # Everything of the deleted home is gone: server, directory, sockets, address.
    assert wait_gone(pid, 5.0)
    assert marked_processes(layout.envs_root) == {}
    assert not layout.envs_root.exists()
    assert not layout.socket_dir("orphan-1").exists()
    assert layout.addresses.held_by(layout.owner_key("orphan-1")) == []
    assert not connects(doomed.outputs["DATABASE_URL"])
    # The live homes' environments are untouched and still serve.
    for s, r in ((settings, mine), (kept, theirs)):
        assert postmaster_pid(Layout.for_settings(s).pgdata(r.pipeline_id)) == alive[r.pipeline_id]
        assert connects(r.outputs["DATABASE_URL"])
        record = lifecycle.status(Plan.build(r.pipeline_id, s))
        assert record is not None and record.status is Status.READY


def test_a_home_directory_without_a_marker_is_never_reaped_while_it_holds_anything(
    settings: Settings, tmp_path: Path, private_data: Path, other_homes: list[Path]
) -> None:
    old_home = tmp_path / "home-old"
    other_homes.append(old_home)
    old = another(old_home, private_data)
    record = up(old, "pre-marker")
    layout = Layout.for_settings(old)
    (layout.envs_root / ".home").unlink()  # as an envkit from before markers left it
    shutil.rmtree(old_home)

    report = reap(settings)
    kept = [e for e in report.kept if e["kind"] == "home-directory"]
    assert [e["resource"] for e in kept] == [str(layout.envs_root)]
    assert "no .home file" in kept[0]["reason"]
    assert connects(record.outputs["DATABASE_URL"])  # nothing proves it orphaned: left alone
    assert report.reaped == [] and report.errors == []


def test_a_home_seen_only_by_its_servers_mount_namespace_is_not_orphaned(
    settings: Settings, tmp_path: Path, private_data: Path
) -> None:
    """A server started in another mount namespace (a container, a service with a private
    /tmp) may have a home this reaper cannot see: it looks through the server's /proc root."""
    from envkit.naming import short_hash

    base = tmp_path / "ns"  # in the other namespace a tmpfs is mounted here, holding the home
    base.mkdir()
    home = base / "home"
    h_dir = private_data / f"h-{short_hash(str(home), 10)}"
    (h_dir / "ns-1").mkdir(parents=True)
    (h_dir / ".home").write_text(str(home))
    script = 'mount -t tmpfs envkit-test "$1" && mkdir "$1/home" && sleep 600'
    # The shell's arguments name the pipeline's directory: envkit's marker on its processes.
    try:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(base), str(h_dir / "ns-1" / "pgdata")],
            start_new_session=True,
        )
    except FileNotFoundError:
        pytest.skip("unshare(1) is not installed")
    try:
        deadline = time.monotonic() + 10
        while not os.path.isdir(f"/proc/{proc.pid}/root{home}"):
            if proc.poll() is not None:
                pytest.skip("cannot make a mount namespace here (needs CAP_SYS_ADMIN)")
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not home.exists()  # this process cannot see it
        assert marked_processes(h_dir) == {"ns-1": [proc.pid]}

        report = reap(settings)
        assert not [e for e in report.reaped + report.kept if e.get("resource") == str(h_dir)]
        assert proc.poll() is None and (h_dir / "ns-1").is_dir()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # Its server gone, nothing sees the home any more: now it is orphaned.
    report = reap(settings)
    assert [e["resource"] for e in report.reaped if e["pipeline_id"] is None] == [str(h_dir)]
    assert not h_dir.exists()


def _wait_for_refills(templates: Path) -> None:
    deadline = time.monotonic() + 60
    while any(is_locked(s / ".refill.lock") for s in templates.glob("*.spares")):
        assert time.monotonic() < deadline, "a spare refill did not finish within 60 s"
        time.sleep(0.05)


def test_templates_unused_for_their_ttl_are_pruned_and_rebuilt_when_needed(
    settings: Settings, private_data: Path
) -> None:
    running = up(settings, "tpl-running")
    lifecycle.down(Plan.build(up(settings, "tpl-gone").pipeline_id, settings))
    templates = Layout.for_settings(settings).templates
    _wait_for_refills(templates)
    (template,) = [p for p in templates.iterdir() if p.is_dir() and p.name.startswith("pg-")
                   and not p.name.endswith(".spares")]
    assert any(spares_dir(template).iterdir())

    def days_later(days: int, **options: bool) -> ReapReport:
        # The running environment has expired by then too: --older-than keeps the record reap
        # off it, so only the template pruning (which ignores --older-than) acts.
        return reap(settings, now=utcnow() + timedelta(days=days), older_than=timedelta(days=30),
                    **options)

    within = days_later(6)
    assert [e for e in within.reaped + within.kept if e["kind"] == "template"] == []
    assert template.is_dir()

    dry = days_later(8, dry_run=True)
    assert [e["resource"] for e in dry.reaped if e["kind"] == "template"] == [str(template)]
    assert template.is_dir()

    report = days_later(8)
    pruned = [e for e in report.reaped if e["kind"] == "template"]
    assert [e["resource"] for e in pruned] == [str(template)]
    assert pruned[0]["last_used"] and "template TTL" in pruned[0]["reason"]
    assert report.errors == []
    assert not [p for p in templates.iterdir() if p.name.startswith((template.name, ".prune-"))]
    # An environment copied from it runs on: it owns its copy.
    assert connects(running.outputs["DATABASE_URL"])
    record = lifecycle.status(Plan.build("tpl-running", settings))
    assert record is not None and record.status is Status.READY
    # The next up builds the template again.
    again = up(settings, "tpl-again")
    assert connects(again.outputs["DATABASE_URL"])
    assert (template / "PG_VERSION").is_file()


_KILLED_MID_RESERVATION = """
import os, signal, sys
from pathlib import Path
from envkit.providers.local.loopback import AddressBook

def killed(src, dst):  # SIGKILL between writing the owner and making the reservation
    os.kill(os.getpid(), signal.SIGKILL)

os.link = killed
AddressBook(Path(sys.argv[1])).reserve("home/killed", "killed")
"""


def test_a_process_killed_while_reserving_an_address_leaves_no_reservation(
    settings: Settings, private_data: Path
) -> None:
    book = Layout.for_settings(settings).addresses
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_RESERVATION, str(book.folder)],
                          check=False, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert book.owners() == {}  # no reservation, not even an empty one
    (tmp,) = book.unfinished()
    assert tmp.read_text() == "home/killed"
    assert book.reserve("home/next", "killed").dedicated  # the address is free to take

    report = reap(settings, now=utcnow() + timedelta(minutes=1))
    assert [(e["kind"], e["resource"]) for e in report.reaped] == [("address", tmp.name)]
    assert book.unfinished() == {}
    assert list(book.owners().values()) == ["home/next"]
