"""The masked copy against real servers: tricky values survive COPY text exactly, nothing
unmasked is ever sent to the target, a leak is caught by reading the target back, and the
raw COPY reader leaves its connection usable whatever happens."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from envkit import lifecycle
from envkit.errors import SeedError
from envkit.plan import Plan
from envkit.seeding import copytext
from envkit.seeding import subsetting as s
from envkit.seeding.masking import MASKERS, luhn_check_digit, mask_email
from envkit.settings import Settings

pytestmark = pytest.mark.integration

KEY = b"integration-key-0123456789"

SCHEMA = """
CREATE TABLE people (
    id integer PRIMARY KEY,
    email text NOT NULL,
    phone text,
    card text,
    city text,
    note text,
    score numeric(6, 2)
);
"""
RULES = """
[subset]
root = "people"
where = "true"

[rules.people]
id = "keep"
email = "email"
phone = "phone"
card = "card"
city = "city"
note = "keep"
score = "keep"
"""
RULE_OF = {"email": "email", "phone": "phone", "card": "card", "city": "city"}
TRICKY = [
    "tab\there",
    "new\nline",
    "cr\rlf\r\n",
    "back\\slash",
    "\\N",
    "\\.",
    "ends\\",
    "naïve café 東京 🙂",
    "",
    None,
]


def card_number(i: int) -> str:
    body = f"4929{i:011d}"
    return body + luhn_check_digit(body)


def rows(count: int) -> list[tuple[Any, ...]]:
    out = []
    for i in range(count):
        tricky = TRICKY[i % len(TRICKY)]
        out.append(
            (
                i,
                f"person{i}@gmail.com" if i % 7 else f"We\tird\\{i}@Gmail.com",
                None if i % 5 == 0 else f"+1 415 {2000000 + i}",
                card_number(i) if i % 3 else f"4929\t{card_number(i)[4:8]}-{card_number(i)[8:]}",
                tricky if tricky is None else f"City {tricky} {i % 4}",
                tricky,
                i / 4,
            )
        )
    return out


@pytest.fixture
def servers(settings: Settings) -> Iterator[tuple[str, str]]:
    source = lifecycle.up(Plan.build("mask-src", settings)).outputs["DATABASE_URL"]
    target = lifecycle.up(Plan.build("mask-dst", settings)).outputs["DATABASE_URL"]
    yield source, target


def fill(url: str, data: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(SCHEMA)
        with conn.cursor().copy("COPY people FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)


def table(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT * FROM people ORDER BY id").fetchall()


def test_tricky_values_are_masked_exactly_and_kept_exactly(
    servers: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copytext, "BATCH_ROWS", 97)  # many batches, some ending mid-pattern
    source, target = servers
    data = rows(1000)
    fill(source, data)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    stats = s.copy_subset(source, rules, target, key=KEY)
    assert stats["rows"] == 1000
    copied = table(target)
    assert len(copied) == len(data)
    columns = ["id", "email", "phone", "card", "city", "note", "score"]
    for before, after in zip(table(source), copied, strict=True):
        for name, old, new in zip(columns, before, after, strict=True):
            if name in RULE_OF:
                expected = None if old is None else MASKERS[RULE_OF[name]](KEY, old)
                assert new == expected, (name, old)
            else:
                assert new == old, (name, old)  # tabs, newlines, backslashes, \N, unicode


def test_nothing_unmasked_is_sent_to_the_target(
    servers: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement, parameter and COPY byte the target receives is recorded: none holds
    a source email, phone or card (the leak check reads the target back instead)."""
    source, target = servers
    data = rows(300)
    fill(source, data)
    target_db = psycopg.conninfo.conninfo_to_dict(target)["dbname"]
    sent: list[str] = []

    def to_target(conn: psycopg.Connection[Any]) -> bool:
        return bool(conn.info.dbname == target_db)

    def spy_execute(original: Any) -> Any:
        def execute(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
            conn = self if isinstance(self, psycopg.Connection) else self.connection
            if to_target(conn):
                sent.append(repr(query) + repr(params))
            return original(self, query, params, **kw)

        return execute

    original_write = psycopg.Copy.write

    def write(self: Any, buffer: Any) -> None:
        if to_target(self.connection):
            sent.append(bytes(buffer).decode())
        original_write(self, buffer)

    monkeypatch.setattr(psycopg.Connection, "execute", spy_execute(psycopg.Connection.execute))
    monkeypatch.setattr(psycopg.Cursor, "execute", spy_execute(psycopg.Cursor.execute))
    monkeypatch.setattr(psycopg.Cursor, "copy", spy_execute(psycopg.Cursor.copy))
    monkeypatch.setattr(psycopg.Copy, "write", write)
    original_copy_out = copytext.copy_out

    def copy_out(conn: psycopg.Connection[Any], query: str) -> Generator[bytes, None, None]:
        if to_target(conn):
            sent.append(query)
        return original_copy_out(conn, query)

    monkeypatch.setattr(s, "copy_out", copy_out)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    s.copy_subset(source, rules, target, key=KEY)
    everything = "\n".join(sent)
    assert "COPY" in everything and "@example." in everything  # the spy saw the copy
    for row in data:
        for value in row[1:4]:
            if value:
                assert copytext.copy_escape(value) not in everything and value not in everything


def test_a_leak_is_caught_and_nothing_is_kept(servers: tuple[str, str], tmp_path: Path) -> None:
    """A source email that happens to be another row's pseudonym lands in the target: the
    read-back leak check sees it, and the copied tables are rolled back."""
    source, target = servers
    data = rows(20)
    victim = data[1][1]
    data[2] = (2, mask_email(KEY, victim), *data[2][2:])  # row 2 holds row 1's pseudonym
    data[1] = (1, victim, *data[1][2:])
    data = [data[2], data[1], *data[3:]]  # and the pseudonym's source comes first
    fill(source, data)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    with pytest.raises(SeedError, match=r"people\.email: 1 source value\(s\) present"):
        s.copy_subset(source, rules, target, key=KEY)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT to_regclass('public.people')").fetchone() == (None,)


def test_copy_out_leaves_its_connection_usable(
    servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = servers
    fill(source, rows(500))
    monkeypatch.setattr(copytext, "BATCH_ROWS", 50)
    with psycopg.connect(source) as conn:
        batches = list(copytext.copy_out(conn, "SELECT id, note FROM people ORDER BY id"))
        assert sum(b.count(b"\n") for b in batches) == 500 and len(batches) == 10
        assert batches[0].startswith(b"0\ttab\\there\n1\tnew\\nline\n")
        assert conn.execute("SELECT 1").fetchone() == (1,)  # idle again, same transaction

        with pytest.raises(psycopg.errors.UndefinedTable):
            list(copytext.copy_out(conn, "SELECT * FROM no_such_table"))
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)

        reader = copytext.copy_out(conn, "SELECT id FROM people")
        next(reader)
        reader.close()  # a consumer stopping early (an error downstream) cancels the COPY
        conn.rollback()
        assert conn.execute("SELECT 3").fetchone() == (3,)
