"""The CLI as a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def envkit(*args: str, home: Path, cwd: Path | None = None, env: dict[str, str] | None = None,
           python_path: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("ENVKIT_", "GITHUB_", "CI_", "BUILD"))}
    environ["ENVKIT_HOME"] = str(home)
    if python_path:
        environ["PYTHONPATH"] = python_path
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, env=environ, cwd=cwd or home.parent, timeout=120)


def test_up_outputs_status_down(envkit_home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "unrelated"
    elsewhere.mkdir()
    result = envkit("up", "p1", home=envkit_home, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    outputs = json.loads(envkit("outputs", "p1", "--format", "json", "--show-secrets",
                                home=envkit_home).stdout)
    psql = subprocess.run(["psql", outputs["DATABASE_URL"], "-tAc", "select 1"],
                          capture_output=True, text=True, check=False)
    assert psql.stdout.strip() == "1", psql.stderr
    status = json.loads(envkit("status", "p1", "--json", home=envkit_home).stdout)
    assert status["status"] == "ready" and status["pipeline_id"] == "p1"
    assert {"created_at", "expires_at", "provider"} <= set(status)
    listed = json.loads(envkit("list", "--json", home=envkit_home).stdout)
    assert [e["pipeline_id"] for e in listed] == ["p1"]

    assert envkit("down", "p1", home=envkit_home).returncode == 0
    assert json.loads(envkit("status", "p1", "--json", home=envkit_home).stdout)["status"] == \
        "absent"
    leftovers = subprocess.run(["pgrep", "-f", str(envkit_home)], capture_output=True,
                               text=True, check=False)
    assert leftovers.stdout == ""
    assert not list((envkit_home / "envs").glob("p1*"))
    assert envkit("down", "p1", home=envkit_home).returncode == 0


BAD_INVOCATIONS = [
    ["up", "Bad ID"], ["up", "../../etc"], ["up", "a/b"], ["up", "x;rm -rf /"], ["up", "$(id)"],
    ["up", "a'b"], ["up", "-dash"], ["up", "é"], ["up", "x" * 64], ["up", ""], ["up", " "],
    ["up", "ok", "--ttl", "0s"], ["up", "ok", "--ttl", "-4h"], ["up", "ok", "--ttl", "soon"],
    ["up", "ok", "--provider", "gcp"], ["up", "ok", "--format", "yaml"], ["up", "ok", "--nope"],
    ["down", "Bad_ID"], ["status", "a b"], ["outputs", "../x"], ["up"],
    ["down", "ok", "--ttl", "1h"],
]


@pytest.mark.parametrize("args", BAD_INVOCATIONS, ids=lambda a: " ".join(a)[:30])
def test_bad_input_exits_2_and_creates_nothing(args: list[str], envkit_home: Path) -> None:
    result = envkit(*args, home=envkit_home)
    assert result.returncode == 2, (result.stdout, result.stderr)
    message = result.stdout + result.stderr
    assert message.strip()
    assert "Traceback" not in message
    assert not (envkit_home / "envs").exists() or not list((envkit_home / "envs").iterdir())


def test_missing_binaries_exit_2_with_every_place_tried(envkit_home: Path, tmp_path: Path) -> None:
    result = envkit("up", "nobin", home=envkit_home,
                    env={"ENVKIT_PG_BINDIR": str(tmp_path / "none")})
    assert result.returncode == 2
    assert "ENVKIT_PG_BINDIR" in result.stderr and "Traceback" not in result.stderr
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    (empty_path / "python").symlink_to(sys.executable)
    # No pg_config, no postgres on PATH; the Debian layout is still found unless hidden, so only
    # assert that the message lists what was tried when nothing is found at all.
    if not list(Path("/usr/lib/postgresql").glob("*/bin/postgres")):
        result = envkit("up", "nobin", home=envkit_home, env={"PATH": str(empty_path)})
        assert result.returncode == 2 and "apt-get install postgresql" in result.stderr


def test_password_never_in_default_output_or_logs(envkit_home: Path) -> None:
    shown = [envkit("up", "sec", home=envkit_home)]
    secret = json.loads(envkit("outputs", "sec", "--format", "json", "--show-secrets",
                               home=envkit_home).stdout)["DATABASE_PASSWORD"]
    assert len(secret) >= 20
    shown += [
        envkit("up", "sec", "--format", "json", home=envkit_home),
        envkit("up", "sec", "--format", "env", home=envkit_home),
        envkit("status", "sec", "--json", home=envkit_home),
        envkit("status", "sec", home=envkit_home),
        envkit("list", home=envkit_home),
        envkit("list", "--json", home=envkit_home),
        envkit("outputs", "sec", home=envkit_home),
        envkit("outputs", "sec", "--format", "json", home=envkit_home),
        envkit("outputs", "sec", "--format", "github", home=envkit_home),  # outside Actions
    ]
    for result in shown:
        assert result.returncode == 0, result.stderr
        assert secret not in result.stdout + result.stderr
    github = envkit("outputs", "sec", "--format", "github", home=envkit_home,
                    env={"GITHUB_ACTIONS": "true"}).stdout
    first_use = github.index(secret)
    assert github[:first_use].rstrip().endswith(f"::add-mask::{secret}".rstrip()) or \
        f"::add-mask::{secret}" in github[:first_use + len(secret)]
    events = (envkit_home / "events.jsonl").read_text()
    assert secret not in events
    envkit("down", "sec", home=envkit_home)


@pytest.mark.parametrize("argv", [["--help"], ["up", "--help"]])
def test_help_imports_no_cloud_sdk_or_faker(argv: list[str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "envkit", *argv],
                            capture_output=True, text=True, env={**os.environ,
                                                                 "ENVKIT_HOME": str(tmp_path)})
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    for heavy in ("pulumi", "pulumi_aws", "boto3", "botocore", "faker", "psycopg"):
        assert heavy not in imported, f"envkit {' '.join(argv)} imported {heavy}"


def test_every_command_has_help() -> None:
    import typer.main

    from envkit.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert command.help, f"envkit {name} has no help text"


def test_installed_wheel_is_self_contained(tmp_path: Path, envkit_home: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(REPO)], check=True, capture_output=True,
                   timeout=300)
    wheel = next(dist.glob("envkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert "stacks" not in top and "seeds" not in top
    assert any(n.startswith("envkit/_stacks/") for n in names)
    assert any(n.startswith("envkit/_seeds/") for n in names)
    assert "envkit/py.typed" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    where = subprocess.run([sys.executable, "-c", "import envkit; print(envkit.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(target)})
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    result = envkit("up", "wheel", home=envkit_home, cwd=tmp_path, python_path=str(target))
    assert result.returncode == 0, result.stderr
    assert envkit("down", "wheel", home=envkit_home, python_path=str(target)).returncode == 0
