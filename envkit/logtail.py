"""Reading log files as a terminal user expects: the last lines, then follow what is appended."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

TAIL_BYTES = 256 << 10
"""How much of the end of a file is read for its last lines."""


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (reads at most the last ``TAIL_BYTES``)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - TAIL_BYTES))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:] if lines > 0 else []


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
