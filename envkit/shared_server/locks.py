"""Advisory locks on a shared server (session-level: they outlive a statement's transaction and
go with the session when it ends, so a killed envkit never leaves one behind). Keys come from
:func:`envkit.shared_server.names.lock_key`: one per pipeline, template, spare pool or spare."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from envkit.shared_server.session import Session


@contextmanager
def holding(session: Session, key: int) -> Iterator[None]:
    """Wait for the lock ``key``, hold it while the block runs."""
    session.query(f"SELECT pg_advisory_lock({key})")
    try:
        yield
    finally:
        session.query(f"SELECT pg_advisory_unlock({key})")


@contextmanager
def trying(session: Session, key: int) -> Iterator[bool]:
    """Take the lock ``key`` if it is free (no wait); yield whether it was taken, and release
    it after the block when it was."""
    taken = try_lock(session, key)
    try:
        yield taken
    finally:
        if taken:
            unlock(session, key)


def try_lock(session: Session, key: int) -> bool:
    """Take the lock ``key`` when it is free; whether it was."""
    return session.query(f"SELECT pg_try_advisory_lock({key})")[0][0] == "t"


def unlock(session: Session, key: int) -> None:
    session.query(f"SELECT pg_advisory_unlock({key})")


def lock_held(session: Session, key: int) -> bool:
    """Whether some session holds the lock ``key`` (read from pg_locks: no lock taken)."""
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    rows = session.query(
        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
        f"AND classid = {high}::bigint::oid AND objid = {low}::bigint::oid AND objsubid = 1"
    )
    return bool(rows)
