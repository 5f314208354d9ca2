"""The library API (envkit.environment / envkit.attach) against real local environments."""

from __future__ import annotations

from pathlib import Path

import pytest

import envkit
from envkit import lifecycle
from envkit.errors import ConfigError, PrerequisiteError
from envkit.plan import Plan
from envkit.settings import Settings
from envkit.state import Status

pytestmark = pytest.mark.integration


def status(settings: Settings, pipeline_id: str) -> Status:
    record = lifecycle.status(Plan.build(pipeline_id, settings))
    return Status.ABSENT if record is None else record.status


def test_the_block_gets_a_ready_environment_destroyed_on_exit(settings: Settings) -> None:
    with envkit.environment("api-ok", settings=settings) as env:
        assert env.status is Status.READY
        assert env.outputs["ENVKIT_PIPELINE_ID"] == "api-ok"
        with env.connect() as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert env.wait(timeout=10).ok
    assert status(settings, "api-ok") is Status.ABSENT


def test_a_raising_block_preserves_the_environment(settings: Settings) -> None:
    with pytest.raises(RuntimeError, match="boom"), envkit.environment(
        "api-fail", settings=settings
    ):
        raise RuntimeError("boom")
    assert status(settings, "api-fail") is Status.PRESERVED


def test_on_failure_destroy(settings: Settings) -> None:
    with pytest.raises(RuntimeError), envkit.environment(
        "api-destroy", settings=settings, on_failure="destroy"
    ):
        raise RuntimeError("boom")
    assert status(settings, "api-destroy") is Status.ABSENT


def test_down_inside_the_block_is_respected(settings: Settings) -> None:
    with envkit.environment("api-down", settings=settings) as env:
        env.down(preserve=True, ttl="1h")
        assert env.status is Status.PRESERVED
    assert status(settings, "api-down") is Status.PRESERVED


def test_a_failed_enter_leaves_nothing_running(settings: Settings, tmp_path: Path) -> None:
    broken = settings.with_(pg_bindir=tmp_path / "no-postgres-here")
    with pytest.raises(PrerequisiteError), envkit.environment("api-broken", settings=broken):
        pytest.fail("the block must not run")
    assert status(settings, "api-broken") in (Status.ABSENT, Status.FAILED)


def test_attach_to_an_environment_that_is_up(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="envkit up api-attach"):
        envkit.attach("api-attach", settings=settings)
    record = lifecycle.up(Plan.build("api-attach", settings))
    env = envkit.attach("api-attach", settings=settings)
    assert env.outputs == record.outputs
    assert isinstance(env, envkit.Environment)
    env.down()
    assert env.status is Status.ABSENT
