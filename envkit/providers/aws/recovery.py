"""Recovery after a killed run: the stale lock first, then the pending creates.

A run killed mid-``up`` leaves two things in the backend, and the order of their repair matters:

* **a lock** — every later operation (``refresh`` and ``pulumi stack import`` included) fails with
  ``ConcurrentUpdateError`` until it goes. envkit's own pipeline lock lives in one runner's
  ``ENVKIT_HOME``, so another runner may hold the stack lock legitimately: envkit cancels it only
  when its holder is provably dead — the DIY backend names ``user@host (pid N)``, and that host is
  this one with no such process, or the lock is older than :data:`STALE_LOCK_AGE`. Anything else
  is a ``LockedError`` naming the holder.
* **pending operations** — resources Pulumi was creating, updating or deleting. With the lock
  gone, ``pulumi refresh --clear-pending-creates`` drops the pending creates from the state
  (each is logged); a resource whose create was pending may exist in AWS untracked, and the tag
  sweep after every destroy deletes it by its ``envkit:pipeline-id`` tag.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from envkit.errors import LockedError
from envkit.processes import process_alive
from envkit.providers.aws.automation import LockHolder, StackHandle, StackLocked, first_line

log = logging.getLogger(__name__)

# No envkit operation holds a stack lock this long: an RDS create or delete takes up to ~40
# minutes and a destroy is retried three times with backoff, all well inside it.
STALE_LOCK_AGE = timedelta(hours=3)


def holder_is_dead(
    holder: LockHolder, *, now: datetime | None = None, host: str | None = None
) -> str | None:
    """Why ``holder`` is provably dead (same host and no such pid, or too old), else ``None``."""
    age = (now or datetime.now(UTC)) - holder.created
    if age > STALE_LOCK_AGE:
        return f"taken {age.total_seconds() / 3600:.1f} h ago (more than {STALE_LOCK_AGE})"
    if holder.host == (host or socket.gethostname()) and not _pid_alive(holder.pid):
        return f"process {holder.pid} on this host ({holder.host}) is gone"
    return None


def _pid_alive(pid: int) -> bool:
    """Whether the lock's holder runs: a killed one nobody reaped yet (a zombie) does not."""
    return process_alive(pid, {})


def with_recovery(stack: StackHandle, action: Callable[[], Any], what: str) -> Any:
    """Run ``action`` after clearing pending creates; on a lock whose holder is provably dead,
    cancel it, clear pending creates and retry once."""
    try:
        clear_pending_operations(stack)
        return action()
    except StackLocked as exc:
        holders = stack.lock_holders()
        reasons = [holder_is_dead(h) for h in holders]
        if not holders or not all(reasons):
            described = "; ".join(
                f"{h.user}@{h.host} pid {h.pid} since {h.created:%Y-%m-%dT%H:%M:%SZ}"
                for h in holders
            )
            raise LockedError(
                f"The Pulumi stack {stack.name!r} is locked by "
                f"{described or 'an update envkit cannot identify'}: {first_line(str(exc))}",
                hint="Another runner may be updating it (a retried job with the same pipeline "
                "ID?): wait for it. envkit cancels a lock by itself only when its process is "
                f"gone from this host or it is older than {STALE_LOCK_AGE}; Pulumi Cloud "
                "releases the lease of a dead update within minutes. 'pulumi cancel' forces it.",
            ) from None
        log.warning(
            "the stack %s is locked by a dead run (%s): cancelling the lock and retrying %s once",
            stack.name,
            "; ".join(r for r in reasons if r),
            what,
        )
        stack.cancel()
        clear_pending_operations(stack)
        try:
            return action()
        except StackLocked as again:
            raise LockedError(
                f"The Pulumi stack {stack.name!r} stays locked after 'pulumi cancel': "
                f"{first_line(str(again))}",
                hint="Another process is updating it: wait for it, or run 'pulumi cancel' "
                "against the backend yourself.",
            ) from None


def clear_pending_operations(stack: StackHandle) -> list[dict[str, Any]]:
    """Drop the pending operations a killed run left (``refresh --clear-pending-creates``),
    logging each; return them. Raises ``StackLocked`` while the lock is still there."""
    state = stack.export_state()  # a read: it does not take the lock
    deployment = state.get("deployment") or {}
    pending = list(deployment.get("pending_operations") or [])
    if not pending:
        return []
    for op in pending:
        urn = (op.get("resource") or {}).get("urn", "?")
        log.warning(
            "stack %s: clearing the pending %s of %s left by a killed run%s",
            stack.name,
            op.get("type", "operation"),
            urn,
            " (it may exist in AWS untracked: the post-destroy tag sweep deletes it)"
            if op.get("type") == "creating"
            else "",
        )
    stack.refresh(_log_progress, clear_pending_creates=True)
    return pending


def _log_progress(step: str) -> None:
    log.info("%s", step)
