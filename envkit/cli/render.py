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


@contextmanager
def progress(title: str, *, enabled: bool = True) -> Iterator[Any]:
    """A spinner on stderr naming the current step; a callback ``step(name)`` updates it."""
    if not enabled or not error_console().is_terminal:
        yield lambda step: None
        return
    with error_console().status(f"{title}…") as status:
        yield lambda step: status.update(f"{title}: {step}…")
