"""A minimal PostgreSQL client (protocol 3.0) for envkit's own servers, in the standard library.

``envkit up`` talks to its new server twice: once as the superuser over the private unix socket
(trust) to turn the template's placeholder role into the pipeline's, once as that role over TCP
(SCRAM-SHA-256) to check it is healthy. Spawning ``psql`` for each costs several times the CPU
of an in-process client, and importing psycopg costs about a tenth of a second: on two cores
running eight ups at once, both show (figures: docs/benchmarks.md).

This module speaks just enough of the protocol for that: startup, trust or SCRAM-SHA-256
authentication (the server must prove it knows the password before it is believed; cleartext and
MD5 requests are refused, as they would hand the password to whatever listens on the port), the
simple query protocol, and errors with their SQLSTATE. No TLS: other servers are reached with
psycopg (envkit.health picks this client only for the local provider's own servers).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

PROTOCOL = 196608  # 3.0
MAX_MESSAGE = 1 << 30  # PostgreSQL's own limit on a message

Row = list[str | None]


class WireError(Exception):
    """An error the server reported (``sqlstate`` set) or a protocol failure (``sqlstate``
    empty). The message never holds the password."""

    def __init__(self, message: str, sqlstate: str = "") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class Session:
    """One authenticated connection; use :func:`connect`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    # -- messages -------------------------------------------------------------------------------
    def _send(self, kind: bytes, payload: bytes) -> None:
        self._sock.sendall(kind + struct.pack("!i", len(payload) + 4) + payload)

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self._sock.recv(max(65536, size - len(self._buffer)))
            if not chunk:
                raise WireError("the server closed the connection", "08006")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def _receive(self) -> tuple[bytes, bytes]:
        head = self._read(5)
        (length,) = struct.unpack("!i", head[1:5])
        if not 4 <= length <= MAX_MESSAGE:
            raise WireError(f"not a PostgreSQL server (message length {length})", "08P01")
        return head[:1], self._read(length - 4)

    # -- queries ----------------------------------------------------------------------------------
    def query(self, sql: str) -> list[Row]:
        """Run ``sql`` (one or more statements, simple protocol); the rows returned, in text.
        Raises :class:`WireError` with the SQLSTATE of the first error."""
        self._send(b"Q", sql.encode() + b"\0")
        rows: list[Row] = []
        error: WireError | None = None
        while True:
            try:
                kind, body = self._receive()
            except WireError:
                if error is not None:  # a FATAL error, then the server hung up: say why
                    raise error from None
                raise
            if kind == b"D":
                rows.append(_data_row(body))
            elif kind == b"E" and error is None:
                error = _error(body)
            elif kind in (b"G", b"W"):  # COPY FROM STDIN: nothing to send, refuse it
                self._send(b"c" if kind == b"W" else b"f", b"" if kind == b"W" else b"no data\0")
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows

    def close(self) -> None:
        try:
            self._send(b"X", b"")
        except OSError:
            pass
        finally:
            self._sock.close()


@contextmanager
def connect(
    host: str,
    port: int,
    user: str,
    dbname: str,
    *,
    password: str | None = None,
    timeout: float = 5.0,
    application_name: str = "envkit",
) -> Iterator[Session]:
    """An authenticated session; ``host`` is an address, a name or a unix socket directory."""
    if host.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(os.path.join(host, f".s.PGSQL.{port}"))
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    session = Session(sock)
    try:
        _start(session, user, dbname, password, application_name)
        yield session
    finally:
        session.close()


def _start(
    session: Session, user: str, dbname: str, password: str | None, application_name: str
) -> None:
    params = b"".join(
        key.encode() + b"\0" + value.encode() + b"\0"
        for key, value in (
            ("user", user),
            ("database", dbname),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        )
    )
    payload = struct.pack("!i", PROTOCOL) + params + b"\0"
    session._sock.sendall(struct.pack("!i", len(payload) + 4) + payload)
    scram: _Scram | None = None
    while True:
        kind, body = session._receive()
        if kind == b"E":
            raise _error(body)
        if kind == b"Z":
            return
        if kind != b"R":
            continue  # ParameterStatus, BackendKeyData, NoticeResponse
        (code,) = struct.unpack("!i", body[:4])
        if code == 0:  # AuthenticationOk; ReadyForQuery follows
            if scram is not None and not scram.verified:
                raise WireError("SCRAM: the server skipped proving it knows the password")
            continue
        if password is None:
            raise WireError("the server asks for a password and none was given", "28P01")
        if code in (3, 5):
            # Cleartext or MD5: envkit's servers never ask for them, and answering would hand
            # the password (or a replayable hash) to whatever listens on that port.
            raise WireError("the server asks for a cleartext or MD5 password; refused", "28000")
        if code == 10:  # SASL: the mechanisms offered
            if b"SCRAM-SHA-256\0" not in body[4:]:
                raise WireError("the server offers no SASL mechanism envkit speaks")
            scram = _Scram(password)
            first = scram.client_first()
            session._send(
                b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
            )
        elif code == 11 and scram is not None:  # SASLContinue
            session._send(b"p", scram.client_final(body[4:]))
        elif code == 12 and scram is not None:  # SASLFinal
            scram.verify_server(body[4:])
        else:
            raise WireError(f"unsupported authentication request {code}")


class _Scram:
    """SCRAM-SHA-256 (RFC 5802 / 7677), without channel binding, as libpq does over plain TCP."""

    def __init__(self, password: str) -> None:
        self._password = password.encode()
        self._nonce = base64.b64encode(os.urandom(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""
        self.verified = False

    def client_first(self) -> bytes:
        return f"n,,{self._first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        try:
            text = server_first.decode()
            fields = dict(part.split("=", 1) for part in text.split(","))
            nonce, salt, rounds = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise WireError(f"SCRAM: malformed server-first message ({exc})") from None
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce) or rounds < 1:
            raise WireError("SCRAM: the server's nonce or round count is not acceptable")
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, rounds)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        message = f"{self._first_bare},{text},{without_proof}".encode()
        signature = hmac.new(stored_key, message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self._server_signature = hmac.new(server_key, message, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server(self, server_final: bytes) -> None:
        try:
            fields = dict(part.split("=", 1) for part in server_final.decode().split(","))
            signature = base64.b64decode(fields["v"])
        except (ValueError, KeyError, UnicodeDecodeError):
            signature = b""
        if not self._server_signature or not hmac.compare_digest(
            signature, self._server_signature
        ):
            raise WireError("SCRAM: the server's signature does not match")
        self.verified = True


def _data_row(body: bytes) -> Row:
    (count,) = struct.unpack("!h", body[:2])
    row: Row = []
    offset = 2
    for _ in range(count):
        (size,) = struct.unpack("!i", body[offset : offset + 4])
        offset += 4
        if size < 0:
            row.append(None)
        else:
            row.append(body[offset : offset + size].decode())
            offset += size
    return row


def _error(body: bytes) -> WireError:
    fields = {chunk[:1]: chunk[1:].decode(errors="replace") for chunk in body.split(b"\0") if chunk}
    message = fields.get(b"M", "unknown error")
    if fields.get(b"D"):
        message += f" ({fields[b'D']})"
    return WireError(message, fields.get(b"C", ""))


def scram_verifier(password: str, iterations: int) -> str:
    """A SCRAM-SHA-256 verifier for ``password`` with ``iterations`` PBKDF2 rounds, so the plain
    password never reaches the server (nor its logs): PostgreSQL stores verifiers as given."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )
