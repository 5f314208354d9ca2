"""Redis per pipeline on the local provider, against real ``redis-server`` processes (issue 19)."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from envkit import lifecycle
from envkit.kvwire import KvAddress, KvError, connect
from envkit.plan import Plan
from envkit.processes import cmdline, process_owner, processes_naming, wait_gone
from envkit.providers.local import cache_server
from envkit.providers.local.layout import Layout
from envkit.providers.local.leftovers import inventory
from envkit.providers.local.osuser import trusted_uids
from envkit.providers.local.pgserver import stop_server
from envkit.providers.local.provider import LocalProvider
from envkit.reaper import reap
from envkit.settings import Settings
from envkit.state import StateStore, Status

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_settings(private_data: Path, settings: Settings) -> Settings:
    return settings.with_(redis=True)


def up(settings: Settings, pipeline_id: str) -> lifecycle.Record:
    return lifecycle.up(Plan.build(pipeline_id, settings, seed=False))


def redis_servers(data_root: Path) -> list[int]:
    """redis-server processes of envkit's users naming a directory under ``data_root``."""
    owners = trusted_uids(None) | {os.geteuid()}
    return [pid for pid, _ in processes_naming(str(data_root) + os.sep, owners)
            if cmdline(pid) and cmdline(pid)[0].endswith("redis-server")]


def address(record: lifecycle.Record, **changes: object) -> KvAddress:
    found = KvAddress.from_url(record.outputs["REDIS_URL"])
    return KvAddress(**{**found.__dict__, **changes})  # type: ignore[arg-type]


def test_up_serves_redis_isolated_and_locked_down_and_down_leaves_nothing(
    redis_settings: Settings, private_data: Path
) -> None:
    one, two = up(redis_settings, "rd-one"), up(redis_settings, "rd-two")
    assert one.status is Status.READY
    assert one.outputs["REDIS_HOST"] == one.outputs["DATABASE_HOST"]  # the pipeline's address
    assert one.outputs["REDIS_PORT"] == "6379"
    with connect(address(one)) as session:
        assert session.command("PING") == b"PONG"
        assert session.command("SET", "k", "v") == b"OK"
        assert session.command("GET", "k") == b"v"
        assert session.command("ACL", "WHOAMI") == b"envkit"
        for denied in (["CONFIG", "GET", "requirepass"], ["DEBUG", "SLEEP", "0"],
                       ["MODULE", "LIST"], ["SHUTDOWN"], ["ACL", "LIST"], ["SAVE"],
                       ["BGSAVE"], ["REPLICAOF", "NO", "ONE"], ["MONITOR"]):
            with pytest.raises(KvError) as err:
                session.command(*denied)
            assert err.value.code in ("NOPERM", "ERR"), (denied, err.value)
    two_password = KvAddress.from_url(two.outputs["REDIS_URL"]).password
    with pytest.raises(KvError) as err, connect(address(one, password=two_password)):
        pass
    assert err.value.code == "WRONGPASS"  # another pipeline's password fails here
    with pytest.raises(KvError) as err, connect(address(one, password=None)) as session:
        session.command("GET", "k")
    assert err.value.code == "NOAUTH"  # without a password nothing runs
    with pytest.raises(KvError), connect(address(one, username=None)):  # the default user: off
        pass

    layout = Layout.for_settings(redis_settings)
    folder = cache_server.folder_of(layout.env_dir("rd-one"))
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    pid = cache_server.running_pid(folder)
    assert pid is not None and pid in redis_servers(private_data)
    if os.geteuid() == 0:  # as root, run as the unprivileged server user, like PostgreSQL
        assert process_owner(pid) not in (None, 0)
    assert "REDIS_URL" not in " ".join(cmdline(pid))
    assert not [p for p in folder.iterdir() if p.name != "redis.pid"]  # no RDB, no AOF

    for pipeline_id in ("rd-one", "rd-two"):
        assert lifecycle.down(Plan.build(pipeline_id, redis_settings)) is None
    assert redis_servers(private_data) == []
    assert not layout.env_dir("rd-one").exists()
    assert {k: v for k, v in inventory(redis_settings, ["rd-one", "rd-two"]).items() if v} == {}


