"""``envkit up --format github`` as a GitHub Actions step runs it: a subprocess with the runner's
files, secrets only behind ``::add-mask::``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def envkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "envkit", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )


def password_of(pipeline: str) -> str:
    shown = envkit("outputs", pipeline, "--format", "json", "--show-secrets")
    assert shown.returncode == 0, shown.stderr
    password: str = json.loads(shown.stdout)["DATABASE_PASSWORD"]
    return password


def assert_masked_first(stdout: str, secret: str) -> None:
    """Every line holding the secret is a mask, and the first such line precedes all others."""
    lines = stdout.splitlines()
    holding = [line for line in lines if secret in line]
    assert holding, "the secret was not masked at all"
    assert all(line == f"::add-mask::{secret}" for line in holding), holding
    assert lines.index(holding[0]) == 0 or all(
        line.startswith("::add-mask::") for line in lines[: lines.index(holding[0])]
    )


def test_up_format_github_writes_runner_files(envkit_home: Path, tmp_path: Path) -> None:
    files = {name: tmp_path / name.lower() for name in
             ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY")}
    env = {**os.environ, **{name: str(path) for name, path in files.items()},
           "GITHUB_ACTIONS": "true"}
    result = envkit("up", "gh-e2e", "--format", "github", env=env)
    assert result.returncode == 0, result.stderr
    password = password_of("gh-e2e")
    assert_masked_first(result.stdout, password)
    assert password not in result.stderr
    for name in ("GITHUB_OUTPUT", "GITHUB_ENV"):
        text = files[name].read_text()
        assert f"DATABASE_PASSWORD={password}\n" in text
        assert "DATABASE_URL=postgresql://" in text
        assert "ENVKIT_PIPELINE_ID=gh-e2e\n" in text
    summary = files["GITHUB_STEP_SUMMARY"].read_text()
    assert "gh-e2e" in summary and "ready" in summary
    assert password not in summary

    # `outputs --format github` behaves the same (appends to the same files).
    again = envkit("outputs", "gh-e2e", "--format", "github", env=env)
    assert again.returncode == 0, again.stderr
    assert_masked_first(again.stdout, password)
    assert files["GITHUB_OUTPUT"].read_text().count(f"DATABASE_PASSWORD={password}") == 2


def test_up_format_github_outside_actions_prints_no_secret(envkit_home: Path) -> None:
    # Outside GitHub Actions nothing hides an ::add-mask:: line (it is the password in clear)
    # and the KEY=value lines go to stdout: without --show-secrets, both stay redacted.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    result = envkit("up", "gh-plain", "--format", "github", env=env)
    assert result.returncode == 0, result.stderr
    password = password_of("gh-plain")
    assert password not in result.stdout + result.stderr
    assert "::add-mask::" not in result.stdout
    lines = result.stdout.splitlines()
    assert not any(line.startswith(("DATABASE_PASSWORD=", "DATABASE_URL=")) for line in lines)
    assert "add --show-secrets" in lines[-1]
    again = envkit("outputs", "gh-plain", "--format", "github", env=env)
    assert again.returncode == 0, again.stderr
    assert password not in again.stdout + again.stderr
    # In Actions with no runner file, stdout still gets no real value; masks come first.
    in_actions = envkit("outputs", "gh-plain", "--format", "github",
                        env={**env, "GITHUB_ACTIONS": "true"})
    assert in_actions.returncode == 0, in_actions.stderr
    assert_masked_first(in_actions.stdout, password)


def test_format_github_show_secrets_prints_masks_then_values(envkit_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    result = envkit("up", "gh-shown", "--format", "github", "--show-secrets", env=env)
    assert result.returncode == 0, result.stderr
    password = password_of("gh-shown")
    lines = result.stdout.splitlines()
    assert lines[0] == f"::add-mask::{password}"
    assert f"DATABASE_PASSWORD={password}" in lines


def test_up_env_file_is_a_private_dotenv_artifact(envkit_home: Path, tmp_path: Path) -> None:
    target = tmp_path / "envkit.env"
    result = envkit("up", "gl-e2e", "--format", "env", "--env-file", str(target))
    assert result.returncode == 0, result.stderr
    password = password_of("gl-e2e")
    assert password not in result.stdout  # the printed env lines stay redacted
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    values = dict(line.split("=", 1) for line in target.read_text().splitlines())
    assert values["DATABASE_PASSWORD"] == password
    assert values["ENVKIT_PIPELINE_ID"] == "gl-e2e"
