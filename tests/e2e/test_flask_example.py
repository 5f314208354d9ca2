"""examples/flask-api: its own test suite, run as a user runs it, against the local provider."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from envkit import lifecycle
from envkit.settings import Settings

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flask-api"


@pytest.mark.parametrize("extra", [[], ["-p", "xdist", "-n", "2"]], ids=["serial", "xdist"])
def test_the_flask_example_passes_with_envkit_fixtures(
    envkit_home: Path, settings: Settings, extra: list[str]
) -> None:
    pytest.importorskip("flask")
    env = {**os.environ, "ENVKIT_HOME": str(envkit_home)}
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert lifecycle.list_environments(settings) == []  # the session's environment is gone
