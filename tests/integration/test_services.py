"""Services under test on the local provider: real processes, real PostgreSQL."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest

from envkit import lifecycle
from envkit.errors import EnvkitError, ProvisionError
from envkit.plan import Plan
from envkit.processes import process_age
from envkit.providers import get_provider
from envkit.providers.local.layout import Layout
from envkit.providers.local.service_processes import find_service_processes, stop_services
from envkit.settings import Settings
from envkit.state import Record

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "services"


def get(url: str) -> tuple[int, dict[str, str]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return int(response.status), json.loads(response.read())


def service_processes(settings: Settings, pipeline_id: str) -> list[int]:
    layout = Layout.for_settings(settings)
    return find_service_processes(layout.home_key, pipeline_id, layout.env_dir(pipeline_id))


def up(settings: Settings, pipeline_id: str) -> Record:
    return lifecycle.up(Plan.build(pipeline_id, settings))


def down(settings: Settings, pipeline_id: str) -> None:
    lifecycle.down(Plan.build(pipeline_id, settings))


def test_two_services_start_in_order_and_stop(settings: Settings) -> None:
    settings = settings.with_(spec_file=EXAMPLE / "envkit.toml")
    record = up(settings, "svc-order")
    assert record.status == "ready"
    services = record.resources["services"]
    assert list(services) == ["api", "worker"]
    api_pid, worker_pid = services["api"]["pid"], services["worker"]["pid"]
    # The worker started only after the api was healthy: it is younger, and never saw it down.
    assert (process_age(api_pid) or 0) > (process_age(worker_pid) or 0)
    worker_log = Path(services["worker"]["log"]).read_text()
    assert "not reachable" not in worker_log
    assert oct(os.stat(services["api"]["log"]).st_mode & 0o777) == "0o600"

    url = record.outputs["SERVICE_API_URL"]
    assert url == f"http://{record.resources['host']}:{services['api']['port']}"
    assert get(url + "/health") == (200, {"status": "ok"})
    # Every component (database + both services) reports healthy.
    report = lifecycle.wait_for(get_provider("local", settings), record, 10)
    assert {r.component for r in report.results} >= {"database", "service"}
    assert len(report.results) == 3 and report.ok
    # The database password never reaches the service's log.
    assert record.outputs["DATABASE_PASSWORD"] not in worker_log
    assert sorted(service_processes(settings, "svc-order")) == sorted([api_pid, worker_pid])

    down(settings, "svc-order")
    assert service_processes(settings, "svc-order") == []
    for pid in (api_pid, worker_pid):
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_service_that_exits_at_start_fails_up(settings: Settings, tmp_path: Path) -> None:
    spec = tmp_path / "envkit.toml"
    spec.write_text(
        "[services.api]\n"
        f'command = ["python3", "{EXAMPLE}/api.py"]\n'
        'env = { API_FAIL_AT_START = "1" }\n'
        "port = 8080\n"
        'health = { http = "/health" }\n'
        "[services.worker]\n"
        f'command = ["python3", "{EXAMPLE}/worker.py"]\n'
        'env = { API_URL = "{SERVICE_API_URL}" }\n'
        'depends_on = ["api"]\n'
    )
    settings = settings.with_(spec_file=spec)
    with pytest.raises(ProvisionError) as caught:
        up(settings, "svc-fail")
    message = str(caught.value)
    assert caught.value.exit_code == 1
    assert "'api' exited at start (exit code 3)" in message
    assert "refusing to start: API_FAIL_AT_START=1" in message  # its last log lines
    assert service_processes(settings, "svc-fail") == []
    record = lifecycle.status(Plan.build("svc-fail", settings))
    assert record is not None and record.status == "failed"
    assert not Layout.for_settings(settings).env_dir("svc-fail").exists()


def test_two_pipelines_same_ports_own_addresses(settings: Settings) -> None:
    settings = settings.with_(spec_file=EXAMPLE / "envkit.toml")
    records: dict[str, Record] = {}
    errors: list[BaseException] = []

    def run(pipeline_id: str) -> None:
        try:
            records[pipeline_id] = up(settings, pipeline_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in ("svc-one", "svc-two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    one, two = records["svc-one"], records["svc-two"]
    if not (one.resources["dedicated_address"] and two.resources["dedicated_address"]):
        pytest.skip("no dedicated loopback addresses here (free-port fallback)")
    assert one.resources["host"] != two.resources["host"]
    for record in (one, two):
        assert record.resources["services"]["api"]["port"] == 8080
        assert record.outputs["SERVICE_API_URL"].endswith(":8080")
        assert get(record.outputs["SERVICE_API_URL"] + "/hello") == (
            200, {"hello": record.pipeline_id}
        )
    down(settings, "svc-one")
    assert service_processes(settings, "svc-one") == []
    assert get(two.outputs["SERVICE_API_URL"] + "/health")[0] == 200  # the other one is intact
    down(settings, "svc-two")
    assert service_processes(settings, "svc-two") == []


def test_unrecorded_services_are_found_and_stopped(settings: Settings) -> None:
    settings = settings.with_(spec_file=EXAMPLE / "envkit.toml")
    record = up(settings, "svc-lost")
    pids = [e["pid"] for e in record.resources["services"].values()]
    layout = Layout.for_settings(settings)
    # As if 'up' died between spawning and saving: no record of the services at all.
    found = stop_services(layout.home_key, "svc-lost", layout.env_dir("svc-lost"), None,
                          grace=2.0)
    assert sorted(found) == sorted(pids)
    assert service_processes(settings, "svc-lost") == []
    # up again notices the services are gone and repairs the environment.
    again = up(settings, "svc-lost")
    assert get(again.outputs["SERVICE_API_URL"] + "/health")[0] == 200
    get_provider("local", settings).destroy("svc-lost", None)  # no record: still finds them
    assert service_processes(settings, "svc-lost") == []


def test_preserved_environment_keeps_services(settings: Settings) -> None:
    settings = settings.with_(spec_file=EXAMPLE / "envkit.toml")
    record = up(settings, "svc-keep")
    lifecycle.down(Plan.build("svc-keep", settings), preserve=True)
    assert get(record.outputs["SERVICE_API_URL"] + "/health")[0] == 200
    again = up(settings, "svc-keep")  # up of a preserved environment returns it as it is
    assert again.resources["services"]["api"]["pid"] == record.resources["services"]["api"]["pid"]
    down(settings, "svc-keep")
    assert service_processes(settings, "svc-keep") == []


def test_bad_spec_creates_nothing(settings: Settings, tmp_path: Path) -> None:
    spec = tmp_path / "envkit.toml"
    spec.write_text('[services.api]\nport = 8080\n')
    with pytest.raises(EnvkitError) as caught:
        up(settings.with_(spec_file=spec), "svc-bad")
    assert caught.value.exit_code == 2
    assert lifecycle.status(Plan.build("svc-bad", settings)) is None
