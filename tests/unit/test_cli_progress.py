"""Progress where there is no terminal (a CI log): plain lines per step, and a reminder while a
step runs long, so the log never looks stuck."""

from __future__ import annotations

import time

import pytest

from envkit.cli import render


def test_steps_and_reminders_are_plain_lines(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(render, "PROGRESS_EVERY", 0.05)
    with render.progress("Bringing up p1") as step:
        step("database")
        time.sleep(0.3)  # a long step: a first template build, say
        step("health")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:2] == ["envkit: Bringing up p1…", "envkit: Bringing up p1: database…"]
    assert any(line.startswith("envkit: Bringing up p1: still database (") for line in lines)
    assert lines[-1] == "envkit: Bringing up p1: health…" or "still health" in lines[-1]
    assert "\x1b" not in "".join(lines)  # no terminal control sequences in a log


def test_disabled_progress_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with render.progress("Bringing up p1", enabled=False) as step:
        step("database")
    assert capsys.readouterr().err == ""
