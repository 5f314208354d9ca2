"""envkit's own Redis protocol (RESP2) client: connect, ``AUTH``, commands, pipelines.

Standard library only, like :mod:`envkit.wire` for PostgreSQL: the health probe and the cache
seeding need a handful of commands, not a client library (none is a dependency of envkit).
A URL is ``redis://[user:password@]host[:port][/db]`` (``rediss://``: TLS, the server's
certificate verified against the system's CAs, as ElastiCache's in-transit encryption needs); its
password never appears in an error.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 6379
Reply = bytes | int | list["Reply"] | None


class KvError(Exception):
    """An error reply of the server (``-WRONGPASS ...``); ``code`` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message.split(" ", 1)[0]


@dataclass(frozen=True)
class KvAddress:
    """Where a Redis server is and who to log in as (from a ``redis://`` URL)."""

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> KvAddress:
        """Parse ``redis[s]://user:password@host:port/db``; ``ValueError`` when it is not one."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("not a redis://host or rediss://host URL")
        path = parts.path.strip("/")
        return cls(
            host=parts.hostname,
            port=parts.port or DEFAULT_PORT,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            db=int(path) if path else 0,
            tls=parts.scheme == "rediss",
        )


def encode(args: Sequence[str | bytes | int]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Session:
    """One connection; :meth:`command` sends and reads one reply, raising :class:`KvError`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")

    def _line(self) -> bytes:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the server closed the connection")
        return line[:-2]

    def read(self) -> Reply:
        """One reply; an error reply is returned as a :class:`KvError` raised by the caller."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise KvError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("the server closed the connection")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise ConnectionError(f"not a Redis reply: {line[:20]!r}")

    def command(self, *args: str | bytes | int) -> Reply:
        """Send one command and return its reply."""
        self._sock.sendall(encode(args))
        return self.read()

    def pipeline(self, commands: Sequence[Sequence[str | bytes | int]]) -> list[Reply]:
        """Send every command at once, then read their replies in order (the first error
        reply is raised after all replies are read, so the connection stays usable)."""
        if not commands:
            return []
        self._sock.sendall(b"".join(encode(c) for c in commands))
        replies: list[Reply] = []
        first: KvError | None = None
        for _ in commands:
            try:
                replies.append(self.read())
            except KvError as exc:
                first = first or exc
                replies.append(None)
        if first is not None:
            raise first
        return replies

    def close(self) -> None:
        self._file.close()
        self._sock.close()


@contextmanager
def connect(address: KvAddress, *, timeout: float = 2.0) -> Iterator[Session]:
    """A session logged in as the address's user (``AUTH``) on its database (``SELECT``)."""
    sock = socket.create_connection((address.host, address.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if address.tls:
        import ssl

        try:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address.host)
        except BaseException:
            sock.close()
            raise
    session = Session(sock)
    try:
        if address.password is not None:
            if address.username:
                session.command("AUTH", address.username, address.password)
            else:
                session.command("AUTH", address.password)
        if address.db:
            session.command("SELECT", address.db)
        yield session
    finally:
        session.close()
