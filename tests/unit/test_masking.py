"""Masking functions: pure, keyed, format-preserving, safe by construction."""

from __future__ import annotations

import re

import pytest

from envkit.seeding import masking as m

KEY = b"k" * 32
OTHER = b"o" * 32


@pytest.mark.parametrize("rule", sorted(m.MASKERS))
def test_every_masker_is_pure_and_keyed(rule: str) -> None:
    fn = m.MASKERS[rule]
    value = {"card": "4929 1234 5678 9012", "date": "1980-05-17", "phone": "+44 20 7946 0000"}.get(
        rule, "Jane.Doe@gmail.com"
    )
    assert fn(KEY, value) == fn(KEY, value)
    if rule != "redact":
        outputs = {fn(bytes([i]) * 32, value) for i in range(8)}
        assert len(outputs) > 1, "the key must change the output"


def test_email_on_reserved_domain_and_unique() -> None:
    outputs = {m.mask_email(KEY, f"person{i}@gmail.com") for i in range(5000)}
    assert len(outputs) == 5000
    assert all(m.is_reserved_email(o) for o in outputs)
    assert m.mask_email(KEY, "A@B.com") == m.mask_email(KEY, " a@b.COM ")  # normalised input


def test_card_is_luhn_valid_test_range_keeps_last4_and_separators() -> None:
    real = "4929-1234-5678-9012"
    masked = m.mask_card(KEY, real)
    assert re.fullmatch(r"\d{4}-\d{4}-\d{4}-\d{4}", masked)
    assert masked.endswith("9012")
    assert m.is_test_card(masked)
    assert m.mask_card(KEY, real) != m.mask_card(OTHER, real)
    for i in range(2000):
        assert m.is_test_card(m.mask_card(KEY, f"5{i:015d}"))


def test_luhn() -> None:
    assert m.luhn_valid("4242424242424242")
    assert not m.luhn_valid("4242424242424241")
    assert m.luhn_check_digit("424242424242424") == "2"


def test_phone_is_fictional() -> None:
    for i in range(500):
        assert m.is_fictional_phone(m.mask_phone(KEY, f"+1 415 {i:07d}"))
    assert not m.is_fictional_phone("+1-415-555-1234")


@pytest.mark.parametrize(
    ("fn", "value"),
    [
        (m.mask_first_name, "Avery"),
        (m.mask_last_name, "Quill"),
        (m.mask_city, "Springfield"),
        (m.mask_name, "Avery Quill"),
    ],
)
def test_names_always_change(fn: m.Masker, value: str) -> None:
    for i in range(64):
        assert fn(bytes([i]) * 32, value).casefold() != value.casefold()


def test_date_and_postcode_formats() -> None:
    out = m.mask_date(KEY, "1980-05-17")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", out) and out != "1980-05-17"
    assert re.fullmatch(r"[A-Z]{2}\d \d[A-Z]{2}", m.mask_postcode(KEY, "SW1 2AA"))
    assert len(m.mask_token(KEY, "abc123")) == 6


def test_masking_key_from_env_or_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(m.KEY_ENV, raising=False)
    first = m.masking_key(tmp_path)
    assert first == m.masking_key(tmp_path) and len(first) == 32
    assert (tmp_path / "masking.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv(m.KEY_ENV, "x" * 20)
    assert m.masking_key(tmp_path) == b"x" * 20
    monkeypatch.setenv(m.KEY_ENV, "short")
    with pytest.raises(m.ConfigError):
        m.masking_key(tmp_path)
