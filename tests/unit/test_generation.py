"""Generation: deterministic by (dataset, version, table, column, row key), valid, safe."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from envkit.seeding import datasets, generation
from envkit.seeding.masking import is_fictional_phone, is_reserved_email, is_test_card
from envkit.settings import Settings


@pytest.fixture(scope="module")
def dataset() -> datasets.Dataset:
    return datasets.load(Settings.resolve({"home": Path("/nonexistent")}, env={}), "default")


def digest(gen: generation.Generator) -> str:
    h = hashlib.sha256()
    for table in gen.dataset.tables:
        for chunk in gen.copy_chunks(table.name):
            h.update(chunk)
    return h.hexdigest()


def test_mix_array_matches_pure_python() -> None:
    keys = np.arange(1, 1000, dtype=np.uint64)
    fast = generation.mix_array(12345, keys).tolist()
    assert fast == [generation.mix(12345, k) for k in range(1, 1000)]


def test_same_version_same_bytes_independent_of_chunking(dataset: datasets.Dataset) -> None:
    a, b = generation.Generator(dataset), generation.Generator(dataset)
    assert digest(a) == digest(b)
    whole = b"".join(a.copy_chunks("users"))
    pieces = b"".join(b.copy_chunks("users", chunk_rows=333))
    assert whole == pieces


def test_rows_do_not_depend_on_scale(dataset: datasets.Dataset) -> None:
    small = list(generation.Generator(dataset, 1.0).rows("users"))
    big = list(generation.Generator(dataset, 2.0).rows("users"))
    assert len(big) == 2 * len(small)
    assert big[: len(small)] == small


def test_other_version_other_data(dataset: datasets.Dataset) -> None:
    other = replace(dataset, version="2")
    assert digest(generation.Generator(dataset)) != digest(generation.Generator(other))


def test_values_are_safe_unique_and_fks_valid(dataset: datasets.Dataset) -> None:
    gen = generation.Generator(dataset)
    users = list(gen.rows("users"))
    emails = [u[3] for u in users]
    assert len(set(emails)) == len(emails)
    assert all(is_reserved_email(e) for e in emails)
    assert all(is_fictional_phone(u[4]) for u in users)
    order_ids = {o[0] for o in gen.rows("orders")}
    assert all(1 <= int(o[1]) <= len(users) for o in gen.rows("orders"))
    payments = list(gen.rows("payments"))
    assert all(p[1] in order_ids for p in payments)
    assert all(is_test_card(p[3]) for p in payments)
    assert all("\t" not in v and "\n" not in v for row in users for v in row)
