"""envkit's own Automation boundary (``envkit.providers.aws.automation``) on the real engine.

The stacks' program needs the aws provider plugin, which cannot be built here, so each test
swaps the boundary's inline program for one of dynamic resources; everything else — the CLI
lookup, the secrets set-up, the ``file://`` backend under ENVKIT_HOME, the typed failures — is
envkit's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from engine_programs import file_program, wait_group_gone

from envkit.errors import LockedError
from envkit.providers.aws.automation import (
    PulumiAutomation,
    StackMissing,
    connect,
)
from envkit.providers.aws.recovery import with_recovery
from envkit.settings import Settings


@pytest.fixture
def automation(
    engine_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> PulumiAutomation:
    """``connect`` as the aws provider calls it, on envkit's default backend."""
    monkeypatch.delenv("PULUMI_BACKEND_URL")  # envkit chooses the backend itself
    settings = Settings.resolve({"home": tmp_path / "envkit-home"})
    boundary = connect(settings, dict(os.environ), "us-east-1", [])
    monkeypatch.setattr(boundary, "_program", file_program(tmp_path))
    return boundary


SLOW_UP = """
import os, sys
from pathlib import Path
from engine_programs import slow_program
from envkit.providers.aws.automation import connect
from envkit.settings import Settings
tmp = Path(sys.argv[1])
settings = Settings.resolve({"home": tmp / "envkit-home"})
boundary = connect(settings, dict(os.environ), "us-east-1", [])
boundary._program = slow_program(tmp)
boundary.create_or_select("envkit-killed").up(print)
"""


@contextmanager
def up_blocked_in_create(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """envkit's boundary running an ``up`` whose create blocks; SIGKILLed (with its process
    group: the CLI and the provider) when the block ends, as a CI runner kills a job."""
    started = tmp_path / "creating"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_UP, str(tmp_path)],
        start_new_session=True, cwd=Path(__file__).parent,
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, "the up ended before its create started"
            assert time.monotonic() < deadline, "the create never started"
            time.sleep(0.1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_group_gone(proc.pid)
        started.unlink(missing_ok=True)


def test_connect_uses_a_file_backend_under_envkit_home(
    automation: PulumiAutomation, tmp_path: Path
) -> None:
    assert automation.backend == f"file://{(tmp_path / 'envkit-home' / 'pulumi' / 'state')}"
    stack = automation.create_or_select("envkit-pipeline-0")
    assert list((tmp_path / "envkit-home" / "pulumi" / "state" / ".pulumi").rglob("*.json"))
    automation.remove(stack.name)


def test_boundary_up_outputs_destroy_remove(automation: PulumiAutomation, tmp_path: Path) -> None:
    stack = automation.create_or_select("envkit-pipeline-1")
    stack.set_config({"text": ("served", False), "password": ("pw-123", True)})
    steps: list[str] = []

    outputs = stack.up(steps.append)

    assert outputs == {
        "path": str(tmp_path / "env.txt"), "text": "served", "secret": "pw-123"
    }
    assert any(step.startswith("create ") for step in steps), steps
    assert stack.get_config("text") == "served"
    assert stack.get_config("absent") is None
    state = stack.export_state()
    assert state["version"] == 3 and state["deployment"]["resources"]

    stack.destroy(steps.append)
    assert not (tmp_path / "env.txt").exists()
    automation.remove(stack.name)
    with pytest.raises(StackMissing):
        automation.select(stack.name)
    automation.remove(stack.name)  # removing an absent stack is not an error


def test_boundary_set_tags_works_on_the_file_backend(
    automation: PulumiAutomation, tmp_path: Path
) -> None:
    """Defect 1's premise does not hold on this CLI: the file backend keeps stack tags (older
    CLIs refused them, so the provider must still survive a refusal)."""
    stack = automation.create_or_select("envkit-pipeline-2")

    stack.set_tags({"envkit:ttl": "3600", "envkit:owner": "ci"})

    tags = list((tmp_path / "envkit-home" / "pulumi" / "state").rglob("*.pulumi-tags"))
    assert len(tags) == 1
    assert json.loads(tags[0].read_text())["tags"] == {"envkit:ttl": "3600", "envkit:owner": "ci"}
    automation.remove(stack.name)


def test_recovery_after_a_killed_up(automation: PulumiAutomation, tmp_path: Path) -> None:
    """Defect 2's recovery on the real engine: the lock of a dead run is cancelled first, the
    pending create cleared (refresh), and the retried up succeeds."""
    with up_blocked_in_create(tmp_path):
        pass
    stack = automation.create_or_select("envkit-killed")
    steps: list[str] = []

    outputs = with_recovery(stack, lambda: stack.up(steps.append), "up")

    assert outputs["text"] == "hello"
    state = stack.export_state()["deployment"]
    assert not state.get("pending_operations")
    assert not list((tmp_path / "envkit-home" / "pulumi" / "state").rglob("locks/**/*.json"))
    stack.destroy(steps.append)
    assert not (tmp_path / "env.txt").exists()
    automation.remove(stack.name)


def test_recovery_leaves_a_live_runs_lock_alone(
    automation: PulumiAutomation, tmp_path: Path
) -> None:
    """A lock whose holder still runs on this host is not cancelled: a ``LockedError`` names it."""
    with up_blocked_in_create(tmp_path):
        stack = automation.create_or_select("envkit-killed")
        with pytest.raises(LockedError) as locked:
            with_recovery(stack, lambda: stack.up(lambda _: None), "up")
        assert "pid" in str(locked.value)
        assert list((tmp_path / "envkit-home" / "pulumi" / "state").rglob("locks/**/*.json"))


def test_a_second_runner_downs_the_stack_with_the_backend_alone(
    automation: PulumiAutomation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect 6 on the real engine: a fresh ENVKIT_HOME on the same backend (and passphrase)
    reads the outputs and destroys, without the first runner's files."""
    first = automation.create_or_select("envkit-pipeline-3")
    first.set_config({"password": ("pw-456", True)})
    first.up(lambda _: None)

    settings = Settings.resolve(
        {"home": tmp_path / "runner-2", "pulumi_backend": automation.backend}
    )
    second_runner = connect(settings, dict(os.environ), "us-east-1", [])
    monkeypatch.setattr(second_runner, "_program", file_program(tmp_path))
    assert second_runner.work_dir != automation.work_dir
    second = second_runner.select("envkit-pipeline-3")

    assert second.outputs()["secret"] == "pw-456"
    second.destroy(lambda _: None)
    assert not (tmp_path / "env.txt").exists()
    second_runner.remove(second.name)
    with pytest.raises(StackMissing):
        automation.select("envkit-pipeline-3")
