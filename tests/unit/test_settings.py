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


# -- numeric settings: finite, in a named range, the message naming the setting and the range ---

BAD_NUMBERS = [
    ("ENVKIT_SEED_SCALE", "nan", "greater than 0 and at most 1000"),
    ("ENVKIT_SEED_SCALE", "-1", "greater than 0 and at most 1000"),
    ("ENVKIT_SEED_SCALE", "0", "greater than 0 and at most 1000"),
    ("ENVKIT_SEED_SCALE", "inf", "greater than 0 and at most 1000"),
    ("ENVKIT_SEED_SCALE", "1e9", "greater than 0 and at most 1000"),
    ("ENVKIT_SEED_SCALE", "lots", "greater than 0 and at most 1000"),
    ("ENVKIT_HEALTH_TIMEOUT", "inf", "from 0 to 86400 seconds"),
    ("ENVKIT_HEALTH_TIMEOUT", "1e400", "from 0 to 86400 seconds"),
    ("ENVKIT_HEALTH_TIMEOUT", "nan", "from 0 to 86400 seconds"),
    ("ENVKIT_HEALTH_TIMEOUT", "-1", "from 0 to 86400 seconds"),
    ("ENVKIT_HEALTH_TIMEOUT", "2d", "from 0 to 86400 seconds"),
    ("ENVKIT_HEALTH_TIMEOUT", "soon", "or a duration such as 30s"),
    ("ENVKIT_LOCK_TIMEOUT", "nan", "from 0 to 86400 seconds"),
    ("ENVKIT_LOCK_TIMEOUT", "-inf", "from 0 to 86400 seconds"),
    ("ENVKIT_LOCK_TIMEOUT", "86401", "from 0 to 86400 seconds"),
    ("ENVKIT_SPARES", "nan", "whole number from 0 to 64"),
    ("ENVKIT_SPARES", "1e3", "whole number from 0 to 64"),
]


@pytest.mark.parametrize("variable,text,allowed", BAD_NUMBERS, ids=lambda v: str(v)[:12])
def test_a_bad_numeric_variable_is_a_config_error_naming_it_and_the_range(
    variable: str, text: str, allowed: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.resolve({}, env={variable: text}, cwd=tmp_path)
    assert caught.value.exit_code == 2
    assert variable in caught.value.message
    assert allowed in caught.value.message
    assert repr(text) in caught.value.message


@pytest.mark.parametrize(
    "name,value,named",
    [
        ("seed_scale", float("inf"), "--scale"),
        ("seed_scale", float("nan"), "--scale"),
        ("seed_scale", 0.0, "--scale"),
        ("seed_scale", -1.0, "--scale"),
        ("seed_scale", 1e9, "--scale"),
        ("health_timeout", float("inf"), "--timeout"),
        ("lock_timeout", float("nan"), "ENVKIT_LOCK_TIMEOUT"),
        ("spares", 2.5, "ENVKIT_SPARES"),
        ("spares", True, "ENVKIT_SPARES"),
    ],
)
def test_a_bad_explicit_number_is_refused_too(
    name: str, value: object, named: str, tmp_path: Path
) -> None:
    # CLI options (typer parses --scale to a float: 'inf' and 'nan' included) and library
    # arguments come in as numbers, not text: they are checked all the same.
    with pytest.raises(ConfigError, match=named):
        Settings.resolve({name: value}, env={}, cwd=tmp_path)


def test_settings_made_directly_or_with_with_are_checked(tmp_path: Path) -> None:
    good = Settings(home=tmp_path)
    with pytest.raises(ConfigError, match="ENVKIT_HEALTH_TIMEOUT"):
        Settings(home=tmp_path, health_timeout=float("nan"))
    with pytest.raises(ConfigError, match="ENVKIT_SEED_SCALE"):
        good.with_(seed_scale=float("inf"))
    with pytest.raises(ConfigError, match=r"ENVKIT_TTL .* at most 366 days"):
        good.with_(ttl=timedelta(days=400))
    with pytest.raises(ConfigError, match="ENVKIT_PRESERVE_TTL"):
        good.with_(preserve_ttl=timedelta(seconds=-1))


@pytest.mark.parametrize(
    "variable,text,name,value",
    [
        ("ENVKIT_SEED_SCALE", "0.5", "seed_scale", 0.5),
        ("ENVKIT_SEED_SCALE", "1000", "seed_scale", 1000.0),
        ("ENVKIT_HEALTH_TIMEOUT", "0", "health_timeout", 0.0),
        ("ENVKIT_HEALTH_TIMEOUT", "2m", "health_timeout", 120.0),
        ("ENVKIT_HEALTH_TIMEOUT", "24h", "health_timeout", 86400.0),
        ("ENVKIT_LOCK_TIMEOUT", "0", "lock_timeout", 0.0),
        ("ENVKIT_LOCK_TIMEOUT", "2.5", "lock_timeout", 2.5),
        ("ENVKIT_SPARES", "64", "spares", 64),
    ],
)
def test_numbers_at_and_inside_the_limits_are_accepted(
    variable: str, text: str, name: str, value: object, tmp_path: Path
) -> None:
    assert getattr(Settings.resolve({}, env={variable: text}, cwd=tmp_path), name) == value


def test_a_bad_number_in_pyproject_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.envkit]\nseed_scale = nan\n")
    with pytest.raises(ConfigError, match="ENVKIT_SEED_SCALE"):
        Settings.resolve({}, env={}, cwd=tmp_path)
