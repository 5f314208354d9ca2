"""The real Pulumi engine through ``pulumi.automation``: the facts envkit's boundary relies on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
from engine_programs import file_program, wait_group_gone
from pulumi import automation as auto

PROJECT = "envkit-engine"


def workspace_options(backend: str, work_dir: Path) -> auto.LocalWorkspaceOptions:
    """Inline-program options on the test's ``file://`` backend, secrets under a passphrase."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return auto.LocalWorkspaceOptions(
        work_dir=str(work_dir),
        secrets_provider="passphrase",
        project_settings=auto.ProjectSettings(
            name=PROJECT, runtime="python", backend=auto.ProjectBackend(url=backend)
        ),
    )


def new_stack(
    name: str, program: Callable[[], None], backend: str, work_dir: Path
) -> auto.Stack:
    return auto.create_or_select_stack(
        name, project_name=PROJECT, program=program, opts=workspace_options(backend, work_dir)
    )


def test_up_outputs_destroy_remove(engine_env: str, tmp_path: Path) -> None:
    stack = new_stack("pipeline-1", file_program(tmp_path), engine_env, tmp_path / "work")
    stack.set_all_config({
        "text": auto.ConfigValue("from config"),
        "password": auto.ConfigValue("s3cret-value", secret=True),
    })

    result = stack.up()

    created = tmp_path / "env.txt"
    assert created.read_text() == "from config"
    assert result.outputs["path"].value == str(created)
    assert result.outputs["secret"].secret and result.outputs["secret"].value == "s3cret-value"
    assert result.summary.resource_changes == {"create": 3}  # the stack, the component, the file
    # The secret is stored encrypted: neither the stack's config nor its state holds it in clear
    # (the SDK's export_stack shows secrets: the backend's files are what is stored).
    config_file = tmp_path / "work" / "Pulumi.pipeline-1.yaml"
    assert "s3cret-value" not in config_file.read_text()
    stored = [p for p in Path(engine_env.removeprefix("file://")).rglob("*") if p.is_file()]
    assert any(p.name == "pipeline-1.json" for p in stored)
    assert not [p for p in stored if "s3cret-value" in p.read_text(errors="replace")]
    assert "s3cret-value" in json.dumps(stack.export_stack().deployment)

    stack.destroy()
    assert not created.exists()
    stack.workspace.remove_stack("pipeline-1")
    assert [s.name for s in stack.workspace.list_stacks()] == []


def test_the_file_backend_keeps_stack_tags(engine_env: str, tmp_path: Path) -> None:
    """Defect 1, checked: DIY backends keep stack tags since the 2025 CLIs (a
    ``<stack>.pulumi-tags`` file beside the state); older CLIs refused ``stack tag set`` there.
    Config works on every version, and survives a fresh selection from the same work dir."""
    stack = new_stack("pipeline-tags", file_program(tmp_path), engine_env, tmp_path / "work")

    stack.set_tag("envkit:ttl", "3600")

    assert stack.get_tag("envkit:ttl") == "3600"
    assert stack.list_tags()["envkit:ttl"] == "3600"
    backend_dir = Path(engine_env.removeprefix("file://"))
    assert list(backend_dir.rglob("pipeline-tags.pulumi-tags"))
    stack.set_config("envkit:ttl", auto.ConfigValue("3600"))
    again = auto.select_stack(
        "pipeline-tags", project_name=PROJECT, program=file_program(tmp_path),
        opts=workspace_options(engine_env, tmp_path / "work"),
    )
    assert again.get_config("envkit:ttl").value == "3600"
    assert again.get_tag("envkit:ttl") == "3600"
    stack.workspace.remove_stack("pipeline-tags")
    assert not list(backend_dir.rglob("pipeline-tags.pulumi-tags"))


def test_stack_reference_resolves_a_base_stack(engine_env: str, tmp_path: Path) -> None:
    base = new_stack("base", file_program(tmp_path, "base"), engine_env, tmp_path / "work")
    base.set_config("text", auto.ConfigValue("vpc-0123"))
    base.up()

    def pipeline() -> None:
        ref = pulumi.StackReference(f"organization/{PROJECT}/base")
        pulumi.export("base_text", ref.get_output("text"))
        pulumi.export("base_path", ref.require_output("path"))

    stack = new_stack("pipeline-ref", pipeline, engine_env, tmp_path / "work")
    outputs = stack.up().outputs

    assert outputs["base_text"].value == "vpc-0123"
    assert outputs["base_path"].value == str(tmp_path / "base.txt")
    stack.destroy()
    base.destroy()
    assert not (tmp_path / "base.txt").exists()


