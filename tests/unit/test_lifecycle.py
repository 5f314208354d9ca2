"""The lifecycle against an in-memory provider: the seeding rule, repair, failure cleanup,
preserve, restart on kept data, attach. Milliseconds each: no processes, no servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from envkit import api, lifecycle
from envkit.errors import PrerequisiteError, ProvisionError
from envkit.health import HealthCheckFailedError
from envkit.plan import DEFAULT_DATASET, Plan
from envkit.providers import ProvisionRequest
from envkit.settings import Settings
from envkit.state import Record, StateStore, Status


class FakeProvider:
    """Keeps "running" environments in a set; counts what the lifecycle asked of it."""

    name = "local"

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.data: dict[str, str] = {}  # pipeline ID -> what was loaded into it
        self.calls: list[tuple[str, str]] = []
        self.fail_provision = False
        self.can_restart = True

    def preflight(self) -> None:
        return None

    def check_spec(self, spec: Any) -> None:
        return None

    def provision(self, request: ProvisionRequest) -> dict[str, str]:
        pipeline_id = request.pipeline_id
        self.calls.append(("provision", pipeline_id))
        request.record.resources["made"] = True
        request.save()
        if self.fail_provision:
            raise ProvisionError("the fake server would not start")
        self.running.add(pipeline_id)
        self.data[pipeline_id] = "empty"
        return {"DATABASE_URL": f"postgresql://u:secret@127.0.0.1:5432/{pipeline_id}"}

    def probes(self, record: Record) -> list[Any]:
        return []

    def gone(self, record: Record) -> list[str]:
        return [] if record.pipeline_id in self.running else ["database: not running"]

    def restart(self, record: Record) -> bool:
        self.calls.append(("restart", record.pipeline_id))
        if self.can_restart and record.pipeline_id in self.data:
            self.running.add(record.pipeline_id)
            return True
        return False

    def logs(self, record: Record, component: str | None = None) -> dict[str, Path]:
        return {}

    def destroy(self, pipeline_id: str, record: Record | None) -> None:
        self.calls.append(("destroy", pipeline_id))
        self.running.discard(pipeline_id)
        self.data.pop(pipeline_id, None)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeProvider]:
    provider = FakeProvider()
    monkeypatch.chdir(tmp_path)  # no envkit.toml: no spec
    for module in (lifecycle, api):
        monkeypatch.setattr(module, "get_provider", lambda name, settings: provider)

    def seed(ctx: Plan, record: Record, dataset: str) -> dict[str, float]:
        provider.data[record.pipeline_id] = dataset
        return {"rows": 1.0}

    monkeypatch.setattr(lifecycle, "seed_dataset", seed)
    yield provider


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", lock_timeout=1.0, health_timeout=1.0)


def plan(settings: Settings, pipeline_id: str = "p1", **kwargs: Any) -> Plan:
    return Plan(settings, pipeline_id, StateStore(settings.home), **kwargs)


# -- the seeding rule ---------------------------------------------------------------------------

def test_with_nothing_said_every_front_end_seeds_the_default_dataset(
        fake: FakeProvider, settings: Settings) -> None:
    assert plan(settings).dataset == DEFAULT_DATASET
    lifecycle.up(plan(settings, "cli"))
    with api.environment("lib", settings=settings):
        pass
    assert fake.data.get("cli") == DEFAULT_DATASET
    assert "lib" not in fake.data  # destroyed on exit; it was seeded:
    assert ("provision", "lib") in fake.calls


def test_named_dataset_then_spec_then_default_and_no_seed(
        fake: FakeProvider, settings: Settings, tmp_path: Path) -> None:
    assert plan(settings.with_(dataset="default")).dataset == "default"
    assert plan(settings, seed=False).dataset is None
    (tmp_path / "envkit.toml").write_text('[databases.app]\ndataset = "default"\n')
    assert plan(settings).dataset == "default"
    record = lifecycle.up(plan(settings, seed=False))
    assert record.dataset is None and fake.data["p1"] == "empty"


# -- repair, failure cleanup --------------------------------------------------------------------

def test_a_failed_provision_is_cleaned_up_and_recorded_failed(
        fake: FakeProvider, settings: Settings) -> None:
    fake.fail_provision = True
    with pytest.raises(ProvisionError):
        lifecycle.up(plan(settings))
    record = plan(settings).store.load("p1")
    assert record is not None and record.status is Status.FAILED
    assert fake.calls[-1] == ("destroy", "p1")


def test_a_half_done_environment_is_repaired(fake: FakeProvider, settings: Settings) -> None:
    lifecycle.up(plan(settings))
    store = plan(settings).store
    record = store.load("p1")
    assert record is not None
    record.status = Status.PROVISIONING
    record.owner_pid = 999_999_999  # its owner died mid-way
    store.save(record)
    outcome = lifecycle.ensure(plan(settings))
    assert outcome.record.status is Status.READY and outcome.created
    assert fake.calls[-2:] == [("destroy", "p1"), ("provision", "p1")]


def test_a_refusal_before_anything_was_created_leaves_no_record(
        fake: FakeProvider, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: ProvisionRequest) -> dict[str, str]:
        raise PrerequisiteError("no binaries")

    monkeypatch.setattr(fake, "provision", refuse)
    with pytest.raises(PrerequisiteError):
        lifecycle.up(plan(settings))
    assert plan(settings).store.load("p1") is None


# -- kept environments: restart on their data, never silently replaced --------------------------

def test_a_preserved_environment_whose_server_died_is_started_again_on_its_data(
        fake: FakeProvider, settings: Settings) -> None:
    lifecycle.up(plan(settings))
    lifecycle.down(plan(settings), preserve=True)
    fake.running.clear()  # kill -9 of its server
    described = lifecycle.describe(settings, lifecycle.list_environments(settings))[0]
    assert described["status"] == "preserved" and described["alive"] is False
    outcome = lifecycle.ensure(plan(settings))
    assert not outcome.created and outcome.record.status is Status.PRESERVED
    assert fake.data["p1"] == DEFAULT_DATASET  # its rows are still there
    assert fake.calls[-1] == ("restart", "p1")
    events = [e["event"] for e in plan(settings).store.events("p1")]
    assert events[-1] == "restarted"


def test_a_preserved_environment_that_cannot_restart_is_refused_unless_recreate(
        fake: FakeProvider, settings: Settings) -> None:
    lifecycle.up(plan(settings))
    lifecycle.down(plan(settings), preserve=True)
    fake.running.clear()
    fake.can_restart = False
    with pytest.raises(ProvisionError, match="--recreate"):
        lifecycle.up(plan(settings))
    assert fake.data["p1"] == DEFAULT_DATASET  # not replaced
    record = lifecycle.up(plan(settings), recreate=True)
    assert record.status is Status.READY and fake.data["p1"] == DEFAULT_DATASET


def test_a_ready_environment_whose_processes_are_gone_is_reported_and_recreated(
        fake: FakeProvider, settings: Settings) -> None:
    lifecycle.up(plan(settings))
    fake.running.clear()
    fake.can_restart = False
    described = lifecycle.describe(settings, lifecycle.list_environments(settings))[0]
    assert described["status"] == "failed" and "not running" in str(described["error"])
    with pytest.raises(HealthCheckFailedError, match="database"):
        lifecycle.recheck(plan(settings))
    outcome = lifecycle.ensure(plan(settings))
    assert outcome.record.status is Status.READY and not outcome.created


# -- attach ------------------------------------------------------------------------------------

def test_environment_never_destroys_one_it_attached_to_even_after_a_restart(
        fake: FakeProvider, settings: Settings) -> None:
    lifecycle.up(plan(settings, "ci"))
    fake.running.clear()
    with api.environment("ci", settings=settings) as env:
        assert env.outputs["DATABASE_URL"].endswith("/ci")
    assert "ci" in fake.running  # started again, and left running
    with pytest.raises(RuntimeError), api.environment("ci", settings=settings):
        raise RuntimeError("a test failed")
    record = plan(settings).store.load("ci")
    assert record is not None and record.status is Status.READY  # not even preserved


def test_environment_destroys_or_preserves_one_it_created(
        fake: FakeProvider, settings: Settings) -> None:
    with api.environment("mine", settings=settings):
        pass
    assert plan(settings).store.load("mine") is None
    with pytest.raises(RuntimeError), api.environment("kept", settings=settings):
        raise RuntimeError("a test failed")
    record = plan(settings).store.load("kept")
    assert record is not None and record.status is Status.PRESERVED


def test_a_preserved_environment_restarted_but_unhealthy_is_refused_then_recreated(
        fake: FakeProvider, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    lifecycle.up(plan(settings))
    lifecycle.down(plan(settings), preserve=True)
    fake.running.clear()

    healthy = lifecycle.wait_for

    def unhealthy(provider: Any, record: Record, *args: Any, **kwargs: Any) -> Any:
        if record.status is Status.PRESERVED:  # the kept data is broken; a new one serves
            raise ProvisionError("database: its data does not serve")
        return healthy(provider, record, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "wait_for", unhealthy)
    with pytest.raises(ProvisionError, match="--recreate") as refused:
        lifecycle.up(plan(settings))
    assert "does not serve" in refused.value.message
    # It was started again (it runs) but does not serve: --recreate replaces it.
    record = lifecycle.up(plan(settings), recreate=True)
    assert record.status is Status.READY
    assert fake.calls[-2:] == [("destroy", "p1"), ("provision", "p1")]
