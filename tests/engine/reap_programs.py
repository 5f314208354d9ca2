"""Programs for the reap tests: stacks holding files or moto-backed AWS resources, storing
envkit's expiry and owner.

The dynamic provider is pickled by reference, so it lives in this importable module (the
conftest puts its folder on the provider process's PYTHONPATH).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
from engine_programs import FileProvider, aws_program
from pulumi import dynamic

from envkit.naming import TAG_EXPIRES_AT


class PausingDeleteProvider(FileProvider):
    """Deletes its file; while a ``pause-delete`` marker sits beside it, the first delete takes
    the marker, announces itself (``deleting``) and blocks until the run is killed."""

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        import os
        import time

        path = Path(props["path"])
        marker = path.with_name("pause-delete")
        if marker.exists():
            marker.unlink()
            parent = os.getppid()
            path.with_name("deleting").touch()
            deadline = time.monotonic() + 600
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.2)
            if os.getppid() != parent:  # the engine was killed: end this provider process too
                os._exit(1)
            return
        super().delete(_id, props)


class PausingFile(dynamic.Resource):
    """A file whose delete can be made to block (see :class:`PausingDeleteProvider`)."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(PausingDeleteProvider(), name, {"path": path, "text": "x"}, None)


def _export_stored(expires_at: str) -> None:
    """The outputs envkit's own program exports for a reap."""
    pulumi.export("envkit_expires_at", expires_at)
    pulumi.export("envkit_owner", "ci")


def envkit_program(directory: Path, files: tuple[str, ...], expires_at: str) -> Any:
    """An inline program: ``files`` under ``directory``, and the outputs envkit's own program
    exports for a reap (``envkit_expires_at``, ``envkit_owner``)."""

    def program() -> None:
        for name in files:
            PausingFile(name, str(directory / f"{name}.txt"))
        _export_stored(expires_at)

    return program


def envkit_aws_program(tags: dict[str, str], region: str) -> Any:
    """An inline program: ``engine_programs.aws_program``'s VPC and security group (on moto),
    and the outputs envkit's own program exports for a reap."""
    resources = aws_program(tags, region)

    def program() -> None:
        resources()
        _export_stored(tags[TAG_EXPIRES_AT])

    return program
