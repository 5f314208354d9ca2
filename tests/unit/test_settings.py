from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from envkit.durations import format_duration, parse_duration
from envkit.errors import ConfigError
from envkit.settings import Settings


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("4h", 14400),
                                          ("2d", 172800), ("1h30m", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(timedelta(seconds=seconds))).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0s", "-5m", "5", "h", "4x", "soon", "1.5h", "400d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_precedence_explicit_env_project_default(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.envkit]\nttl = "2h"\nprovider = "local"\nseeds_dir = "myseeds"\n'
        '[tool.envkit.services.api]\ncommand = "x"\n'
    )
    env = {"HOME": str(tmp_path)}
    s = Settings.resolve(env=env, cwd=tmp_path)
    assert s.ttl == timedelta(hours=2)
    assert s.seeds_dir == tmp_path / "myseeds"
    assert s.home == tmp_path / ".local" / "state" / "envkit"
    s = Settings.resolve(env={**env, "ENVKIT_TTL": "3h"}, cwd=tmp_path)
    assert s.ttl == timedelta(hours=3)
    s = Settings.resolve({"ttl": "5h"}, env={**env, "ENVKIT_TTL": "3h"}, cwd=tmp_path)
    assert s.ttl == timedelta(hours=5)
    # an explicit falsy value still wins over the environment
    s = Settings.resolve({"lock_timeout": 0.0}, env={**env, "ENVKIT_LOCK_TIMEOUT": "9"},
                         cwd=tmp_path)
    assert s.lock_timeout == 0.0


def test_xdg_state_home_and_bad_values(tmp_path: Path) -> None:
    s = Settings.resolve(env={"XDG_STATE_HOME": str(tmp_path / "x")}, cwd=tmp_path)
    assert s.home == tmp_path / "x" / "envkit"
    with pytest.raises(ConfigError, match="provider"):
        Settings.resolve(env={"ENVKIT_PROVIDER": "gcp"}, cwd=tmp_path)
    with pytest.raises(ConfigError):
        Settings.resolve({"nope": 1}, env={}, cwd=tmp_path)


@pytest.mark.parametrize("text", ["abc", "-1", "65", "1.5", ""])
def test_a_bad_spare_pool_size_is_a_config_error(text: str, tmp_path: Path) -> None:
    if not text:
        assert Settings.resolve({}, env={"ENVKIT_SPARES": text}, cwd=tmp_path).spares == 2
        return
    with pytest.raises(ConfigError, match="ENVKIT_SPARES"):
        Settings.resolve({}, env={"ENVKIT_SPARES": text}, cwd=tmp_path)


def test_the_spare_pool_size_comes_from_the_environment(tmp_path: Path) -> None:
    assert Settings.resolve({}, env={}, cwd=tmp_path).spares == 2
    assert Settings.resolve({}, env={"ENVKIT_SPARES": "0"}, cwd=tmp_path).spares == 0
    assert Settings.resolve({}, env={"ENVKIT_SPARES": "8"}, cwd=tmp_path).spares == 8
