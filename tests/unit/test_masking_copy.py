"""Masking COPY text a batch at a time: escapes, NULLs, memo, leak-check bookkeeping.

The fast path (whole columns, bound maskers, memo) must give exactly what the pure functions
give value by value, for every value COPY can carry.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import pytest

from envkit.errors import SeedError
from envkit.seeding import copytext as s
from envkit.seeding import masking as m

KEY = b"k" * 32

TRICKY = [
    "",
    " ",
    "plain",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\",
    "ends with backslash\\",
    "\\N",  # the two characters, not NULL
    "\\.",  # COPY's end-of-data marker, as data
    "\\t literal backslash-t",
    "bell\b form\f vtab\v",
    "naïve café 東京 🙂",
    "4929\t1234\t5678\t9012",  # a card with tabs as separators
    "SW1A\n1AA",  # a postcode with a newline
    "٤٩٢٩١٢٣٤٥٦٧٨٩٠١٢",  # Arabic-Indic digits
    "+1 (415) 555-2671",
    "Jane.Doe@Gmail.com",
]


def encode(rows: Sequence[Sequence[str | None]]) -> bytes:
    """Rows as COPY text, the way COPY TO writes them."""
    return "".join(
        "\t".join("\\N" if v is None else s.copy_escape(v) for v in row) + "\n" for row in rows
    ).encode()


def decode(data: bytes, n: int) -> list[list[str | None]]:
    fields, rows = s.split_fields(data.decode(), n)
    values = [None if f == "\\N" else s.copy_unescape(f) for f in fields]
    return [values[i * n : (i + 1) * n] for i in range(rows)]


@pytest.mark.parametrize("value", TRICKY)
def test_copy_escape_round_trip(value: str) -> None:
    escaped = s.copy_escape(value)
    assert not any(c in escaped for c in "\t\n\r")
    assert escaped != "\\N"
    assert s.copy_unescape(escaped) == value


def test_copy_unescape_reads_every_escape_copy_writes() -> None:
    assert s.copy_unescape("a\\tb\\nc\\rd\\\\e\\bf\\fg\\vh") == "a\tb\nc\rd\\e\bf\fg\vh"
    assert s.copy_unescape("no escapes") == "no escapes"


@pytest.mark.parametrize("rule", sorted(m.MASKERS))
def test_masked_batch_equals_the_pure_functions_value_by_value(rule: str) -> None:
    values: list[str | None] = [*TRICKY, None, "1980-05-17", "2000-02-29", None]
    if rule == "date":  # dates mask only what parses as one
        values = ["1980-05-17", "2000-02-29", None, "1999-12-31 23:59:59", "1980-05-17"]
    rows = [[str(i), v, v] for i, v in enumerate(values)]
    masker = s.CopyMasker(["id", "kept", "masked"], ["keep", "keep", rule], KEY)
    out = decode(masker.text(encode(rows)), 3)
    assert len(out) == len(rows)
    for (rid, kept, value), (oid, okept, masked) in zip(rows, out, strict=True):
        assert (oid, okept) == (rid, kept)  # kept columns come through byte for byte
        assert masked == (None if value is None else m.MASKERS[rule](KEY, value))


def test_null_rule_and_null_values() -> None:
    masker = s.CopyMasker(["a", "b"], ["null", "email"], KEY)
    out = decode(masker.text(encode([["x\ty", None], [None, "a@b.c"]])), 2)
    assert out == [[None, None], [None, m.mask_email(KEY, "a@b.c")]]


def test_a_table_with_nothing_to_mask_is_passed_through() -> None:
    data = encode([["1", "a\tb"], ["2", None]])
    assert s.CopyMasker(["id", "note"], ["keep", "keep"], KEY).text(data) is data


def test_masked_output_needing_escapes_is_escaped() -> None:
    """Format-preserving rules keep the input's separators: a tab or newline kept must be
    escaped, or the row would split."""
    masker = s.CopyMasker(["card", "postcode"], ["card", "postcode"], KEY)
    out = decode(masker.text(encode([["4929\t1234\t5678\t9012", "SW1A\n1AA"]])), 2)
    card, postcode = out[0]
    assert card == m.mask_card(KEY, "4929\t1234\t5678\t9012") and card is not None
    assert card.count("\t") == 3 and m.is_test_card(card)
    assert postcode == m.mask_postcode(KEY, "SW1A\n1AA")


def test_memo_is_bounded_and_never_changes_a_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s, "MEMO_LIMIT", 7)
    monkeypatch.setattr(s, "MEMO_PROBE", 10**9)  # keep the memo on, however often it misses
    masker = s.CopyMasker(["city"], ["city"], KEY)
    column = masker.plan[0][1]
    for batch in range(5):
        values = [f"Town{(batch * 3 + i) % 11}" for i in range(40)]
        out = decode(masker.text(encode([[v] for v in values])), 1)
        assert [r[0] for r in out] == [m.mask_city(KEY, v) for v in values]
        assert column.memo is not None and len(column.memo) <= 7


def test_memo_turns_itself_off_for_mostly_distinct_values_only() -> None:
    masker = s.CopyMasker(["email", "name"], ["email", "name"], KEY)
    for batch in range(4):
        rows = [[f"p{batch}.{i}@gmail.com", f"Pat Person{i % 997}"] for i in range(s.MEMO_PROBE)]
        out = decode(masker.text(encode(rows)), 2)
        assert out[1] == [m.mask_email(KEY, rows[1][0]), m.mask_name(KEY, rows[1][1])]
    email, name = masker.plan[0][1], masker.plan[1][1]
    assert email.memo is None
    assert name.memo is not None and len(name.memo) == 997


def test_leak_bookkeeping_sees_plain_values_and_unchanged_rows() -> None:
    masker = s.CopyMasker(["email", "city"], ["email", "city"], KEY)
    masker.text(encode([["a\\b@x.com", "Springfield"], [None, None], ["c@d.e", "Oslo"]]))
    email, city = masker.plan[0][1], masker.plan[1][1]
    assert email.originals == {"a\\b@x.com", "c@d.e"}  # unescaped, NULLs left out
    assert city.originals is None and city.unchanged == 0  # city names always change


def test_broken_copy_data_is_refused() -> None:
    masker = s.CopyMasker(["a", "b"], ["keep", "email"], KEY)
    with pytest.raises(SeedError, match="inside a line"):
        masker.text(b"1\ta@b.c")
    with pytest.raises(SeedError, match="fields"):
        masker.text(b"1\ta@b.c\textra\n")


@pytest.mark.parametrize("key", [b"", b"short", b"k" * 32, b"x" * 64, b"y" * 65, b"z" * 200])
def test_bound_hmac_is_hmac_sha256(key: bytes) -> None:
    mac = m._hmac_sha256(key)
    for message in (b"", b"email\0a@b.c", b"x" * 100):
        assert mac(message) == hmac.digest(key, message, hashlib.sha256)


@pytest.mark.parametrize("rule", sorted(m.MASKERS))
def test_bind_is_the_rule_under_the_key(rule: str) -> None:
    value = "1980-05-17" if rule == "date" else "4929 1234 5678 9012"
    assert m.bind(rule, KEY)(value) == m.MASKERS[rule](KEY, value)
    if rule != "redact":
        assert m.bind(rule, b"other-key-0123456789")(value) != m.bind(rule, KEY)(value)


@pytest.mark.parametrize(
    ("rule", "value", "masked"),
    [
        ("email", "Jane.Doe@Gmail.com", "user-d3912d90b1f2@example.org"),
        ("phone", "+44 20 7946 0000", "+1-617-555-0149"),
        ("card", "4929-1234-5678-9012", "4242-4216-7228-9012"),
        ("card", "4929123456789012", "4242421672289012"),
        ("name", "Avery Quill", "Zion Kestrel"),
        ("city", "Springfield", "Cedar Falls"),
        ("postcode", "SW1A 1AA", "SW8A 0AA"),
        ("date", "1980-05-17", "1980-01-21"),
        ("token", "abc123", "14597a"),
        ("street", "1 Main St", "9001 Maple St"),
    ],
)
def test_outputs_are_stable_across_versions(rule: str, value: str, masked: str) -> None:
    """Pinned outputs: a masked copy made by an older envkit still joins a newer one's."""
    assert m.MASKERS[rule](KEY, value) == masked