KILLED_UP = """
import sys
from pathlib import Path
from pulumi import automation as auto
from engine_programs import slow_program
from test_engine_automation import workspace_options, PROJECT
tmp = Path(sys.argv[1])
stack = auto.create_or_select_stack(
    "pipeline-killed", project_name=PROJECT, program=slow_program(tmp),
    opts=workspace_options(sys.argv[2], tmp / "work"),
)
stack.up()
"""


def kill_during_up(backend: str, tmp_path: Path) -> None:
    """Start an ``up`` whose create blocks, and SIGKILL its whole process group mid-create."""
    started = tmp_path / "creating"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_UP, str(tmp_path), backend],
        start_new_session=True, cwd=Path(__file__).parent,
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, "the up ended before its create started"
            assert time.monotonic() < deadline, "the create never started"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_group_gone(proc.pid)


def locks(backend: str) -> list[Path]:
    """The lock files of the ``file://`` backend."""
    return list(Path(backend.removeprefix("file://"), ".pulumi", "locks").rglob("*.json"))


def test_a_killed_up_leaves_a_lock_that_blocks_up_and_import(
    engine_env: str, tmp_path: Path
) -> None:
    """Defect 2's facts: the stale lock blocks the next update and ``stack import`` too, and its
    error names the holder; ``cancel`` removes it on this backend; the pending create stays."""
    kill_during_up(engine_env, tmp_path)
    assert locks(engine_env), "no lock was left"
    stack = new_stack("pipeline-killed", file_program(tmp_path), engine_env, tmp_path / "work")

    with pytest.raises(auto.errors.ConcurrentUpdateError) as locked:
        stack.up()
    assert re.search(r"created by \S*@\S+ \(pid \d+\) at \S+", str(locked.value))
    exported = stack.export_stack()  # reading the state needs no lock
    pending: list[dict[str, Any]] = exported.deployment.get("pending_operations") or []
    assert [op["type"] for op in pending] == ["creating"]
    cleared = {**exported.deployment, "pending_operations": []}
    with pytest.raises(auto.errors.ConcurrentUpdateError):
        stack.import_stack(auto.Deployment(version=exported.version, deployment=cleared))

    stack.cancel()

    assert not locks(engine_env)
    stack.import_stack(auto.Deployment(version=exported.version, deployment=cleared))
    assert not stack.export_stack().deployment.get("pending_operations")


def test_refresh_clears_the_pending_creates_of_a_killed_up(
    engine_env: str, tmp_path: Path
) -> None:
    """The recovery defect 2 asks for: cancel the stale lock, then ``refresh`` with
    ``clear_pending_creates``; the next up and destroy then run as usual."""
    kill_during_up(engine_env, tmp_path)
    stack = new_stack("pipeline-killed", file_program(tmp_path), engine_env, tmp_path / "work")
    with pytest.raises(auto.errors.ConcurrentUpdateError):
        stack.refresh(clear_pending_creates=True)

    stack.cancel()
    stack.refresh(clear_pending_creates=True)

    assert not stack.export_stack().deployment.get("pending_operations")
    stack.up()
    assert (tmp_path / "env.txt").read_text() == "hello"
    stack.destroy()
    assert not (tmp_path / "env.txt").exists()
    assert not locks(engine_env)


def test_a_second_runner_destroys_without_the_first_runners_files(
    engine_env: str, tmp_path: Path
) -> None:
    """Defect 6's facts: stack config (``Pulumi.<stack>.yaml``) is on the runner's disk, not in
    the ``file://`` backend; the state is, with its secrets provider, so a second runner with the
    passphrase alone can destroy (and read the outputs)."""
    first = new_stack("pipeline-2", file_program(tmp_path), engine_env, tmp_path / "runner-1")
    first.set_all_config({
        "text": auto.ConfigValue("first"),
        "password": auto.ConfigValue("p4ss", secret=True),
    })
    first.up()

    second = auto.select_stack(
        "pipeline-2", project_name=PROJECT, program=file_program(tmp_path),
        opts=workspace_options(engine_env, tmp_path / "runner-2"),
    )
    assert second.get_all_config() == {}  # the config stayed with the first runner
    assert second.outputs()["secret"].value == "p4ss"  # the state, secrets included, did not
    second.destroy()

    assert not (tmp_path / "env.txt").exists()
    second.workspace.remove_stack("pipeline-2")
