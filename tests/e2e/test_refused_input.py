"""Refused input, as a user meets it: exit 2, a message naming the setting and what is allowed,
and nothing created — no record, no lock file — whatever was wrong (issue 14)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def envkit(*args: str, home: Path, env: dict[str, str] | None = None, cwd: Path | None = None
           ) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("ENVKIT_", "GITHUB_", "CI_", "BUILD"))}
    environ["ENVKIT_HOME"] = str(home)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, env=environ, cwd=cwd or home.parent, timeout=120,
                          check=False)


@pytest.fixture(autouse=True)
def _down_whatever_came_up(tmp_path: Path) -> Iterator[None]:
    """Should a refusal regress into a real ``up``, its environment is not left running."""
    yield
    home = tmp_path / "home"
    if (home / "envs" / "x.json").exists():
        envkit("down", "x", home=home, env={"ENVKIT_LOCK_TIMEOUT": "5"})


def nothing_created(home: Path) -> bool:
    """No record and no lock file under ENVKIT_HOME."""
    return not any(
        (home / folder).is_dir() and any((home / folder).iterdir()) for folder in ("envs", "locks")
    )


def assert_refused(result: subprocess.CompletedProcess[str], home: Path, *named: str) -> str:
    message = result.stdout + result.stderr
    assert result.returncode == 2, message
    assert "Traceback" not in message and "Internal error" not in message, message
    for text in named:
        assert text in message, message
    assert nothing_created(home), sorted(p.name for p in home.rglob("*"))
    return message


SCALE = ("--scale", "greater than 0 and at most 1000")
TIMEOUT = "from 0 to 86400 seconds"
BAD_NUMBERS = [
    (["up", "x", "--scale", "-1"], {}, SCALE),
    (["up", "x", "--scale", "nan"], {}, SCALE),
    (["up", "x", "--scale", "inf"], {}, SCALE),
    (["up", "x", "--scale", "0"], {}, SCALE),
    (["up", "x", "--scale", "1e9"], {}, SCALE),
    (["seed", "x", "--scale", "nan"], {}, SCALE),
    (["up", "x"], {"ENVKIT_SEED_SCALE": "nan"}, ("ENVKIT_SEED_SCALE", SCALE[1])),
    (["up", "x"], {"ENVKIT_SEED_SCALE": "-1"}, ("ENVKIT_SEED_SCALE", SCALE[1])),
    (["up", "x"], {"ENVKIT_HEALTH_TIMEOUT": "inf"}, ("ENVKIT_HEALTH_TIMEOUT", TIMEOUT)),
    (["up", "x"], {"ENVKIT_HEALTH_TIMEOUT": "1e400"}, ("ENVKIT_HEALTH_TIMEOUT", TIMEOUT)),
    (["up", "x"], {"ENVKIT_LOCK_TIMEOUT": "nan"}, ("ENVKIT_LOCK_TIMEOUT", TIMEOUT)),
    (["down", "x"], {"ENVKIT_LOCK_TIMEOUT": "-5"}, ("ENVKIT_LOCK_TIMEOUT", TIMEOUT)),
    (["wait", "x", "--timeout", "inf"], {}, ("--timeout", TIMEOUT)),
    (["up", "x"], {"ENVKIT_SPARES": "1e3"}, ("ENVKIT_SPARES", "from 0 to 64")),
    (["logs", "x", "--lines", "999999999"], {}, ("--lines",)),
]


@pytest.mark.parametrize("args,env,named", BAD_NUMBERS,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_numbers_exit_2_naming_setting_and_range(
    args: list[str], env: dict[str, str], named: tuple[str, ...], tmp_path: Path
) -> None:
    assert_refused(envkit(*args, home=tmp_path / "home", env=env), tmp_path / "home", *named)


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_an_unusable_data_dir_exits_2_before_any_record(where: str, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    data_dir = "/proc/envkit-test/data" if where == "proc" else str(tmp_path / "afile" / "d")
    home = tmp_path / "home"
    result = envkit("up", "x", home=home, env={"ENVKIT_DATA_DIR": data_dir})
    assert_refused(result, home, "ENVKIT_DATA_DIR", data_dir)
    assert not os.path.exists(data_dir)


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
@pytest.mark.parametrize("command", [["up", "x"], ["down", "x"], ["status", "x"], ["history"]])
def test_an_unusable_home_is_a_clear_error_not_a_bug(
    where: str, command: list[str], tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("")
    home = Path("/proc/envkit-test/home") if where == "proc" else tmp_path / "afile" / "home"
    result = envkit(*command, home=home, cwd=tmp_path)
    if where == "proc" and command[0] in ("status", "history"):
        # A home that does not exist holds nothing: reading it says so (nothing to refuse).
        assert result.returncode == 0, result.stderr
        assert "Internal error" not in result.stdout + result.stderr
        return
    assert_refused(result, home, "ENVKIT_HOME", str(home))


@contextlib.contextmanager
def tiny_tmpfs(folder: Path) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_home_exits_2_naming_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with tiny_tmpfs(tmp_path / "disk") as disk:
        home = disk / "home"
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # fill the disk to the last block
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        result = envkit("up", "x", home=home)
        message = assert_refused(result, home, "ENVKIT_HOME", str(home), "full")
        assert "Free some space" in message
        assert envkit("status", "x", home=home).returncode == 0  # reading still works
        # down is not refused up front (it frees space); on a disk this full the lock file
        # cannot take its pid, which is reported as what it is, never as a bug
        down = envkit("down", "x", home=home)
        assert down.returncode in (0, 1), down.stderr
        assert "Internal error" not in down.stderr and "Traceback" not in down.stderr
        if down.returncode:
            assert "No space left on device" in down.stderr
