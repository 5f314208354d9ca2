"""Redis through the CLI as a user runs it (issue 19): a spec with [redis], ``envkit up`` prints
REDIS_URL, ``redis-cli -u "$REDIS_URL" ping`` answers PONG, ``envkit down`` leaves nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envkit.providers.local.leftovers import inventory
from envkit.settings import Settings

pytestmark = pytest.mark.e2e


def envkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


def redis_cli(url: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["redis-cli", "--no-auth-warning", "-u", url, *command],
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_up_with_a_redis_table_prints_redis_url_and_redis_cli_pings(
    settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "envkit.toml").write_text('[redis]\nmaxmemory = "32mb"\n')
    done = envkit("up", "rcli-one", "--no-seed")
    assert done.returncode == 0, done.stderr
    assert "REDIS_URL" in done.stdout and "redis://envkit:********@" in done.stdout
    other = envkit("up", "rcli-two", "--no-seed")
    assert other.returncode == 0, other.stderr

    def url(pipeline_id: str) -> str:
        shown = envkit("outputs", pipeline_id, "--format", "json", "--show-secrets")
        return str(json.loads(shown.stdout)["REDIS_URL"])

    one, two = url("rcli-one"), url("rcli-two")
    assert redis_cli(one, "ping").stdout.strip() == "PONG"
    wrong = one.replace(one.split(":")[2].split("@")[0], two.split(":")[2].split("@")[0])
    assert "WRONGPASS" in redis_cli(wrong, "ping").stdout + redis_cli(wrong, "ping").stderr
    anonymous = one.split("//")[0] + "//" + one.split("@")[1]
    assert "NOAUTH" in redis_cli(anonymous, "get", "k").stdout  # no password: refused
    assert "NOPERM" in redis_cli(one, "config", "get", "*").stdout

    for pipeline_id in ("rcli-one", "rcli-two"):
        assert envkit("down", pipeline_id).returncode == 0
    assert redis_cli(one, "ping").stdout.strip() != "PONG"
    assert {k: v for k, v in inventory(settings, ["rcli-one", "rcli-two"]).items() if v} == {}


def test_up_redis_flag_adds_redis_without_a_spec(settings: Settings) -> None:
    done = envkit("up", "rcli-flag", "--no-seed", "--redis", "--format", "json")
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)["outputs"]
    assert outputs["REDIS_PORT"] and "redis://envkit:********@" in outputs["REDIS_URL"]
    assert "redis" in json.loads(done.stdout)["timings"]
    assert envkit("down", "rcli-flag").returncode == 0
    assert {k: v for k, v in inventory(settings, ["rcli-flag"]).items() if v} == {}
