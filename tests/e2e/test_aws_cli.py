"""`envkit up --provider aws` as a user runs it, on a machine without the Pulumi CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.aws, pytest.mark.e2e]


def run_envkit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"  # a PATH with no pulumi on it (nor in HOME/.pulumi/bin)
    bin_dir.mkdir(exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ENVKIT_", "PULUMI_", "AWS_", "GITHUB_", "CI"))
    }
    env.update(
        PATH=f"{bin_dir}:/usr/bin:/bin",
        HOME=str(tmp_path),
        ENVKIT_HOME=str(tmp_path / "envkit-home"),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",  # nothing must ever be called
    )
    return subprocess.run(
        [sys.executable, "-m", "envkit", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_up_without_pulumi_cli_exits_2_naming_pulumi_without_traceback(tmp_path: Path) -> None:
    result = run_envkit(tmp_path, "up", "pr-6", "--provider", "aws")
    assert result.returncode == 2, result.stderr
    assert "Pulumi CLI" in result.stderr
    assert "3.100.0" in result.stderr and "get.pulumi.com" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # Nothing was created: no record, no Pulumi state.
    home = tmp_path / "envkit-home"
    assert not list(home.glob("envs/*.json"))
    assert not (home / "pulumi" / "state").exists()
    status = run_envkit(tmp_path, "status", "pr-6", "--json")
    assert '"absent"' in status.stdout


def test_doctor_reports_pulumi_missing_as_informational(tmp_path: Path) -> None:
    import json

    result = run_envkit(tmp_path, "doctor", "--json")
    data = json.loads(result.stdout)
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["Pulumi CLI"]["ok"] is False and checks["Pulumi CLI"]["required"] is False
    assert "get.pulumi.com" in checks["Pulumi CLI"]["fix"]
    assert checks["AWS credentials"]["required"] is False
    assert set(checks) == {
        "PostgreSQL binaries",
        "PostgreSQL installations (--postgres VERSION picks one)",
        "redis-server (for --redis, a spec's redis)",
        "Pulumi CLI",
        "AWS credentials",
        "Pulumi backend",
    }
    assert checks["redis-server (for --redis, a spec's redis)"]["required"] is False
    # Exit 0 exactly when the local provider's prerequisites are there.
    assert result.returncode == (0 if checks["PostgreSQL binaries"]["ok"] else 1)
    assert "Traceback" not in result.stderr
