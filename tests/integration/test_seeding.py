"""Seeding real environments: deterministic data, safe values, no orphans, seeded templates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from envkit import lifecycle
from envkit.errors import ConfigError
from envkit.plan import Plan
from envkit.seeding import datasets
from envkit.seeding import pipeline as seeding
from envkit.seeding.masking import is_reserved_email, is_test_card
from envkit.settings import Settings
from envkit.state import StateStore

pytestmark = pytest.mark.integration

TABLES = ("users", "orders", "payments")
FKS = (("orders", "user_id", "users"), ("payments", "order_id", "orders"))


def dump_hash(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        return {
            t: conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM {t} t"
            ).fetchone()
            for t in TABLES
        }


def test_same_dataset_gives_identical_safe_data(settings: Settings) -> None:
    # A: copied from the seeded template by `up`; B: loaded by `envkit seed` into an empty one.
    a = lifecycle.up(Plan.build("seed-a", settings.with_(dataset="default")))
    assert a.timings["seed_from_template"] == 1.0 and a.timings["seed_rows"] == 10_000
    lifecycle.up(Plan.build("seed-b", settings, seed=False))
    summary = seeding.seed_pipeline(Plan.build("seed-b", settings), dataset="default")
    assert summary["stats"]["from_template"] == 0.0 and summary["stats"]["rows"] == 10_000
    b = lifecycle.status(Plan.build("seed-b", settings))
    assert b is not None and b.dataset == "default"
    assert dump_hash(a.outputs["DATABASE_URL"]) == dump_hash(b.outputs["DATABASE_URL"])

    with psycopg.connect(a.outputs["DATABASE_URL"]) as conn:
        emails = [r[0] for r in conn.execute("SELECT email FROM users")]
        assert emails and all(is_reserved_email(e) for e in emails)
        cards = [r[0] for r in conn.execute("SELECT card_number FROM payments")]
        assert cards and all(is_test_card(c) for c in cards)
        for child, column, parent in FKS:
            orphans = conn.execute(
                f"SELECT count(*) FROM {child} c LEFT JOIN {parent} p ON p.id = c.{column} "
                "WHERE p.id IS NULL"
            ).fetchone()
            assert orphans == (0,)
        constraints = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype IN ('p', 'f', 'u') "
            "AND connamespace = 'public'::regnamespace"
        ).fetchone()
        assert constraints == (6,)

    events = [json.loads(line) for line in StateStore(settings.home).events_path.open()]
    seeded = {e["pipeline_id"]: e for e in events if e["event"] == "seeded"}
    assert seeded["seed-a"]["rows_users"] == 2000 and seeded["seed-a"]["dataset"] == "default"
    assert seeded["seed-b"]["rows"] == 10_000 and seeded["seed-b"]["rows_per_s"] > 0


def test_other_version_gives_other_data(settings: Settings, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    shutil.copytree(Path(str(datasets.shipped_root())) / "default", seeds / "default")
    toml = seeds / "default" / "dataset.toml"
    toml.write_text(toml.read_text().replace('version = "1"', 'version = "2"'))
    v1 = lifecycle.up(Plan.build("seed-v1", settings.with_(dataset="default")))
    v2 = lifecycle.up(
        Plan.build("seed-v2", settings.with_(seeds_dir=seeds, dataset="default"))
    )
    h1, h2 = dump_hash(v1.outputs["DATABASE_URL"]), dump_hash(v2.outputs["DATABASE_URL"])
    assert all(h1[t][0] == h2[t][0] for t in TABLES)  # same shape
    assert all(h1[t][1] != h2[t][1] for t in TABLES)  # other data


def test_scale_multiplies_rows(settings: Settings) -> None:
    record = lifecycle.up(
        Plan.build("seed-s", settings.with_(seed_scale=0.5, dataset="default"))
    )
    with psycopg.connect(record.outputs["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (2000,)


def test_unknown_dataset_is_exit_2_and_creates_nothing(settings: Settings) -> None:
    with pytest.raises(ConfigError) as err:
        lifecycle.up(Plan.build("seed-x", settings.with_(dataset="no-such-data")))
    assert err.value.exit_code == 2 and "default" in err.value.message
    assert lifecycle.status(Plan.build("seed-x", settings)) is None
