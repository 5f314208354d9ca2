"""The SCRAM-SHA-256 verifiers envkit hands PostgreSQL (RFC 5802 / 7677 fields, recomputed)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from envkit.providers.local.pgserver import SCRAM_ITERATIONS
from envkit.wire import scram_verifier


def test_verifier_has_postgresql_format_and_matches_the_password() -> None:
    verifier = scram_verifier("s3cret-token", SCRAM_ITERATIONS)
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt_b64 = iterations_salt.split(":")
    stored_b64, server_b64 = keys.split(":")
    assert method == "SCRAM-SHA-256"
    assert int(iterations) == SCRAM_ITERATIONS
    salted = hashlib.pbkdf2_hmac(
        "sha256", b"s3cret-token", base64.b64decode(salt_b64), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    assert "s3cret-token" not in verifier


def test_every_verifier_gets_its_own_salt() -> None:
    assert scram_verifier("same", 128) != scram_verifier("same", 128)
    assert scram_verifier("same", 4096).startswith("SCRAM-SHA-256$4096:")
