"""The Redis probe: ``AUTH`` + ``PING`` over envkit's own client (:mod:`envkit.kvwire`).

Connection refused, a server still loading its data or shutting down: transient (retry). A
wrong password or user (``WRONGPASS``), a missing ``AUTH`` (``NOAUTH``) or a refused command:
fatal, since waiting would not fix them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envkit.health.engine import ProbeError, TransientError
from envkit.kvwire import KvAddress, KvError, connect
from envkit.redact import redact_url, scrub

# Error replies that pass with time: loading the dataset, a busy script, a replica syncing.
TRANSIENT_CODES = frozenset({"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"})


@dataclass
class RedisProbe:
    """redis: log in (``AUTH``) and ``PING``; the answer must be ``PONG``."""

    url: str = field(repr=False)  # holds the password
    component: str = "redis"
    name: str = "redis"
    timeout: float = 1.0
    max_delay: float = 0.003

    def check(self) -> None:
        """Connect, authenticate, ping."""
        where = redact_url(self.url)
        try:
            address = KvAddress.from_url(self.url)
        except ValueError as exc:
            raise ProbeError(f"{where}: {exc}") from None
        secrets = [address.password or ""]
        try:
            with connect(address, timeout=self.timeout) as session:
                reply = session.command("PING")
        except KvError as exc:
            text = scrub(str(exc), secrets)
            if exc.code in TRANSIENT_CODES:
                raise TransientError(f"{where}: {text}") from None
            if exc.code == "WRONGPASS":
                raise ProbeError(f"{where}: the user or password is wrong ({text})") from None
            raise ProbeError(f"{where}: {text}") from None
        except OSError as exc:  # refused, reset, timed out, closed: the server is not up (yet)
            raise TransientError(f"{where}: {scrub(str(exc.strerror or exc), secrets)}") from None
        if reply != b"PONG":
            raise ProbeError(f"{where}: PING answered {reply!r}, not PONG")