def test_a_killed_redis_is_reported_and_started_again_on_up(
    redis_settings: Settings, private_data: Path
) -> None:
    record = up(redis_settings, "rd-kill")
    folder = cache_server.folder_of(Layout.for_settings(redis_settings).env_dir("rd-kill"))
    pid = cache_server.running_pid(folder)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid, 5.0)
    provider = LocalProvider(redis_settings)
    host = record.outputs["REDIS_HOST"]
    assert provider.gone(record) == [f"redis: its server ({host}:6379) is not running"]
    again = up(redis_settings, "rd-kill")
    assert again.outputs["REDIS_URL"] == record.outputs["REDIS_URL"]  # the same, started again
    with connect(address(again)) as session:
        assert session.command("PING") == b"PONG"
    assert provider.gone(again) == []


def test_reap_stops_the_redis_of_a_pipeline_with_no_record(
    redis_settings: Settings, private_data: Path
) -> None:
    up(redis_settings, "rd-lost")
    StateStore(redis_settings.home).delete("rd-lost")  # as if its up was killed before saving
    layout = Layout.for_settings(redis_settings)
    stop_server(layout.pgdata("rd-lost"), fast=False)  # only the redis-server runs now
    provider = LocalProvider(redis_settings)
    (found,) = provider.leftovers(set())
    assert found.pipeline_id == "rd-lost" and "process" in found.evidence  # by its mark
    report = reap(redis_settings)
    assert report.errors == []
    assert redis_servers(private_data) == []
    assert {k: v for k, v in inventory(redis_settings, ["rd-lost"]).items() if v} == {}


def test_persistence_keeps_an_aof_in_the_pipeline_directory_only(
    private_data: Path, settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "envkit.toml").write_text('[redis]\npersistence = true\nmaxmemory = "32mb"\n')
    record = up(settings, "rd-aof")
    with connect(address(record)) as session:
        assert session.command("SET", "kept", "1") == b"OK"
    folder = cache_server.folder_of(Layout.for_settings(settings).env_dir("rd-aof"))
    assert any(p.name.startswith("appendonly") for p in folder.iterdir())
    lifecycle.down(Plan.build("rd-aof", settings))
    assert not folder.exists() and redis_servers(private_data) == []


def test_a_seeded_up_warms_the_cache_from_the_dataset_rows(
    redis_settings: Settings, private_data: Path
) -> None:
    import psycopg

    record = lifecycle.up(Plan.build("rd-seed", redis_settings))  # the default dataset
    with psycopg.connect(record.outputs["DATABASE_URL"]) as conn:
        rows = conn.execute("select id, email from users order by id limit 100").fetchall()
    with connect(address(record)) as session:
        assert session.command("DBSIZE") == 100
        for user_id, email in (rows[0], rows[57], rows[99]):
            assert session.command("GET", f"user:{user_id}:email") == email.encode()
        assert session.command("EXISTS", f"user:{rows[99][0] + 1}:email") == 0
    assert record.timings.get("seed_redis_keys") == 100


def test_a_service_gets_redis_url_from_its_placeholder_and_uses_it(
    settings: Settings, private_data: Path, tmp_path: Path
) -> None:
    """A spec's service with ``{REDIS_URL}`` in its env reaches this pipeline's Redis: the
    service writes a key with envkit's client, the test reads it back."""
    import sys

    script = tmp_path / "writer.py"
    script.write_text(
        "import os, time\n"
        "from envkit.kvwire import KvAddress, connect\n"
        "with connect(KvAddress.from_url(os.environ['CACHE'])) as s:\n"
        "    s.command('SET', 'written-by', os.environ['SERVICE_NAME'])\n"
        "time.sleep(600)\n"
    )
    spec = tmp_path / "envkit.toml"
    spec.write_text(
        "[redis]\n"
        "[services.writer]\n"
        f"command = [{json.dumps(sys.executable)}, {json.dumps(str(script))}]\n"
        'env = { CACHE = "{REDIS_URL}", SERVICE_NAME = "{SERVICE_NAME}" }\n'
    )
    spec_settings = settings.with_(spec_file=spec)
    record = lifecycle.up(Plan.build("rd-svc", spec_settings, seed=False))
    try:
        deadline = time.monotonic() + 10
        with connect(address(record)) as session:
            while session.command("GET", "written-by") is None:
                assert time.monotonic() < deadline, "the service never wrote its key"
                time.sleep(0.05)
            assert session.command("GET", "written-by") == b"writer"
    finally:
        lifecycle.down(Plan.build("rd-svc", spec_settings))
    assert redis_servers(private_data) == []
