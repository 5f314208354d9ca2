"""The local provider's log files: one per component of an environment (``postgres``, and one per
service), read back by ``envkit logs`` and in error messages."""

from __future__ import annotations

from pathlib import Path

from envkit.errors import ConfigError
from envkit.logtail import tail_lines

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


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file."""
    return "\n".join(tail_lines(path, lines)) or "(log is empty)"


