"""Durations as users write them: ``90s``, ``30m``, ``4h``, ``2d`` (or ``1h30m``)."""

from __future__ import annotations

import re
from datetime import timedelta

from envkit.errors import ConfigError

_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """Parse a positive duration or raise ``ConfigError`` naming ``what``."""
    cleaned = text.strip().lower()
    if not cleaned or _PART.sub("", cleaned) != "":
        raise ConfigError(
            f"The {what} {text!r} is not a duration.",
            hint="Use a number and a unit, for example 90s, 30m, 4h or 2d.",
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(cleaned))
    if seconds <= 0:
        raise ConfigError(f"The {what} {text!r} must be longer than zero.")
    if seconds > 366 * 86400:
        raise ConfigError(f"The {what} {text!r} is longer than a year; envkit refuses it.")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest ``2d3h``-style rendering of ``delta`` (seconds precision)."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)
