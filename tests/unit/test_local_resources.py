"""The local provider's typed resources: records as envkit has always written them load and
round-trip; absent keys and hand-edited values of the wrong type read as unset, never a crash."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from envkit.providers.local.osuser import RunAs
from envkit.providers.local.resources import (
    LocalResources,
    SeedTemplate,
    ServiceEntry,
)
from envkit.providers.local.services import probes_for, stopped_services
from envkit.seeding.pipeline import TEMPLATE_RESOURCE
from envkit.spec_model import HealthCheck
from envkit.state import Record

NOW = "2030-01-01T00:00:00+00:00"

# A record as the local provider wrote it before resources were typed: server, one service,
# a seeded template, and the lifecycle's own "runs" entry (not the provider's).
STORED: dict[str, Any] = {
    "pipeline_id": "pr-7",
    "provider": "local",
    "status": "ready",
    "created_at": NOW,
    "expires_at": NOW,
    "owner": "ci",
    "resources": {
        "data_root": "/dev/shm/envkit-0",
        "env_dir": "/dev/shm/envkit-0/h-abc/pr-7",
        "host": "127.3.4.5",
        "dedicated_address": True,
        "run_as": "envkit",
        "bindir": "/usr/lib/postgresql/16/bin",
        "seed_template": {
            "dataset": "default",
            "name": "ds0123456789ab",
            "stats": "/dev/shm/envkit-0/templates/k-ds0123456789ab.seed.json",
        },
        "spare": True,
        "port": 5432,
        "pid": 4242,
        "services": {
            "api": {
                "host": "127.3.4.5",
                "port": 8080,
                "log": "/dev/shm/envkit-0/h-abc/pr-7/logs/api.log",
                "workdir": "/dev/shm/envkit-0/h-abc/pr-7/services/api",
                "health": {"kind": "http", "path": "/health", "command": []},
                "grace": 5.0,
                "run_as": {"name": "ci", "uid": 1000, "gid": 1000, "switch": False},
                "pid": 4300,
                "pgid": 4300,
            },
            "worker": {
                "host": "127.3.4.5",
                "port": None,
                "log": "/dev/shm/envkit-0/h-abc/pr-7/logs/worker.log",
                "workdir": "/dev/shm/envkit-0/h-abc/pr-7/services/worker",
                "health": {"kind": "command", "path": "/health", "command": ["true"]},
                "grace": 2.5,
                "run_as": {"name": "envkit", "uid": 999, "gid": 999, "switch": True},
                "pid": None,
            },
        },
        "runs": {"m-1": {"pid": 10, "start": 20}},
    },
}


def _record(resources: Any) -> Record:
    data = copy.deepcopy(STORED)
    data["resources"] = resources
    return Record.from_json(data)


def test_a_record_written_before_typing_loads_into_the_dataclass() -> None:
    resources = LocalResources.load(Record.from_json(copy.deepcopy(STORED)))
    assert resources.host == "127.3.4.5"
    assert resources.dedicated_address is True
    assert resources.bindir == Path("/usr/lib/postgresql/16/bin")
    assert (resources.port, resources.pid, resources.spare) == (5432, 4242, True)
    assert resources.run_as == "envkit"
    assert resources.seed_template == SeedTemplate(
        "default", "ds0123456789ab", Path("/dev/shm/envkit-0/templates/k-ds0123456789ab.seed.json")
    )
    api = resources.services["api"]
    assert api.health == HealthCheck("http", "/health", ())
    assert api.run_as == RunAs("ci", 1000, 1000, switch=False)
    assert (api.pid, api.pgid, api.port, api.grace) == (4300, 4300, 8080, 5.0)
    worker = resources.services["worker"]
    assert worker.pid is None and worker.port is None and worker.pgid is None
    assert worker.health == HealthCheck("command", "/health", ("true",))


def test_load_then_save_gives_back_the_stored_json_unchanged() -> None:
    record = Record.from_json(copy.deepcopy(STORED))
    LocalResources.load(record).save(record)
    assert json.loads(json.dumps(record.to_json()))["resources"] == STORED["resources"]


def test_save_writes_the_stored_keys_and_leaves_the_lifecycle_s_alone() -> None:
    record = _record({"runs": {"m-1": {"pid": 1, "start": 2}}})
    resources = LocalResources.load(record)
    resources.host, resources.port, resources.bindir = "127.0.0.9", 5433, Path("/opt/pg/bin")
    resources.services["api"] = ServiceEntry(host="127.0.0.9", port=8000, grace=3.0)
    resources.save(record)
    assert record.resources == {
        "runs": {"m-1": {"pid": 1, "start": 2}},
        "host": "127.0.0.9",
        "port": 5433,
        "bindir": "/opt/pg/bin",
        "services": {"api": {"host": "127.0.0.9", "port": 8000, "grace": 3.0, "pid": None}},
    }


def test_nothing_set_writes_nothing() -> None:
    # The lifecycle reads empty resources as "nothing was created".
    record = _record({})
    LocalResources.load(record).save(record)
    assert record.resources == {}


def test_a_record_saved_mid_provisioning_loads_with_the_rest_unset() -> None:
    # `up` killed after the address was recorded, before the server started.
    partial = {k: STORED["resources"][k] for k in ("data_root", "env_dir", "host", "bindir")}
    resources = LocalResources.load(_record(partial))
    assert resources.host == "127.3.4.5"
    assert resources.port is None and resources.pid is None and resources.spare is None
    assert resources.services == {} and resources.seed_template is None
    assert not resources.has_server()


@pytest.mark.parametrize(
    "hand_edited",
    [
        None,
        [],
        "garbage",
        {"host": 7, "port": "not a port", "pid": [1], "bindir": 3, "dedicated_address": "yes"},
        {"spare": 1, "data_root": "", "run_as": {"name": "x"}, "seed_template": "ds1"},
        {"seed_template": {"dataset": "default", "name": 3, "stats": "/x"}},
        {"services": "api"},
        {"services": {"api": "not an entry", "db": None, 3: {}}},
        {"services": [{"pid": 1}]},
    ],
)
def test_values_of_the_wrong_type_read_as_unset(hand_edited: Any) -> None:
    record = _record(hand_edited if isinstance(hand_edited, dict) else {})
    if not isinstance(hand_edited, dict):
        record.resources = hand_edited  # what a hand edit can leave after from_json
    resources = LocalResources.load(record)
    assert resources.host is None and resources.port is None and resources.pid is None
    assert resources.bindir is None and resources.dedicated_address is None
    assert resources.spare is None and resources.data_root is None and resources.run_as is None
    assert resources.services == {} and resources.seed_template is None


def test_a_service_entry_with_unreadable_fields_keeps_what_it_can() -> None:
    entry = ServiceEntry.from_json(
        {
            "host": None,
            "port": "8080",
            "log": 5,
            "workdir": "/w",
            "health": {"kind": "http", "command": "curl"},
            "grace": "slow",
            "run_as": {"name": "ci", "uid": "x", "gid": 1, "switch": False},
            "pid": True,
            "pgid": "12",
        }
    )
    assert entry == ServiceEntry(
        host="",
        port=8080,
        log=None,
        workdir=Path("/w"),
        health=None,
        grace=5.0,
        run_as=None,
        pid=None,
        pgid=12,
    )


def test_digits_in_a_string_still_read_as_a_number() -> None:
    # The provider used int() on the stored port and pids, which accepted them.
    resources = LocalResources.load(_record({"port": "5433", "pid": "77"}))
    assert (resources.port, resources.pid) == (5433, 77)


def test_service_entries_keep_keys_this_version_does_not_know() -> None:
    stored = copy.deepcopy(STORED["resources"])
    stored["services"]["api"]["restart_policy"] = "always"  # as a newer envkit might write
    record = _record(stored)
    resources = LocalResources.load(record)
    resources.services["api"].pid = 5000
    resources.save(record)
    assert record.resources["services"]["api"]["restart_policy"] == "always"
    assert record.resources["services"]["api"]["pid"] == 5000


def test_the_seed_template_is_stored_where_seeding_reads_it() -> None:
    record = _record({})
    resources = LocalResources.load(record)
    resources.seed_template = SeedTemplate("default", "ds1", Path("/t/ds1.seed.json"))
    resources.save(record)
    used = record.resources[TEMPLATE_RESOURCE]
    assert used == {"dataset": "default", "name": "ds1", "stats": "/t/ds1.seed.json"}


def test_services_without_a_pid_or_their_health_check_do_not_crash_the_probes() -> None:
    resources = LocalResources.from_json(
        {
            "services": {
                "starting": {"host": "127.0.0.1", "pid": None},  # recorded, never spawned
                "edited": {"host": "127.0.0.1", "pid": os.getpid(), "health": "?"},
            }
        }
    )
    probes = probes_for(resources, {})
    assert [p.name for p in probes] == ["edited"]
    assert stopped_services(resources) == ["starting"]
