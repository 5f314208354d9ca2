"""Files that hold secrets are written so that nobody can redirect or read them on the way.

``write_env_file`` used a predictable temp name (``.<name>.<pid>.tmp``) opened without O_EXCL:
with ``fs.protected_symlinks=0`` a local user who planted symlinks under those names for
upcoming pids had root write the outputs, password included, over a file of their choosing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from envkit.ci_outputs import write_env_file

PASSWORD = "s3cr3t-Pa55"
OUTPUTS = {"DATABASE_PASSWORD": PASSWORD, "DATABASE_HOST": "127.0.0.5"}
VICTIM_TEXT = "root:x:0:0:root:/root:/bin/bash\n"


def plant(directory: Path, name: str, victim: Path) -> list[Path]:
    """Symlinks ``.<name>.<pid>.tmp`` -> victim for this pid and the next few hundred."""
    pids = {os.getpid(), *range(os.getpid() - 50, os.getpid() + 400)}
    links = []
    for pid in sorted(p for p in pids if p > 0):
        link = directory / f".{name}.{pid}.tmp"
        link.symlink_to(victim)
        links.append(link)
    return links


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "elsewhere" / "passwd"
    path.parent.mkdir()
    path.write_text(VICTIM_TEXT)
    path.chmod(0o644)
    return path


def test_env_file_never_writes_through_planted_temp_symlinks(tmp_path: Path, victim: Path) -> None:
    target_dir = tmp_path / "shared"
    target_dir.mkdir()
    links = plant(target_dir, "envkit.env", victim)
    written = write_env_file(OUTPUTS, target_dir / "envkit.env")
    assert victim.read_text() == VICTIM_TEXT
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not written.is_symlink()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert f"DATABASE_PASSWORD={PASSWORD}" in written.read_text().splitlines()
    assert all(link.is_symlink() for link in links)  # nothing of ours replaced or followed
    leftovers = [p for p in target_dir.iterdir() if p not in links and p != written]
    assert leftovers == []


def test_env_file_replaces_a_symlinked_target_instead_of_writing_through_it(
    tmp_path: Path, victim: Path
) -> None:
    target = tmp_path / "envkit.env"
    target.symlink_to(victim)
    write_env_file(OUTPUTS, target)
    assert victim.read_text() == VICTIM_TEXT
    assert not target.is_symlink()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_env_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        written = write_env_file(OUTPUTS, tmp_path / "envkit.env")
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_cli_outputs_env_file_ignores_planted_symlinks(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``envkit outputs ID --env-file`` (``up --env-file`` calls the same function) with a stored
    record: the planted names are never followed."""
    from typer.testing import CliRunner

    from envkit.cli import app
    from envkit.naming import iso_utc
    from envkit.state import Record, StateStore, Status, utcnow

    home = tmp_path / "home"
    monkeypatch.setenv("ENVKIT_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    now = iso_utc(utcnow())
    StateStore(home).save(Record("pr-1", "local", Status.READY, now, now, "me", outputs=OUTPUTS))
    target_dir = tmp_path / "shared"
    target_dir.mkdir()
    plant(target_dir, "out.env", victim)
    result = CliRunner().invoke(
        app, ["outputs", "pr-1", "--env-file", str(target_dir / "out.env")]
    )
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert victim.read_text() == VICTIM_TEXT
    written = target_dir / "out.env"
    assert not written.is_symlink()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_env_file_on_a_directory_is_a_clear_error_and_leaves_no_temp(tmp_path: Path) -> None:
    from envkit.errors import EnvkitError

    target = tmp_path / "a-directory"
    target.mkdir()
    with pytest.raises(EnvkitError, match=r"Cannot write the env file .*a-directory") as caught:
        write_env_file(OUTPUTS, target)
    assert caught.value.exit_code == 1
    assert list(tmp_path.iterdir()) == [target]
    assert list(target.iterdir()) == []
