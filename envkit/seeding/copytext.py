"""COPY text, masked a batch at a time: escaping, splitting whole lines into fields, masking
whole columns (:class:`CopyMasker`), and reading ``COPY ... TO STDOUT`` straight from libpq."""

from __future__ import annotations

import contextlib
import operator
import select
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from envkit.errors import SeedError
from envkit.seeding.masking import CHANGED_CHECK, EXACT_CHECK, MASKERS, bind

if TYPE_CHECKING:
    import psycopg

BATCH_ROWS = 2_000
MEMO_LIMIT = 100_000  # distinct values remembered per column
MEMO_PROBE = 10_000  # after this many values, a memo missing over half of them is dropped
COPY_NULL = "\\N"


_UNESCAPES = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\", "b": "\b", "f": "\f", "v": "\v"}
_SPECIAL = ("\\", "\t", "\n", "\r")  # what a COPY text field cannot hold unescaped


def copy_unescape(field: str) -> str:
    """A COPY text field (not ``\\N``) as the value it stands for: ``\\t``, ``\\n``, ``\\\\``...
    back to characters. COPY TO writes only these escapes; other ``\\x`` become ``x``."""
    if "\\" not in field:
        return field
    out, i, n = [], 0, len(field)
    while i < n:
        ch = field[i]
        if ch == "\\" and i + 1 < n:
            out.append(_UNESCAPES.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def copy_escape(value: str) -> str:
    """``value`` as a COPY text field: backslash, tab, newline and carriage return escaped."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


class _Column:
    """One masked column: its rule bound to the key once, a bounded memo of repeated values
    (names, cities), and what the leak check needs (source values, rows left unchanged)."""

    def __init__(self, name: str, rule: str, key: bytes) -> None:
        self.name, self.rule = name, rule
        self.fn = bind(rule, key) if rule in MASKERS else None  # None: the "null" rule
        self.memo: dict[str, str] | None = {}
        self.seen = self.missed = 0  # values looked up in the memo, and how many were new
        self.originals: set[str] | None = set() if rule in EXACT_CHECK else None
        self.check_changed = rule in CHANGED_CHECK
        self.unchanged = 0

    def mask(self, fields: list[str]) -> list[str]:
        """The column's COPY text fields of one batch, masked (NULLs stay NULL)."""
        if self.fn is None:
            return [COPY_NULL] * len(fields)
        if "\\" in "".join(fields):  # escapes or NULLs in this batch: field by field
            return self._mask_escaped(fields)
        masked = self._apply(fields)
        self._account(fields, masked)
        joined = "".join(masked)
        if any(c in joined for c in _SPECIAL):  # only format-preserving rules keep such input
            return [copy_escape(m) for m in masked]
        return masked

    def _mask_escaped(self, fields: list[str]) -> list[str]:
        present = [i for i, f in enumerate(fields) if f != COPY_NULL]
        plain = [copy_unescape(fields[i]) for i in present]
        masked = self._apply(plain)
        self._account(plain, masked)
        out = list(fields)
        for i, value in zip(present, masked, strict=True):
            out[i] = copy_escape(value)
        return out

    def _apply(self, values: Sequence[str]) -> list[str]:
        fn, memo = self.fn, self.memo
        assert fn is not None
        if memo is not None:
            distinct = set(values)
            missing = distinct.difference(memo)
            self.seen += len(values)
            self.missed += len(missing)
            if self.seen >= MEMO_PROBE and self.missed * 2 > self.seen:
                self.memo = None  # mostly distinct values (emails, cards): a memo cannot pay
            elif len(distinct) <= MEMO_LIMIT:
                if len(memo) + len(missing) > MEMO_LIMIT:
                    memo.clear()  # bounded: start over rather than grow
                    missing = distinct
                for value in missing:
                    memo[value] = fn(value)
                return list(map(memo.__getitem__, values))
        return list(map(fn, values))

    def _account(self, plain: Sequence[str], masked: Sequence[str]) -> None:
        if self.originals is not None:
            self.originals.update(plain)
        if self.check_changed:
            self.unchanged += sum(map(operator.eq, plain, masked))


class CopyMasker:
    """Masks COPY text of one table a batch at a time: the batch's fields split into one flat
    list, each masked column taken out as a slice (every n-th field), masked as a whole (one
    call per column and batch, not per field), put back, and the lines joined again."""

    def __init__(self, columns: list[str], rules: list[str], key: bytes) -> None:
        self.columns = columns
        self.plan = [
            (i, _Column(c, r, key))
            for i, (c, r) in enumerate(zip(columns, rules, strict=True))
            if r != "keep"
        ]
        self.separators = ["\t"] * (len(columns) - 1) + ["\n"]

    def text(self, data: bytes) -> bytes:
        """Whole COPY text lines in, the same lines masked out."""
        if not self.plan or not data:
            return data
        n = len(self.columns)
        fields, rows = split_fields(utf8(data), n)
        for i, column in self.plan:
            fields[i::n] = column.mask(fields[i::n])
        out = [""] * (2 * len(fields))
        out[0::2] = fields
        out[1::2] = self.separators * rows
        return "".join(out).encode("utf-8")


def utf8(data: bytes) -> str:
    """COPY text as ``str``; ``SeedError`` for bytes that are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:  # a SQL_ASCII database holding other bytes
        raise SeedError(
            f"The source sent bytes that are not UTF-8 ({exc.reason}); they cannot be masked.",
            hint="Copy from a database with a real encoding (not SQL_ASCII).",
        ) from None


def split_fields(text: str, n: int) -> tuple[list[str], int]:
    """The fields of whole COPY text lines of ``n`` columns, in one flat list, and the number
    of lines. COPY text escapes tabs and newlines inside values: these are all boundaries."""
    if not text.endswith("\n"):
        raise SeedError("COPY data ended inside a line.")
    fields = text.replace("\n", "\t").split("\t")
    fields.pop()  # after the last newline
    rows = text.count("\n")
    if len(fields) != n * rows:
        raise SeedError(f"COPY data has {len(fields)} fields in {rows} rows of {n} columns.")
    return fields, rows


def copy_out(conn: psycopg.Connection[Any], query: str) -> Generator[bytes, None, None]:
    """``COPY (query) TO STDOUT`` in text format, in batches of whole lines.

    libpq hands over one row per call. psycopg's COPY reader wraps every call in its wait
    machinery, which costs about as much as masking a field (~1 us a row); here the rows are
    taken from libpq directly (psycopg's documented ``pq`` layer) and the socket is waited for
    only when libpq has nothing buffered.
    """
    from psycopg import errors, pq

    pg = conn.pgconn
    pg.send_query(f"COPY ({query}) TO STDOUT".encode())
    finished = False
    try:
        while pg.flush():  # psycopg's connections are nonblocking: send the whole query
            _wait_socket(pg.socket, write=True)
        result = _next_result(pg)
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            finished = True
            if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
                raise errors.error_from_result(result, encoding=conn.info.encoding)
            raise SeedError(f"COPY out of {query[:80]!r} did not start.")
        batch: list[bytes] = []
        while True:
            nbytes, data = pg.get_copy_data(1)  # -2 raises
            if nbytes > 0:
                # A copy, so libpq's buffer goes at once: a batch of live memoryviews costs
                # garbage-collector passes and ~10% of the whole copy.
                batch.append(bytes(data))
                if len(batch) >= BATCH_ROWS:
                    yield b"".join(batch)
                    batch.clear()
            elif nbytes == 0:
                _wait_socket(pg.socket, write=False)
                pg.consume_input()
            else:
                break
        finished = True
        result = _next_result(pg)
        if result is not None and result.status != pq.ExecStatus.COMMAND_OK:
            raise errors.error_from_result(result, encoding=conn.info.encoding)
        if batch:
            yield b"".join(batch)
    finally:
        # Leave the connection idle whatever happened; an error here must not hide the first.
        with contextlib.suppress(Exception):
            if not finished:  # stopped early (an error downstream): cancel the rest
                pg.get_cancel().cancel()
                while pg.get_copy_data(0)[0] >= 0:
                    pass
        with contextlib.suppress(Exception):
            while _next_result(pg) is not None:
                pass


def _wait_socket(fd: int, *, write: bool) -> None:
    """Until ``fd`` is readable (or writable); wakes each second so Ctrl-C is seen."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT if write else select.POLLIN)
    while not poller.poll(1000):
        pass


def _next_result(pg: Any) -> Any:
    """The next result of ``pg`` (a ``psycopg.pq.PGconn``), waiting for it; ``None`` at the end."""
    while pg.is_busy():
        _wait_socket(pg.socket, write=False)
        pg.consume_input()
    return pg.get_result()
