"""Secrets: a type whose ``repr`` masks its value, and the rules for what is secret in outputs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

MASK = "********"

# Output keys whose values are secret, and keys that embed a secret (URLs with a password).
_SECRET_KEY = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY)$")


class Secret:
    """A string that does not show itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value; call it only where the value must leave the process."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def is_secret_key(key: str) -> bool:
    """Whether an output key holds a secret value."""
    return bool(_SECRET_KEY.search(key))


def redact_url(url: str) -> str:
    """``url`` with any password replaced by the mask."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_outputs(outputs: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``outputs`` safe to print: secret values masked, passwords cut out of URLs."""
    safe: dict[str, str] = {}
    for key, value in outputs.items():
        if is_secret_key(key):
            safe[key] = MASK
        elif "://" in value:
            safe[key] = redact_url(value)
        else:
            safe[key] = value
    return safe


def secret_values(outputs: Mapping[str, str]) -> list[str]:
    """Every secret value in ``outputs`` (to mask in CI logs or scrub from messages)."""
    found = [v for k, v in outputs.items() if is_secret_key(k) and v]
    for value in outputs.values():
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password and password not in found:
                found.append(password)
    return found


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of every secret replaced by the mask."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
