"""Masking: pure, keyed (HMAC-SHA256) functions that turn real values into safe look-alikes.

Every function is ``f(key, value) -> str``: the same key and value always give the same output
(so a masked foreign key still joins its masked primary key), different keys give unrelated
outputs, and without the key nothing can be reversed - an unkeyed hash of a card number or a
phone number is brute-forced in seconds, which is why there is no unkeyed variant here.
To mask many values, ``bind(rule, key)`` is the same function with the key prepared once.

Outputs are safe by construction: emails only on reserved domains (RFC 2606 / RFC 6761), card
numbers Luhn-valid but inside test ranges, phone numbers in the fictional NANP range 555-0100..0199.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import struct
from collections.abc import Callable
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

from envkit.errors import ConfigError

# Domains that can never reach a person (RFC 2606 and RFC 6761).
RESERVED_DOMAINS = ("example.com", "example.org", "example.net")
RESERVED_SUFFIXES = (".test", ".invalid", ".example", ".localhost")

# Published test card prefixes (Visa 4000 00.., Stripe's 4242 42.., Mastercard 5555 55..):
# processors never issue real cards in them.
TEST_CARD_PREFIXES = ("400000", "424242", "555555")
CARD_LENGTH = 16

# The NANP reserves 555-0100 through 555-0199 for fiction, in every area code.
FICTIONAL_EXCHANGE = "555"
FICTIONAL_LINES = range(100, 200)
AREA_CODES = (
    "201", "212", "213", "303", "312", "404", "415", "503", "512", "602",
    "617", "702", "713", "718", "804", "808", "907", "917", "949", "971",
)  # fmt: skip

FIRST_NAMES = (
    "Avery", "Blake", "Casey", "Dana", "Eden", "Finley", "Gray", "Harper", "Indigo", "Jordan",
    "Kai", "Logan", "Morgan", "Noel", "Oakley", "Parker", "Quinn", "Reese", "Sage", "Taylor",
    "Umber", "Val", "Wren", "Xen", "Yael", "Zion", "Arden", "Briar", "Cove", "Drew",
)  # fmt: skip
LAST_NAMES = (
    "Ashdown", "Birchley", "Calloway", "Dunmore", "Ellery", "Fairholt", "Glenmere", "Hartwell",
    "Ivesdale", "Jessop", "Kestrel", "Larkspur", "Merriweather", "Northcott", "Oakhurst",
    "Pemberton", "Quill", "Ravensworth", "Stonebridge", "Thistlewood", "Underhill", "Vantreight",
    "Whitlow", "Yarrowby", "Zellwood",
)  # fmt: skip
CITIES = (
    "Springfield", "Riverton", "Lakeside", "Fairview", "Greenville", "Oakridge", "Millbrook",
    "Cedar Falls", "Harborview", "Westfield", "Brookhaven", "Maplewood", "Pinecrest",
)  # fmt: skip
STREETS = ("Elm", "Maple", "Oak", "Pine", "Cedar", "Birch", "Willow", "Aspen", "Juniper")
STREET_KINDS = ("St", "Ave", "Rd", "Ln", "Way", "Ct")

KEY_ENV = "ENVKIT_MASKING_KEY"
_NON_DIGIT = re.compile(r"\D")
_ASCII_NON_DIGITS = bytes(b for b in range(128) if not chr(b).isdigit())
_U64 = struct.Struct(">Q").unpack_from  # int.from_bytes(d[i:i + 8], "big"), without the slice


Mac = Callable[[bytes], bytes]
Masker = Callable[[bytes, str], str]
Bound = Callable[[str], str]


@lru_cache(maxsize=16)
def _hmac_sha256(key: bytes) -> Mac:
    """HMAC-SHA256 under ``key`` (RFC 2104; the very digest of ``hmac.digest(key, m, "sha256")``)
    with the key's two padded blocks hashed once: per value only copies of the two states are
    updated, about twice as fast as ``hmac.new``/``hmac.digest``, which start from the key."""
    block = hashlib.sha256().block_size
    padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
    inner_copy = hashlib.sha256(bytes(b ^ 0x36 for b in padded)).copy
    outer_copy = hashlib.sha256(bytes(b ^ 0x5C for b in padded)).copy

    def mac(message: bytes) -> bytes:
        inner = inner_copy()
        inner.update(message)
        outer = outer_copy()
        outer.update(inner.digest())
        return outer.digest()

    return mac


def _picker(options: tuple[str, ...], mac: Mac, kind: str) -> Bound:
    """A keyed choice from ``options`` that is never the value itself (so names always change)."""
    prefix, folded, n = kind.encode() + b"\0", [o.casefold() for o in options], len(options)

    def pick(value: str) -> str:
        start = int.from_bytes(mac(prefix + value.encode())[:8], "big") % n
        plain = value.strip().casefold()
        for step in range(n):
            if folded[(start + step) % n] != plain:
                return options[(start + step) % n]
        raise AssertionError("a pool of one value cannot mask")  # pools here hold many values

    return pick


def _email(mac: Mac) -> Bound:
    domains, n = RESERVED_DOMAINS, len(RESERVED_DOMAINS)

    def email(value: str) -> str:
        d = mac(b"email\0" + value.strip().lower().encode())
        return f"user-{d[:6].hex()}@{domains[d[6] % n]}"

    return email


def _phone(mac: Mac) -> Bound:
    heads = [f"+1-{area}-{FICTIONAL_EXCHANGE}-0" for area in AREA_CODES]
    tails = [str(line) for line in FICTIONAL_LINES]

    def phone(value: str) -> str:
        if value.isascii():  # the digits (what \d matches) without a regex
            raw = value.encode()
            digits = raw if raw.isdigit() else raw.translate(None, _ASCII_NON_DIGITS)
        else:
            digits = _NON_DIGIT.sub("", value).encode()
        d = mac(b"phone\0" + digits)
        return heads[d[0] % len(heads)] + tails[d[1] % len(tails)]

    return phone


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # Luhn: a doubled digit's digit sum


def _luhn_sum(digits: str) -> int:
    rev = digits[::-1]
    return sum(map(int, rev[0::2])) + sum(_DOUBLED[int(c)] for c in rev[1::2])


def luhn_valid(number: str) -> bool:
    """Whether the digits of ``number`` pass the Luhn check."""
    digits = _NON_DIGIT.sub("", number)
    return len(digits) >= 2 and _luhn_sum(digits) % 10 == 0


def luhn_check_digit(body: str) -> str:
    """The digit that makes ``body + digit`` Luhn-valid."""
    return str(-_luhn_sum(body + "0") % 10)


def is_test_card(number: str) -> bool:
    """Luhn-valid, 16 digits, inside one of :data:`TEST_CARD_PREFIXES`."""
    digits = _NON_DIGIT.sub("", number)
    return (
        len(digits) == CARD_LENGTH and digits.startswith(TEST_CARD_PREFIXES) and luhn_valid(digits)
    )


@lru_cache(maxsize=1)
def _card_luhn_tables() -> tuple[list[int], list[int]]:
    """Luhn sums of a card's keyed middle (5 digits, places 9-5 from the right) and of its last
    four (places 3-0), by value: a card's sum is then two look-ups and its prefix's sum.
    Trailing zeros put a part at its place and add nothing."""
    mid_hi = [_luhn_sum(f"{i:03d}" + "0" * 7) for i in range(1000)]
    mid_lo = [_luhn_sum(f"{i:02d}" + "0" * 5) for i in range(100)]
    last_hi = [_luhn_sum(f"{i:02d}00") for i in range(100)]
    last_lo = [_luhn_sum(f"{i:02d}") for i in range(100)]
    return [h + lo for h in mid_hi for lo in mid_lo], [h + lo for h in last_hi for lo in last_lo]


def _card(mac: Mac) -> Bound:
    """Layout: test prefix (6) + keyed digits (5) + one digit chosen for Luhn + last four (4).
    The check digit sits at an even place from the right (not doubled): it is solved for."""
    # A prefix (no leading zero) * 10^5 + the keyed digits prints as the first 11 digits.
    prefixes = [(int(p) * 100_000, _luhn_sum(p + "0" * 10)) for p in TEST_CARD_PREFIXES]
    middles, lasts = _card_luhn_tables()

    def card(value: str) -> str:
        if value.isascii():
            raw = value.encode()
            digits = raw if raw.isdigit() else raw.translate(None, _ASCII_NON_DIGITS)
            count, last4 = len(digits), digits[-4:].rjust(4, b"0").decode()
        else:  # Unicode digits count as digits, as the regex has it
            text = _NON_DIGIT.sub("", value)
            digits, count, last4 = text.encode(), len(text), text[-4:].rjust(4, "0")
        d = mac(b"card\0" + digits)
        head, head_sum = prefixes[d[0] % len(prefixes)]
        middle = _U64(d, 1)[0] % 100_000
        fix = -(head_sum + middles[middle] + lasts[int(last4)]) % 10
        candidate = f"{(head + middle) * 10 + fix}{last4}"
        if count == CARD_LENGTH and len(value) != CARD_LENGTH:
            # Format-preserving: put the input's separators back where they were.
            it = iter(candidate)
            return "".join(next(it) if c.isdigit() else c for c in value)
        return candidate

    return card


def _name(mac: Mac) -> Bound:
    first, last = _picker(FIRST_NAMES, mac, "name.first"), _picker(LAST_NAMES, mac, "name.last")
    return lambda value: f"{first(value)} {last(value)}"


def _street(mac: Mac) -> Bound:
    def street(value: str) -> str:
        d = mac(b"street\0" + value.encode())
        number = 1 + int.from_bytes(d[:4], "big") % 9999
        kind = STREET_KINDS[d[5] % len(STREET_KINDS)]
        candidate = f"{number} {STREETS[d[4] % len(STREETS)]} {kind}"
        return candidate if candidate != value else f"{number + 1} {candidate.split(' ', 1)[1]}"

    return street


def _postcode(mac: Mac) -> Bound:
    def postcode(value: str) -> str:
        d = mac(b"postcode\0" + value.encode())
        if not any(c.isdigit() for c in value):
            return f"{int.from_bytes(d[:4], 'big') % 100_000:05d}"
        masked = "".join(str(d[i % len(d)] % 10) if c.isdigit() else c for i, c in enumerate(value))
        if masked == value:  # 1 in 10^digits: nudge the first digit so the value always changes
            first = next(i for i, c in enumerate(value) if c.isdigit())
            masked = masked[:first] + str((int(masked[first]) + 1) % 10) + masked[first + 1 :]
        return masked

    return postcode


def _date(mac: Mac) -> Bound:
    def shifted(value: str) -> str:
        day = date.fromisoformat(value.strip()[:10])
        message = value.encode()
        shift = 1 + int.from_bytes(mac(b"date\0" + message)[:4], "big") % 180
        sign = 1 if mac(b"date.sign\0" + message)[0] % 2 else -1
        try:
            return (day + timedelta(days=sign * shift)).isoformat()
        except OverflowError:
            return (day - timedelta(days=sign * shift)).isoformat()

    return shifted


def _token(mac: Mac) -> Bound:
    return lambda value: mac(b"token\0" + value.encode()).hex()[: max(1, min(len(value), 64))]


def _redact(mac: Mac) -> Bound:
    return lambda value: "[redacted]"


# Rule name -> a factory of the rule's masking function under one key.
# "keep" (mark a column safe) and "null" are handled by the copier.
_FACTORIES: dict[str, Callable[[Mac], Bound]] = {
    "email": _email,
    "phone": _phone,
    "card": _card,
    "first_name": lambda mac: _picker(FIRST_NAMES, mac, "first_name"),
    "last_name": lambda mac: _picker(LAST_NAMES, mac, "last_name"),
    "name": _name,
    "city": lambda mac: _picker(CITIES, mac, "city"),
    "street": _street,
    "postcode": _postcode,
    "date": _date,
    "token": _token,
    "redact": _redact,
}


@lru_cache(maxsize=64)
def bind(rule: str, key: bytes) -> Bound:
    """The masking function of ``rule`` under ``key``, for masking many values: the key's HMAC
    state and the rule's tables are prepared once. ``bind(r, k)(v) == MASKERS[r](k, v)``."""
    return _FACTORIES[rule](_hmac_sha256(key))


