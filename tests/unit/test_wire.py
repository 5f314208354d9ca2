"""envkit.wire against RFC 7677's SCRAM-SHA-256 example and a scripted fake server (refused
cleartext/MD5, a skipped SCRAM proof, errors, rows); real servers in
tests/integration/test_wire_real.py."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from envkit.wire import WireError, _Scram, connect


def test_scram_matches_rfc_7677() -> None:
    scram = _Scram("pencil")
    scram._nonce = "rOprNGfwEbeRWgbNEkqO"
    scram._first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    final = scram.client_final(server_first)
    assert final == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    scram.verify_server(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(WireError, match="signature"):
        scram.verify_server(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


def test_scram_refuses_a_nonce_that_is_not_ours() -> None:
    with pytest.raises(WireError, match="nonce"):
        _Scram("pencil").client_final(b"r=someone-else,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")


# -- a fake server, one scripted connection ---------------------------------------------------


def message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def receive(conn: socket.socket, *, startup: bool = False) -> tuple[bytes, bytes]:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise ConnectionError("client went away")
            data += chunk
        return data

    if startup:
        (length,) = struct.unpack("!i", exactly(4))
        return b"", exactly(length - 4)
    head = exactly(5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], exactly(length - 4)


READY = message(b"Z", b"I")
AUTH_OK = message(b"R", struct.pack("!i", 0))


def error(code: str, text: str) -> bytes:
    return message(b"E", b"SERROR\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0")


@pytest.fixture
def fake_server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    listener = socket.create_server(("127.0.0.1", 0))
    threads: list[threading.Thread] = []
    seen: list[BaseException] = []

    def serve(script: Callable[[socket.socket], None]) -> int:
        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                try:
                    script(conn)
                except BaseException as exc:  # surfaced after the test body
                    seen.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    yield serve
    for thread in threads:
        thread.join(5)
    listener.close()
    assert not seen, seen


def test_trust_login_then_rows_with_nulls(fake_server: Callable[..., int]) -> None:
    def script(conn: socket.socket) -> None:
        _, startup = receive(conn, startup=True)
        assert b"user\0app\0" in startup and b"database\0db\0" in startup
        conn.sendall(AUTH_OK + message(b"S", b"server_version\x0015\0") + READY)
        kind, body = receive(conn)
        assert (kind, body) == (b"Q", b"SELECT 1\0")
        row = struct.pack("!h", 2) + struct.pack("!i", 1) + b"1" + struct.pack("!i", -1)
        conn.sendall(message(b"T", b"") + message(b"D", row) + message(b"C", b"SELECT 1\0"))
        conn.sendall(READY)
        assert receive(conn)[0] == b"X"

    port = fake_server(script)
    with connect("127.0.0.1", port, "app", "db") as session:
        assert session.query("SELECT 1") == [["1", None]]


@pytest.mark.parametrize("code", [3, 5])
def test_cleartext_and_md5_requests_are_refused(fake_server: Callable[..., int], code: int) -> None:
    seen: list[bytes] = []

    def script(conn: socket.socket) -> None:
        receive(conn, startup=True)
        conn.sendall(message(b"R", struct.pack("!i", code) + b"salt"[: 4 if code == 5 else 0]))
        with contextlib.suppress(ConnectionError):
            seen.append(receive(conn)[1])

    port = fake_server(script)
    with (
        pytest.raises(WireError, match="refused"),
        connect("127.0.0.1", port, "app", "db", password="s3cret"),
    ):
        pass
    assert not any(b"s3cret" in data for data in seen)


def test_a_server_that_skips_the_scram_proof_is_not_believed(
    fake_server: Callable[..., int],
) -> None:
    def script(conn: socket.socket) -> None:
        receive(conn, startup=True)
        conn.sendall(message(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0"))
        receive(conn)  # the client-first message
        conn.sendall(AUTH_OK + READY)  # "fine, you're in", without SASLContinue/SASLFinal

    port = fake_server(script)
    with (
        pytest.raises(WireError, match="skipped"),
        connect("127.0.0.1", port, "app", "db", password="pw"),
    ):
        pass


def test_a_query_error_keeps_the_session_and_a_fatal_one_is_reported(
    fake_server: Callable[..., int],
) -> None:
    def script(conn: socket.socket) -> None:
        receive(conn, startup=True)
        conn.sendall(AUTH_OK + READY)
        receive(conn)
        conn.sendall(error("42P01", 'relation "t" does not exist') + READY)
        receive(conn)
        conn.sendall(message(b"C", b"SELECT 0\0") + READY)
        receive(conn)
        conn.sendall(error("57P01", "terminating connection due to administrator command"))

    port = fake_server(script)
    with connect("127.0.0.1", port, "app", "db") as session:
        with pytest.raises(WireError) as caught:
            session.query("SELECT * FROM t")
        assert caught.value.sqlstate == "42P01"
        assert session.query("SELECT 0") == []
        with pytest.raises(WireError) as caught:
            session.query("SELECT pg_sleep(10)")
        assert caught.value.sqlstate == "57P01"


def test_something_that_is_not_postgresql_is_refused(fake_server: Callable[..., int]) -> None:
    def script(conn: socket.socket) -> None:
        receive(conn, startup=True)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    port = fake_server(script)
    with (
        pytest.raises(WireError, match="not a PostgreSQL server"),
        connect("127.0.0.1", port, "app", "db"),
    ):
        pass


def test_startup_errors_and_missing_password(fake_server: Callable[..., int]) -> None:
    def starting_up(conn: socket.socket) -> None:
        receive(conn, startup=True)
        conn.sendall(error("57P03", "the database system is starting up"))

    port = fake_server(starting_up)
    with pytest.raises(WireError) as caught, connect("127.0.0.1", port, "app", "db"):
        pass
    assert caught.value.sqlstate == "57P03"

    def wants_password(conn: socket.socket) -> None:
        receive(conn, startup=True)
        conn.sendall(message(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0"))

    port = fake_server(wants_password)
    with pytest.raises(WireError, match="none was given"), connect("127.0.0.1", port, "a", "b"):
        pass


def test_a_closed_connection_is_a_connection_failure(fake_server: Callable[..., int]) -> None:
    port = fake_server(lambda conn: receive(conn, startup=True))
    with pytest.raises(WireError) as caught, connect("127.0.0.1", port, "app", "db"):
        pass
    assert caught.value.sqlstate == "08006"
