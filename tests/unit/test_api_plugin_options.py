"""Unit tests of the library handle and the plugin's option table (no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from envkit import api, plugin
from envkit.errors import ConfigError
from envkit.plan import Plan
from envkit.settings import Settings
from envkit.state import Record, StateStore, Status


class FakeConfig:
    """Just what plugin.value() reads from a pytest config."""

    def __init__(self, options: dict[str, Any], ini: dict[str, str]) -> None:
        self.options = options
        self.ini = ini

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def getini(self, name: str) -> str:
        return self.ini.get(name, "")


def value(name: str, options: dict[str, Any] | None = None, ini: dict[str, str] | None = None,
          env: dict[str, str] | None = None) -> Any:
    config = FakeConfig(options or {}, ini or {})
    return plugin.value(config, name, env=env or {})  # type: ignore[arg-type]


def test_every_option_has_a_flag_and_an_ini_key_derived_from_one_name() -> None:
    names = [option.name for option in plugin.OPTIONS]
    assert names == ["pipeline_id", "provider", "dataset", "keep", "preserve_on_failure", "xdist"]
    flags = {option.flag for option in plugin.OPTIONS}
    assert "--envkit-preserve-on-failure" in flags
    assert all(option.dest == "envkit_" + option.name for option in plugin.OPTIONS)


def test_precedence_is_command_line_then_env_then_ini_then_default() -> None:
    env = {"ENVKIT_PIPELINE_ID": "from-env"}
    ini = {"envkit_pipeline_id": "from-ini"}
    assert value("pipeline_id", {"envkit_pipeline_id": "from-cli"}, ini, env) == "from-cli"
    assert value("pipeline_id", {}, ini, env) == "from-env"
    assert value("pipeline_id", {}, ini, {}) == "from-ini"
    assert value("pipeline_id") is None


def test_booleans_default_and_an_explicit_false_wins() -> None:
    assert value("preserve_on_failure") is True
    assert value("keep") is False
    assert value("preserve_on_failure", {"envkit_preserve_on_failure": False}) is False
    assert value("keep", ini={"envkit_keep": "yes"}) is True
    with pytest.raises(pytest.UsageError, match="not a boolean"):
        value("keep", ini={"envkit_keep": "maybe"})


def test_choices_are_checked_in_ini_values() -> None:
    assert value("xdist") == "shared"
    assert value("xdist", ini={"envkit_xdist": "per-worker"}) == "per-worker"
    with pytest.raises(pytest.UsageError, match="shared, per-worker"):
        value("xdist", ini={"envkit_xdist": "both"})


def make_env(tmp_path: Path) -> api.Environment:
    settings = Settings.resolve({"home": tmp_path}, env={})
    record = Record(
        pipeline_id="pr-7", provider="local", status=Status.READY,
        created_at="2026-01-01T00:00:00Z", expires_at="2026-01-01T04:00:00Z", owner="me",
        outputs={"DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:5432/d",
                 "DATABASE_PASSWORD": "hunter2"},
    )
    return api.Environment(Plan(settings, "pr-7", StateStore(tmp_path)), record)


def test_the_handle_shows_no_secret_and_copies_its_outputs(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert "hunter2" not in repr(env)
    env.outputs["DATABASE_URL"] = "changed"
    assert env.outputs["DATABASE_PASSWORD"] == "hunter2"
    assert env.status is Status.ABSENT  # nothing stored under this home


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    settings = Settings.resolve({"home": tmp_path}, env={})
    with pytest.raises(ConfigError, match="on_failure"):
        api.environment("pr-7", on_failure="keep", settings=settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Unknown provider"):
        api.environment("pr-7", provider="gcp", settings=settings)
    with pytest.raises(ConfigError, match="nothing to attach to"):
        api.attach("pr-7", settings=settings)