def mask_email(key: bytes, value: str) -> str:
    """``user-<hmac>@example.{com,org,net}``: unique per input, never a deliverable address."""
    return bind("email", key)(value)


def mask_phone(key: bytes, value: str) -> str:
    """A number in the fictional 555-01xx range, ``+1-AAA-555-01LL``."""
    return bind("phone", key)(value)


def mask_card(key: bytes, value: str) -> str:
    """A Luhn-valid test-range number keeping the input's last four digits and separators."""
    return bind("card", key)(value)


def mask_first_name(key: bytes, value: str) -> str:
    """A fictional first name, never the input."""
    return bind("first_name", key)(value)


def mask_last_name(key: bytes, value: str) -> str:
    """A fictional last name, never the input."""
    return bind("last_name", key)(value)


def mask_name(key: bytes, value: str) -> str:
    """A fictional full name ("First Last"), never the input."""
    return bind("name", key)(value)


def mask_city(key: bytes, value: str) -> str:
    """A generic city name, never the input."""
    return bind("city", key)(value)


def mask_street(key: bytes, value: str) -> str:
    """A generic street address (``<n> <Tree> <Kind>``)."""
    return bind("street", key)(value)


def mask_postcode(key: bytes, value: str) -> str:
    """Same shape: digits replaced by keyed digits, letters and spaces kept (``SW1A 1AA``);
    a value without digits becomes a keyed five-digit code."""
    return bind("postcode", key)(value)


