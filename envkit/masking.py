"""Masking: pure, keyed (HMAC-SHA256) functions that turn real values into safe look-alikes.

Every function is ``f(key, value) -> str``: the same key and value always give the same output
(so a masked foreign key still joins its masked primary key), different keys give unrelated
outputs, and without the key nothing can be reversed - an unkeyed hash of a card number or a
phone number is brute-forced in seconds, which is why there is no unkeyed variant here.

Outputs are safe by construction: emails only on reserved domains (RFC 2606 / RFC 6761), card
numbers Luhn-valid but inside test ranges, phone numbers in the fictional NANP range 555-0100..0199.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from datetime import date, timedelta
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


def _digest(key: bytes, kind: str, value: str) -> bytes:
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()


def _pick(options: tuple[str, ...], key: bytes, kind: str, value: str) -> str:
    """A keyed choice from ``options`` that is never ``value`` itself (so names always change)."""
    start = int.from_bytes(_digest(key, kind, value)[:8], "big") % len(options)
    for step in range(len(options)):
        candidate = options[(start + step) % len(options)]
        if candidate.casefold() != value.strip().casefold():
            return candidate
    raise AssertionError("a pool of one value cannot mask")  # pools here hold many values


def mask_email(key: bytes, value: str) -> str:
    """``user-<hmac>@example.{com,org,net}``: unique per input, never a deliverable address."""
    d = _digest(key, "email", value.strip().lower())
    return f"user-{d[:6].hex()}@{RESERVED_DOMAINS[d[6] % len(RESERVED_DOMAINS)]}"


def mask_phone(key: bytes, value: str) -> str:
    """A number in the fictional 555-01xx range, ``+1-AAA-555-01LL``."""
    d = _digest(key, "phone", _NON_DIGIT.sub("", value))
    area = AREA_CODES[d[0] % len(AREA_CODES)]
    line = FICTIONAL_LINES[d[1] % len(FICTIONAL_LINES)]
    return f"+1-{area}-{FICTIONAL_EXCHANGE}-0{line}"


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


def mask_card(key: bytes, value: str) -> str:
    """A Luhn-valid test-range number keeping the input's last four digits and separators.

    Layout: test prefix (6) + keyed digits (5) + one digit chosen for Luhn + last four (4).
    """
    digits = _NON_DIGIT.sub("", value)
    d = _digest(key, "card", digits)
    prefix = TEST_CARD_PREFIXES[d[0] % len(TEST_CARD_PREFIXES)]
    middle = f"{int.from_bytes(d[1:9], 'big') % 100_000:05d}"
    last4 = digits[-4:].rjust(4, "0") if digits else "0000"
    # The fixed digit sits at an even place from the right (not doubled): solve for it.
    fix = str(-_luhn_sum(prefix + middle + "0" + last4) % 10)
    candidate = prefix + middle + fix + last4
    if len(digits) == CARD_LENGTH and len(value) != CARD_LENGTH:
        # Format-preserving: put the input's separators back where they were.
        it = iter(candidate)
        return "".join(next(it) if c.isdigit() else c for c in value)
    return candidate


def mask_first_name(key: bytes, value: str) -> str:
    """A fictional first name, never the input."""
    return _pick(FIRST_NAMES, key, "first_name", value)


def mask_last_name(key: bytes, value: str) -> str:
    """A fictional last name, never the input."""
    return _pick(LAST_NAMES, key, "last_name", value)


def mask_name(key: bytes, value: str) -> str:
    """A fictional full name ("First Last"), never the input."""
    first = _pick(FIRST_NAMES, key, "name.first", value)
    return f"{first} {_pick(LAST_NAMES, key, 'name.last', value)}"


def mask_city(key: bytes, value: str) -> str:
    """A generic city name, never the input."""
    return _pick(CITIES, key, "city", value)


def mask_street(key: bytes, value: str) -> str:
    """A generic street address (``<n> <Tree> <Kind>``)."""
    d = _digest(key, "street", value)
    number = 1 + int.from_bytes(d[:4], "big") % 9999
    candidate = f"{number} {STREETS[d[4] % len(STREETS)]} {STREET_KINDS[d[5] % len(STREET_KINDS)]}"
    return candidate if candidate != value else f"{number + 1} {candidate.split(' ', 1)[1]}"


def mask_postcode(key: bytes, value: str) -> str:
    """Same shape: digits replaced by keyed digits, letters and spaces kept (``SW1A 1AA``);
    a value without digits becomes a keyed five-digit code."""
    d = _digest(key, "postcode", value)
    if not any(c.isdigit() for c in value):
        return f"{int.from_bytes(d[:4], 'big') % 100_000:05d}"
    masked = "".join(str(d[i % len(d)] % 10) if c.isdigit() else c for i, c in enumerate(value))
    if masked == value:  # 1 in 10^digits: nudge the first digit so the value always changes
        first = next(i for i, c in enumerate(value) if c.isdigit())
        masked = masked[:first] + str((int(masked[first]) + 1) % 10) + masked[first + 1 :]
    return masked


def mask_date(key: bytes, value: str) -> str:
    """An ISO date within ±180 days of the input (keeps ages plausible), never the input."""
    day = date.fromisoformat(value.strip()[:10])
    shift = 1 + int.from_bytes(_digest(key, "date", value)[:4], "big") % 180
    sign = 1 if _digest(key, "date.sign", value)[0] % 2 else -1
    try:
        return (day + timedelta(days=sign * shift)).isoformat()
    except OverflowError:
        return (day - timedelta(days=sign * shift)).isoformat()


def mask_token(key: bytes, value: str) -> str:
    """A keyed hex token of the input's length (max 64): for free-form identifiers."""
    return _digest(key, "token", value).hex()[: max(1, min(len(value), 64))]


def mask_redact(key: bytes, value: str) -> str:
    """A fixed placeholder for free text that must not survive at all."""
    return "[redacted]"


Masker = Callable[[bytes, str], str]

# Rule name -> function. "keep" (mark a column safe) and "null" are handled by the copier.
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
