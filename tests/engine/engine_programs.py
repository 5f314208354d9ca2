"""Pulumi programs for the engine tier: resources that need no downloaded provider plugin.

The dynamic provider is pickled by reference, so it lives in this importable module (the
conftest puts its folder on the provider process's PYTHONPATH).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pulumi
from pulumi import dynamic


class FileProvider(dynamic.ResourceProvider):
    """Creates a file with the given text; deletes it on destroy."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        path = Path(props["path"])
        path.write_text(props["text"])
        return dynamic.CreateResult(id_=uuid.uuid4().hex, outs=dict(props))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        Path(props["path"]).unlink(missing_ok=True)


class File(dynamic.Resource):
    """A file on this machine, standing in for a cloud resource."""

    path: pulumi.Output[str]
    text: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        path: str,
        text: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(FileProvider(), name, {"path": path, "text": text}, opts)


class Environment(pulumi.ComponentResource):
    """A component that owns one file, as envkit's stacks own their resources."""

    def __init__(self, name: str, directory: str, text: pulumi.Input[str]) -> None:
        super().__init__("envkit:test:Environment", name)
        self.file = File(
            f"{name}-file", str(Path(directory) / f"{name}.txt"), text,
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"path": self.file.path})


def file_program(directory: Path, name: str = "env") -> Any:
    """An inline program: one component with one file; exports its path and a config value."""

    def program() -> None:
        config = pulumi.Config()
        text = config.get("text") or "hello"
        env = Environment(name, str(directory), text)
        pulumi.export("path", env.file.path)
        pulumi.export("text", env.file.text)
        pulumi.export("secret", config.get_secret("password"))

    return program


class SlowFileProvider(FileProvider):
    """Announces its create with a marker file, then blocks: the test kills the run there."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        import os
        import time

        parent = os.getppid()
        Path(props["path"]).with_name("creating").touch()
        # Block until the run is killed; then leave too, rather than outlive the test.
        deadline = time.monotonic() + 600
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.2)
        return super().create(props)


class SlowFile(dynamic.Resource):
    """A :class:`File` whose create never finishes in time."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(SlowFileProvider(), name, {"path": path, "text": "slow"}, None)


def slow_program(directory: Path) -> Any:
    """An inline program whose only resource blocks in its create."""

    def program() -> None:
        SlowFile("env-file", str(directory / "env.txt"))

    return program


def wait_group_gone(pgid: int, timeout: float = 30) -> None:
    """Wait until no process of the group is left (killed ones linger until reaped), as the
    next run of a killed CI job only starts after the kill."""
    import os
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} outlived SIGKILL by {timeout} s")
