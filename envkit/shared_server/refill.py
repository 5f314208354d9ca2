"""The detached refill of a spare pool on a shared server: started after an ``up`` that took a
spare or found none, it tops the pool up to its size under the pool's advisory lock (a refill
already running holds it: then it exits at once), at nice 19, and exits quietly when the server
is gone. One interpreter exec'd directly (no ``nice`` in front): its environment, which marks
it, is readable from /proc from the moment it is started.

The admin DSN reaches it through the environment variable ``ENVKIT_REFILL_DSN`` (readable only
by the same user, unlike argv), never through its command line; ``ENVKIT_REFILL_SERVER`` holds
the password-less reference, so tests and operators can find the refills of one server.
"""

from __future__ import annotations

import os
import sys

from envkit.shared_server import spares
from envkit.shared_server.dsn import Dsn
from envkit.shared_server.locks import try_lock, unlock
from envkit.shared_server.names import pool_name
from envkit.shared_server.session import Session

DSN_VARIABLE = "ENVKIT_REFILL_DSN"
SERVER_VARIABLE = "ENVKIT_REFILL_SERVER"
ROUNDS_PER_SPARE = 4  # a refill makes at most this many times the pool size, then exits


def start(admin_dsn: str, reference: str, template: str | None, size: int, owner: str) -> None:
    """Start the refill of ``template``'s pool (``None``: the empty database's) in the
    background; it outlives this process."""
    if size <= 0:
        return
    from envkit.commands import spawn_helper

    spawn_helper(  # one exec (no nice(1)): niced by main itself
        [sys.executable, "-m", __name__, template or "", str(size), owner],
        env={DSN_VARIABLE: admin_dsn, SERVER_VARIABLE: reference},
    )


def refill_pool(session: Session, dsn: Dsn, template: str | None, size: int, owner: str) -> int:
    """Make spares of ``template``'s pool until it holds ``size`` ready ones (nothing when
    another refill holds the pool's lock, or the template is gone); how many were made. Spares
    left half-made by a refill that died are dropped first."""
    from envkit.shared_server.templates import iso_utc_now

    pool = pool_name(template)
    key = spares.pool_lock(pool)
    if not try_lock(session, key):
        return 0
    made = 0
    try:
        for spare in spares.survey(session, pool):
            if not spare.ready:  # the pool's lock is ours: whoever was making it is gone
                spares.drop(session, spare)
        while made < size * ROUNDS_PER_SPARE:
            if spares.template_ready(session, template) is None:
                break
            ready = [s for s in spares.survey(session, pool) if s.ready]
            if len(ready) >= size:
                break
            spares.make(session, dsn, pool, template, owner, iso_utc_now())
            made += 1
    finally:
        unlock(session, key)
    return made


def main(argv: list[str]) -> int:
    """``python -m envkit.shared_server.refill TEMPLATE SIZE OWNER`` (the DSN in the
    environment). Quiet: its output goes nowhere, and a server that is gone ends it."""
    text = os.environ.pop(DSN_VARIABLE, "")
    try:
        os.nice(19)  # the ups it serves come first
        template, size, owner = argv[0] or None, int(argv[1]), argv[2]
        from envkit.shared_server.dsn import resolve
        from envkit.shared_server.session import connect

        dsn = resolve(text)
        with connect(dsn, application="envkit refill") as session:
            refill_pool(session, dsn, template, size, owner)
    except Exception:  # the server is gone, or the pool changed under it: the next up retries
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
