"""What the CLI prints where CI shows it (a pipe, not a terminal), and typos that cost nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_cli_basics import envkit

from envkit import __version__

pytestmark = pytest.mark.e2e


def test_version_and_short_help(envkit_home: Path) -> None:
    version = envkit("--version", home=envkit_home)
    assert version.returncode == 0 and version.stdout.strip() == f"envkit {__version__}"
    for args in (("-h",), ("up", "-h")):
        shown = envkit(*args, home=envkit_home)
        assert shown.returncode == 0 and "Usage: envkit" in shown.stdout


def test_status_and_list_read_well_in_a_pipe(envkit_home: Path) -> None:
    try:
        assert envkit("up", "piped-output-with-a-long-name", "--no-seed",
                      home=envkit_home).returncode == 0
        status = envkit("status", "piped-output-with-a-long-name", home=envkit_home)
        assert status.returncode == 0
        assert "{'" not in status.stdout and "timings" in status.stdout
        assert any(line.strip().startswith("total") and line.rstrip().endswith("s")
                   for line in status.stdout.splitlines())
        listed = envkit("list", home=envkit_home)
        assert listed.returncode == 0
        assert "…" not in listed.stdout
        assert "piped-output-with-a-long-name" in listed.stdout
        header, row = listed.stdout.splitlines()[:2]
        assert header.split()[:3] == ["pipeline_id", "provider", "status"]
        assert row.split()[2] == "ready"
    finally:
        envkit("down", "piped-output-with-a-long-name", home=envkit_home)


def test_env_format_without_secrets_sets_no_masked_value(envkit_home: Path) -> None:
    try:
        assert envkit("up", "env-fmt", "--no-seed", home=envkit_home).returncode == 0
        shown = envkit("outputs", "env-fmt", "--format", "env", home=envkit_home)
        assert shown.returncode == 0
        assert "*" not in shown.stdout.replace("# not set here", "")
        assert "DATABASE_URL" not in "".join(
            line for line in shown.stdout.splitlines() if not line.startswith("#"))
        assert "add --show-secrets" in shown.stdout
        # What a user's eval gets: no URL at all, rather than one whose password is asterisks.
        evaluated = subprocess.run(
            ["sh", "-c", 'eval "$1"; printf "%s|%s" "${DATABASE_URL-unset}" "$DATABASE_HOST"',
             "sh", shown.stdout], capture_output=True, text=True, check=True)
        url, host = evaluated.stdout.split("|")
        assert url == "unset" and host.startswith("127.")
    finally:
        envkit("down", "env-fmt", home=envkit_home)


def test_run_with_a_command_that_does_not_exist_exits_127_and_creates_nothing(
        envkit_home: Path) -> None:
    for command in ("/no/such/command", "no-such-command-xyz"):
        ran = envkit("run", "typo", "--", command, home=envkit_home)
        assert ran.returncode == 127, ran.stderr
        assert "not found" in ran.stderr and "Traceback" not in ran.stderr
        assert envkit("status", "typo", "--json", home=envkit_home).stdout.count('"absent"') == 1
    assert not (envkit_home / "envs" / "typo.json").exists()


def test_logs_of_an_unknown_environment_exits_2(envkit_home: Path) -> None:
    shown = envkit("logs", "never-made", home=envkit_home)
    assert shown.returncode == 2 and "never-made" in shown.stderr
