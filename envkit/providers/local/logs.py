"""The local provider's log files: one per component of an environment (``postgres``, and one per
service), read back by ``envkit logs`` and in error messages."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from envkit.errors import ConfigError

LOG_TAIL_LINES = 20


def log_files(logs_dir: Path) -> dict[str, Path]:
    """name → log file of an environment: ``postgres`` first, then services by name."""
    if not logs_dir.is_dir():
        return {}
    files = {p.stem: p for p in sorted(logs_dir.glob("*.log"))}
    ordered = {"postgres": files.pop("postgres")} if "postgres" in files else {}
    ordered.update(files)
    return ordered


def pick_logs(logs_dir: Path, service: str | None) -> dict[str, Path]:
    """The log files to show; ``ConfigError`` naming the known ones when ``service`` is unknown."""
    files = log_files(logs_dir)
    if service is None:
        return files
    if service in ("database", "db"):
        service = "postgres"
    if service not in files:
        raise ConfigError(
            f"No log named {service!r} in {logs_dir}.",
            hint=f"Known: {', '.join(files) or 'none (is the environment up?)'}.",
        )
    return {service: files[service]}


def follow(
    files: Mapping[str, Path], *, interval: float = 0.2, stop: Callable[[], bool] = lambda: False
) -> Iterator[tuple[str, str]]:
    """Yield ``(name, line)`` as lines are appended to ``files`` (from their current end)."""
    positions = {}
    for name, path in files.items():
        try:
            positions[name] = path.stat().st_size
        except OSError:
            positions[name] = 0
    pending = dict.fromkeys(files, "")
    while not stop():
        quiet = True
        for name, path in files.items():
            try:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size < positions[name]:  # truncated or replaced: start over
                        positions[name] = 0
                    fh.seek(positions[name])
                    chunk = fh.read()
            except OSError:
                continue
            if not chunk:
                continue
            quiet = False
            positions[name] += len(chunk)
            text = pending[name] + chunk.decode(errors="replace")
            *complete, pending[name] = text.split("\n")
            for line in complete:
                yield name, line
        if quiet:
            time.sleep(interval)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file."""
    return "\n".join(tail_lines(path, lines)) or "(log is empty)"


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (reads at most the last 256 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - (256 << 10)))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []
