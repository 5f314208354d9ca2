"""The command probe: a command (``pg_isready``, ``curl -f …``) exits 0 within its timeout."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from envkit.health.engine import ProbeError, TransientError
from envkit.redact import is_secret_key, scrub


@dataclass
class CommandProbe:
    """command: exits 0 within ``timeout``.

    A string runs through ``/bin/sh -c`` (Docker's ``CMD-SHELL`` form); a list runs as is.
    Any other exit code retries (like ``pg_isready`` or ``curl -f`` while a service starts),
    except 126/127 and a missing executable (the command cannot run at all: fail at once).
    The command runs in its own process group, killed whole on timeout.
    """

    command: str | Sequence[str]
    component: str = "service"
    name: str = "command"
    timeout: float = 10.0
    env: Mapping[str, str] | None = field(default=None, repr=False)
    cwd: Path | None = None
    max_delay: float = 0.25

    def check(self) -> None:
        """Run the command once."""
        argv = (
            ["/bin/sh", "-c", self.command] if isinstance(self.command, str) else list(self.command)
        )
        env = {**os.environ, **(self.env or {})}
        secrets = [v for k, v in (self.env or {}).items() if is_secret_key(k) and v]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProbeError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            output, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise TransientError(f"{self.name}: no exit within {self.timeout:g}s") from None
        if proc.returncode == 0:
            return
        lines = output.decode(errors="replace").strip().splitlines()
        tail = scrub(lines[-1][:300], secrets) if lines else "(no output)"
        message = f"exit {proc.returncode}: {tail}"
        if proc.returncode in (126, 127):
            raise ProbeError(message)
        raise TransientError(message)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.communicate()


__all__ = ["CommandProbe"]
