"""Shared pieces of the CLI: consoles, settings from options, progress display."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from envkit.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console


# rich is imported when something is printed with it (~17 ms): `--format json` never pays.
@cache
def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@cache
def error_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def settings(**explicit: Any) -> Settings:
    """Settings from CLI options (``None`` = not given) over env, pyproject and defaults."""
    return Settings.resolve({k: v for k, v in explicit.items() if v is not None})


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    print(json.dumps(data, indent=2, default=str))


PROGRESS_EVERY = 10.0
"""Seconds between the plain 'still …' lines of long steps where there is no terminal."""


@contextmanager
def progress(title: str, *, enabled: bool = True) -> Iterator[Any]:
    """Where the current step is, on stderr; a callback ``step(name)`` moves it on.

    In a terminal, a spinner. Elsewhere (a CI log, a pipe) plain lines: one per step, and a
    'still …' line every ``PROGRESS_EVERY`` seconds while a step runs long (a first template
    build, seeding at scale, a masked copy, ``pulumi up``), so a log never looks stuck."""
    if not enabled:
        yield lambda step: None
        return
    if error_console().is_terminal:
        with error_console().status(f"{title}…") as status:
            yield lambda step: status.update(f"{title}: {step}…")
        return
    import sys
    import threading
    import time

    current = {"starting": time.monotonic()}  # the one step running -> when it started
    done = threading.Event()

    def say(text: str) -> None:
        print(f"envkit: {text}", file=sys.stderr, flush=True)

    def step(name: str) -> None:
        current.clear()
        current[name] = time.monotonic()
        say(f"{title}: {name}…")

    def remind() -> None:
        while not done.wait(PROGRESS_EVERY):
            for name, since in list(current.items()):
                took = time.monotonic() - since
                if took >= PROGRESS_EVERY:
                    say(f"{title}: still {name} ({took:.0f}s)")

    say(f"{title}…")
    reminder = threading.Thread(target=remind, name="envkit-progress", daemon=True)
    reminder.start()
    try:
        yield step
    finally:
        done.set()
        reminder.join(timeout=1.0)