def mask_date(key: bytes, value: str) -> str:
    """An ISO date within ±180 days of the input (keeps ages plausible), never the input."""
    return bind("date", key)(value)


def mask_token(key: bytes, value: str) -> str:
    """A keyed hex token of the input's length (max 64): for free-form identifiers."""
    return bind("token", key)(value)


def mask_redact(key: bytes, value: str) -> str:
    """A fixed placeholder for free text that must not survive at all."""
    return bind("redact", key)(value)


# Rule name -> function of (key, value).
MASKERS: dict[str, Masker] = {
    "email": mask_email,
    "phone": mask_phone,
    "card": mask_card,
    "first_name": mask_first_name,
    "last_name": mask_last_name,
    "name": mask_name,
    "city": mask_city,
    "street": mask_street,
    "postcode": mask_postcode,
    "date": mask_date,
    "token": mask_token,
    "redact": mask_redact,
}
SAFE_RULES = ("keep", "null")
RULES = (*SAFE_RULES, *MASKERS)
# Leak checks after a masked copy: high-entropy identifiers must never appear in the target at
# all; low-entropy values (names, cities) merely must have changed row by row.
EXACT_CHECK = frozenset({"email", "phone", "card", "token"})
CHANGED_CHECK = frozenset({"first_name", "last_name", "name", "city", "street", "date"})


