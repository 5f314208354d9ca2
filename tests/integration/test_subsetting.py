"""Masked subsets of a real database: no source PII in the target, fail closed, no orphans.

The source is a second envkit environment filled with real-looking data: deliverable-looking
emails, phone numbers and Luhn-valid card numbers outside test ranges, a self-reference
(customers.referred_by) and a cycle (customers.favorite_order_id <-> orders.customer_id).
"""

from __future__ import annotations

import random
from pathlib import Path

import psycopg
import pytest

from envkit import lifecycle
from envkit.errors import ConfigError
from envkit.plan import Plan
from envkit.seeding import pipeline as seeding
from envkit.seeding.masking import (
    is_fictional_phone,
    is_reserved_email,
    is_test_card,
    luhn_check_digit,
)
from envkit.settings import Settings

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE customers (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    full_name text NOT NULL,
    phone text,
    city text NOT NULL,
    referred_by integer REFERENCES customers (id),
    favorite_order_id integer
);
CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id),
    card_number text NOT NULL,
    total numeric(10, 2) NOT NULL
);
ALTER TABLE customers ADD FOREIGN KEY (favorite_order_id) REFERENCES orders (id);
CREATE TABLE order_items (
    id serial PRIMARY KEY,
    order_id integer NOT NULL REFERENCES orders (id),
    sku text NOT NULL
);
CREATE INDEX order_items_order_id_idx ON order_items (order_id);
CREATE TABLE unrelated (id int PRIMARY KEY, secret text);
"""

RULES = """
[subset]
root = "customers"
where = "id % 10 = 0"

[rules.customers]
id = "keep"
email = "email"
full_name = "name"
phone = "phone"
city = "city"
referred_by = "keep"
favorite_order_id = "keep"

[rules.orders]
id = "keep"
customer_id = "keep"
card_number = "card"
total = "keep"

[rules.order_items]
id = "keep"
order_id = "keep"
sku = "keep"
"""

FIRST = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis"]
CITIES = ["Boston", "Denver", "Austin", "Seattle", "Chicago", "Portland"]


def real_card(rng: random.Random) -> str:
    body = "4929" + "".join(str(rng.randrange(10)) for _ in range(11))
    return body + luhn_check_digit(body)


def fill_source(url: str) -> dict[str, set[str]]:
    rng = random.Random(7)
    emails, phones, cards = set(), set(), set()
    with psycopg.connect(url) as conn:
        conn.execute(SCHEMA)
        for i in range(1, 501):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            email = f"{first}.{last}{i}@gmail.com".lower()
            phone = f"+1 415 {rng.randrange(2000000, 9999999)}"
            referred = rng.randrange(1, i) if i > 1 and rng.random() < 0.7 else None
            conn.execute(
                "INSERT INTO customers (email, full_name, phone, city, referred_by) "
                "VALUES (%s, %s, %s, %s, %s)",
                (email, f"{first} {last}", phone, rng.choice(CITIES), referred),
            )
            emails.add(email)
            phones.add(phone)
        for _ in range(1500):
            card = real_card(rng)
            cards.add(card)
            conn.execute(
                "INSERT INTO orders (customer_id, card_number, total) VALUES (%s, %s, %s)",
                (rng.randrange(1, 501), card, rng.randrange(100, 99999) / 100),
            )
        conn.execute(
            "UPDATE customers c SET favorite_order_id = (SELECT min(id) FROM orders o "
            "WHERE o.customer_id = c.id)"
        )
        conn.execute(
            "INSERT INTO order_items (order_id, sku) SELECT id, 'SKU-' || (id % 37) FROM orders"
        )
        conn.execute("INSERT INTO unrelated VALUES (1, 'not copied: not FK-connected')")
    return {"email": emails, "phone": phones, "card": cards}


@pytest.fixture
def pair(settings: Settings) -> tuple[str, str, dict[str, set[str]]]:
    # Empty databases (no dataset): the test fills the source and copies a subset into the target.
    source = lifecycle.up(Plan.build("sub-src", settings, seed=False)).outputs["DATABASE_URL"]
    target = lifecycle.up(Plan.build("sub-dst", settings, seed=False)).outputs["DATABASE_URL"]
    return source, target, fill_source(source)


def public_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return sorted(r[0] for r in rows)


def test_masked_subset_has_no_source_pii_and_no_orphans(
    pair: tuple[str, str, dict[str, set[str]]], settings: Settings, tmp_path: Path
) -> None:
    source, target, real = pair
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    summary = seeding.seed_pipeline(Plan.build("sub-dst", settings), source=source, rules=rules)
    stats = summary["stats"]
    assert stats["rows_customers"] >= 50 and stats["rows_orders"] > 0
    assert public_tables(target) == ["customers", "order_items", "orders"]
    with psycopg.connect(target) as conn:
        emails = {r[0] for r in conn.execute("SELECT email FROM customers")}
        phones = {r[0] for r in conn.execute("SELECT phone FROM customers")}
        cards = {r[0] for r in conn.execute("SELECT card_number FROM orders")}
        assert not emails & real["email"] and all(is_reserved_email(e) for e in emails)
        assert not phones & real["phone"] and all(is_fictional_phone(p) for p in phones)
        assert not cards & real["card"] and all(is_test_card(c) for c in cards)
        for query in (
            "SELECT count(*) FROM customers c WHERE referred_by IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM customers p WHERE p.id = c.referred_by)",
            "SELECT count(*) FROM customers c WHERE favorite_order_id IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = c.favorite_order_id)",
            "SELECT count(*) FROM orders o "
            "WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id)",
            "SELECT count(*) FROM order_items i "
            "WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = i.order_id)",
        ):
            assert conn.execute(query).fetchone() == (0,), query
        # every root row and all of its orders (dependants) came along
        roots = conn.execute("SELECT count(*) FROM customers WHERE id % 10 = 0").fetchone()
        assert roots == (50,)
        fks = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()
        assert fks == (4,)
        # sequences continue after the copied ids: inserting still works
        conn.execute("INSERT INTO order_items (order_id, sku) SELECT min(id), 'new' FROM orders")
    with psycopg.connect(source) as conn:
        orders_of_roots = conn.execute(
            "SELECT count(*) FROM orders WHERE customer_id % 10 = 0"
        ).fetchone()
    with psycopg.connect(target) as conn:
        copied = conn.execute("SELECT count(*) FROM orders WHERE customer_id % 10 = 0").fetchone()
    assert copied == orders_of_roots


def test_unclassified_column_aborts_before_any_row(
    pair: tuple[str, str, dict[str, set[str]]], settings: Settings, tmp_path: Path
) -> None:
    _source, target, _real = pair
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES.replace('city = "city"\n', ""))
    with pytest.raises(ConfigError) as err:
        seeding.seed_pipeline(Plan.build("sub-dst", settings), source=_source, rules=rules)
    assert err.value.exit_code == 2
    assert "customers.city" in err.value.message
    assert public_tables(target) == []
