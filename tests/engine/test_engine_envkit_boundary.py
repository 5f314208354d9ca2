"""envkit's own Automation boundary (``envkit.providers.aws.automation``) on the real engine.

The stacks' program needs the aws provider plugin, which cannot be built here, so each test
swaps the boundary's inline program for one of dynamic resources; everything else — the CLI
lookup, the secrets set-up, the ``file://`` backend under ENVKIT_HOME, the typed failures — is
envkit's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from engine_programs import file_program

from envkit.providers.aws.automation import (
    PulumiAutomation,
    StackMissing,
    connect,
)
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