def is_reserved_email(value: str) -> bool:
    """Whether ``value``'s domain is one that can never deliver mail."""
    domain = value.rsplit("@", 1)[-1].lower()
    return "@" in value and (domain in RESERVED_DOMAINS or domain.endswith(RESERVED_SUFFIXES))


def is_fictional_phone(value: str) -> bool:
    """Whether ``value`` is a NANP number in the fictional 555-0100..0199 range."""
    digits = _NON_DIGIT.sub("", value)
    if len(digits) == 11 and digits.startswith("1"):
        digits = digits[1:]
    return (
        len(digits) == 10
        and digits[3:6] == FICTIONAL_EXCHANGE
        and int(digits[6:]) in FICTIONAL_LINES
    )


def masking_key(home: Path) -> bytes:
    """The HMAC key: ``ENVKIT_MASKING_KEY`` when set, else a random per-machine key created once
    under ENVKIT_HOME (0600). Never logged; rotate it by deleting the file."""
    given = os.environ.get(KEY_ENV)
    if given:
        if len(given) < 16:
            raise ConfigError(
                f"{KEY_ENV} is too short to be a secret key.",
                hint="Use at least 16 random characters, e.g. 'openssl rand -hex 32'.",
            )
        return given.encode()
    path = home / "masking.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        pass
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # first writer wins; a racing process reads the winner's key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())
