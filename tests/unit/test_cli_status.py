"""How ``envkit status`` shows an environment's timings: durations in seconds, and the seeding's
counts (rows, warmed keys, whether it came from a template) as plain numbers."""

from __future__ import annotations

from envkit.cli.core import _timing


def test_durations_are_seconds_and_seed_counts_are_numbers() -> None:
    assert _timing("database", 0.7634) == "0.763s"
    assert _timing("seed_seconds", 0.0012) == "0.001s"
    assert _timing("seed_redis_seconds", 0.016) == "0.016s"
    assert _timing("seed_rows_users", 2000.0) == "2000"
    assert _timing("seed_redis_keys", 100) == "100"
    assert _timing("seed_from_template", 1.0) == "1"
    assert _timing("note", "n/a") == "n/a"
