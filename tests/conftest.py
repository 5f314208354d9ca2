"""Shared fixtures: every test gets its own ENVKIT_HOME, and everything it started is stopped."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from envkit.plan import Plan
from envkit.settings import Settings

CI_VARIABLES = (
    "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_REPOSITORY", "CI_PIPELINE_ID", "CI_JOB_ID",
    "CI_PROJECT_PATH", "CI_PROJECT_ID", "BUILD_TAG", "BUILDKITE_BUILD_ID", "CIRCLE_WORKFLOW_ID",
    "CIRCLE_WORKFLOW_WORKSPACE_ID", "ENVKIT_POSTGRES_VERSION",
    "ENVKIT_PIPELINE_ID", "ENVKIT_PROVIDER", "ENVKIT_DATASET", "ENVKIT_TTL", "ENVKIT_SEEDS_DIR",
)


def tear_down_home(home: Path) -> None:
    """Destroy every environment recorded under ``home`` and kill any process left in its
    data directories, so a failing test never leaks a server."""
    from envkit import lifecycle
    from envkit.providers.local.layout import Layout

    settings = Settings.resolve({"home": home})
    for record in lifecycle.list_environments(settings):
        with contextlib.suppress(Exception):  # keep going: the sweep below catches the rest
            lifecycle.down(Plan.build(record.pipeline_id, settings))
    envs_root = str(Layout.for_settings(settings).envs_root) + os.sep
    kill_processes_under(envs_root)
    shutil.rmtree(envs_root, ignore_errors=True)


def kill_processes_under(prefix: str) -> None:
    """SIGKILL (with their process groups) the processes whose command line names a path
    under ``prefix``, or whose working directory is there (the local provider's services)."""
    from envkit.processes import cmdline

    for entry in os.listdir("/proc"):
        if entry.isdigit() and (
            any(a.startswith(prefix) for a in cmdline(int(entry)))
            or _cwd(int(entry)).startswith(prefix)
        ):
            try:
                os.killpg(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd") + os.sep
    except OSError:
        return ""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CI or envkit variables from the machine running the tests."""
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def envkit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
                ) -> Iterator[Path]:
    """A private ENVKIT_HOME; every environment created in it is destroyed afterwards."""
    home = tmp_path / "envkit-home"
    monkeypatch.setenv("ENVKIT_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    yield home
    tear_down_home(home)


@pytest.fixture
def private_data(envkit_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A data root of this test alone (RAM-backed when possible; ENVKIT_DATA_DIR), removed
    afterwards with every process still running under it (all of them started by the test).
    Request it before ``settings``, which must be resolved after it."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else envkit_home.parent
    root = base / f"envkit-test-{secrets.token_hex(4)}"
    monkeypatch.setenv("ENVKIT_DATA_DIR", str(root))
    yield root
    kill_processes_under(str(root) + os.sep)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def settings(envkit_home: Path) -> Settings:
    """Settings for the private home."""
    return Settings.resolve({"home": envkit_home})


def pytest_configure(config: pytest.Config) -> None:
    """envkit's own suite leaves nothing running, even when a test fails: the dogfood session
    environment is destroyed, not preserved (an explicit command-line flag still wins)."""
    if getattr(config.option, "envkit_preserve_on_failure", "absent") is None:
        config.option.envkit_preserve_on_failure = False
