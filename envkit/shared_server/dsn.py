"""The admin DSN of a shared server: parsing, its password (from the DSN, ``PGPASSWORD`` or a
``.pgpass`` file) and the password-less reference that records, events and output may show.

The admin password is a secret of the server's operator: it is never stored, printed or put on
a command line. Only :meth:`Dsn.reference` (the URL without the password) leaves this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from envkit.errors import ConfigError, PrerequisiteError

DEFAULT_PORT = 5432
DEFAULT_DBNAME = "postgres"
TLS_MODES = ("require", "verify-ca", "verify-full")
_SCHEMES = ("postgresql", "postgres")
CREDENTIALS_HINT = (
    "Give the admin password again through ENVKIT_DATABASE_SERVER (the DSN with its password), "
    "PGPASSWORD, or a ~/.pgpass (PGPASSFILE) line for that server and user."
)


@dataclass(frozen=True)
class Dsn:
    """A parsed ``postgresql://user[:password]@host[:port]/dbname[?sslmode=…]``."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = ()

    @property
    def sslmode(self) -> str | None:
        return dict(self.params).get("sslmode")

    @property
    def needs_tls(self) -> bool:
        """Whether connections must use TLS (envkit's own client speaks none)."""
        return self.sslmode in TLS_MODES

    def reference(self) -> str:
        """The DSN without its password: safe to store in a record and to print."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.host.startswith("/"):
            query = urlencode((("host", self.host), *self.params))
            return f"postgresql://{quote(self.user, safe='')}@:{self.port}/{self.dbname}?{query}"
        query = f"?{urlencode(self.params)}" if self.params else ""
        return f"postgresql://{quote(self.user, safe='')}@{host}:{self.port}/{self.dbname}{query}"

    def url(self, user: str, password: str, dbname: str) -> str:
        """A URL to ``dbname`` on this server for another role (the pipeline's)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?{urlencode(self.params)}" if self.params else ""
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{self.port}"
            f"/{quote(dbname, safe='')}{query}"
        )

    def same_server(self, other: Dsn) -> bool:
        """Whether both name one server and admin (the password aside)."""
        return (self.host, self.port, self.user) == (other.host, other.port, other.user)

    def psycopg_kwargs(self, dbname: str | None = None) -> dict[str, str]:
        """Keyword arguments for ``psycopg.connect`` (the password included)."""
        kwargs = dict(self.params)
        kwargs.update(host=self.host, port=str(self.port), user=self.user)
        kwargs["dbname"] = dbname or self.dbname
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs


def parse(text: str, *, env: Mapping[str, str] | None = None) -> Dsn:
    """Parse a ``postgresql://`` URL; ``ConfigError`` (never showing the password) when it is
    not one."""
    environ = os.environ if env is None else env
    try:
        parts = urlsplit(text.strip())
        port = parts.port
        username, password, hostname = parts.username, parts.password, parts.hostname
    except ValueError:
        raise ConfigError(
            f"The database server {redact(text)!r} is not a valid URL.", hint=_FORM
        ) from None
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"The database server {redact(text)!r} is not a postgresql:// URL.", hint=_FORM
        )
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    host = unquote(hostname) if hostname else ""
    for key, value in list(params):
        if key == "host":  # ?host=/run/postgresql: a unix socket directory
            host = value
            params.remove((key, value))
        elif key in ("password", "passfile"):
            raise ConfigError(
                f"The database server URL may not carry a {key} parameter.", hint=CREDENTIALS_HINT
            )
    user = unquote(username) if username else environ.get("PGUSER") or "postgres"
    dbname = unquote(parts.path.lstrip("/")) or DEFAULT_DBNAME
    return Dsn(
        host=host or environ.get("PGHOST") or "localhost",
        port=port or DEFAULT_PORT,
        user=user,
        dbname=dbname,
        password=unquote(password) if password is not None else None,
        params=tuple(params),
    )


_FORM = "Use postgresql://ADMIN@HOST:PORT/DBNAME (the password from PGPASSWORD or ~/.pgpass)."


def has_password(text: str) -> bool:
    """Whether ``text`` holds a password (a URL's ``user:password@``)."""
    try:
        return urlsplit(text.strip()).password is not None
    except ValueError:
        return ":" in text.split("@", 1)[0].split("//", 1)[-1]


def redact(text: str) -> str:
    """``text`` with the password of a URL replaced by ``***``."""
    try:
        parts = urlsplit(text.strip())
        if parts.password is None:
            return text
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparseable URL>"


def refuse_in_argv(text: str | None, option: str = "--database-server") -> None:
    """A password on the command line is visible to every user of the machine: refuse it."""
    if text is not None and has_password(text):
        raise ConfigError(
            f"{option} holds a password, and command lines are visible to other users.",
            hint="Pass the DSN without its password and give the password through "
            "PGPASSWORD or ~/.pgpass, or put the whole DSN in ENVKIT_DATABASE_SERVER.",
        )


def with_password(dsn: Dsn, *, env: Mapping[str, str] | None = None) -> Dsn:
    """``dsn`` with its password: its own, else ``PGPASSWORD``, else the first matching line of
    ``PGPASSFILE`` / ``~/.pgpass``; ``PrerequisiteError`` (exit 2) when there is none."""
    if dsn.password is not None:
        return dsn
    environ = os.environ if env is None else env
    found = environ.get("PGPASSWORD") or _from_passfile(dsn, environ)
    if found is None:
        raise PrerequisiteError(
            f"No password for {dsn.user} on the database server {dsn.reference()}.",
            hint=CREDENTIALS_HINT,
        )
    return replace(dsn, password=found)


def resolve(text: str, *, env: Mapping[str, str] | None = None) -> Dsn:
    """Parse ``text`` and find its password."""
    return with_password(parse(text, env=env), env=env)


def _from_passfile(dsn: Dsn, env: Mapping[str, str]) -> str | None:
    path = Path(env.get("PGPASSFILE") or Path(env.get("HOME") or Path.home()) / ".pgpass")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    host = "localhost" if dsn.host.startswith("/") else dsn.host
    wanted = (host, str(dsn.port), dsn.dbname, dsn.user)
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        fields = _split_pgpass(line)
        if len(fields) != 5:
            continue
        if all(f in ("*", w) for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4]
    return None


def _split_pgpass(line: str) -> list[str]:
    """A ``.pgpass`` line's fields (``\\:`` and ``\\\\`` escaped)."""
    fields: list[str] = []
    current, escaped = "", False
    for char in line:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    return fields
