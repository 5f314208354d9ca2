"""Template trimming keeps exactly what a cleanly stopped server restarts from, and trims no WAL
when that cannot be told for sure (a fake ``pg_controldata`` stands in for the real one, which
the integration tests run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from envkit.pgbin import PgInstall
from envkit.providers.local.templates import checkpoint_segments, trim

SEGMENTS = [f"00000001000000000000000{c}" for c in "ABCDE"]


def fake_install(tmp_path: Path, report: str, code: int = 0) -> PgInstall:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "pg_controldata"
    tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{report}\nEOF\nexit {code}\n")
    tool.chmod(0o755)
    return PgInstall(bindir)


def datadir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "pg_wal" / "archive_status").mkdir(parents=True)
    for name in SEGMENTS:
        (data / "pg_wal" / name).write_bytes(b"\0" * 16)
    (data / "base" / "5").mkdir(parents=True)
    (data / "base" / "5" / "1259").write_bytes(b"x")
    (data / "base" / "5" / "1259_fsm").write_bytes(b"x")
    (data / "global").mkdir()
    (data / "global" / "1260_fsm").write_bytes(b"x")
    return data


def report(state: str, redo: str, location: str = "0/A1FD68") -> str:
    return (
        "pg_control version number:            1300\n"
        f"Database cluster state:               {state}\n"
        f"Latest checkpoint location:           {location}\n"
        f"Latest checkpoint's REDO WAL file:    {redo}\n"
        "Bytes per WAL segment:                1048576\n"
    )


def wal(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "pg_wal").iterdir() if p.is_file())


def test_a_clean_shutdown_keeps_only_the_checkpoint_segment(tmp_path: Path) -> None:
    data = datadir(tmp_path)
    install = fake_install(tmp_path, report("shut down", SEGMENTS[0]))
    assert checkpoint_segments(data, install) == {SEGMENTS[0]}
    trim(data, install)
    assert wal(data) == [SEGMENTS[0]]
    assert (data / "pg_wal" / "archive_status").is_dir()
    assert sorted(p.name for p in (data / "base" / "5").iterdir()) == ["1259"]
    assert not (data / "global" / "1260_fsm").exists()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (report("in production", SEGMENTS[0]), 0),  # not stopped cleanly: WAL is needed
        (report("shut down", "000000010000000000000009"), 0),  # names a segment not there
        (report("shut down", "garbage"), 0),
        (report("shut down", SEGMENTS[0], location="0/B00028"), 0),  # not in that segment
        (report("shut down", SEGMENTS[0], location="nonsense"), 0),
        (report("shut down", SEGMENTS[0]), 1),  # the tool failed
        ("", 0),
    ],
)
def test_no_wal_is_trimmed_unless_the_checkpoint_is_known(
    tmp_path: Path, text: str, code: int
) -> None:
    data = datadir(tmp_path)
    install = fake_install(tmp_path, text, code)
    assert checkpoint_segments(data, install) == set()
    trim(data, install)
    assert wal(data) == SEGMENTS
    assert not (data / "global" / "1260_fsm").exists()  # FSM forks go either way


def test_without_pg_controldata_no_wal_is_trimmed(tmp_path: Path) -> None:
    data = datadir(tmp_path)
    (tmp_path / "bin").mkdir()
    install = PgInstall(tmp_path / "bin")
    trim(data, install)
    assert wal(data) == SEGMENTS


def test_a_checkpoint_in_the_last_page_of_its_segment_keeps_the_next_one(tmp_path: Path) -> None:
    """A record that starts within the last WAL page may end in the next segment."""
    data = datadir(tmp_path)
    install = fake_install(tmp_path, report("shut down", SEGMENTS[0], location="0/AFFF28"))
    assert checkpoint_segments(data, install) == {SEGMENTS[0], SEGMENTS[1]}
    trim(data, install)
    assert wal(data) == SEGMENTS[:2]
