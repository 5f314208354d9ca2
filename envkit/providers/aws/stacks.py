"""Reaping the stacks of envkit's project in the Pulumi backend, from any runner.

A scheduled reap usually runs on a runner that created none of the stacks: their records are on
other runners' disks. So each stack is judged by what envkit stored with the stack itself — the
outputs ``envkit_expires_at``/``envkit_owner`` (in the backend's state, on every backend), else
the stack tags ``envkit:expires-at``/``envkit:owner`` (kept by service backends and recent CLIs
on DIY ones), else the config ``envkit:expiresAt``/``envkit:owner`` (on the runner that wrote it):

* no expiry stored (not envkit's, or a shared base stack) or not expired yet: kept, with why;
* expired: refreshed (a stale lock or pending operations of a killed run recovered first, as
  ``up``/``down`` do), its expiry read again, then destroyed and removed — or only removed when
  it holds nothing but its root stack resource. A failed destroy keeps the stack (``errors``);
  the next reap tries again.

Concurrency: a stack whose backend lock a live process holds is kept as busy, and so is one
whose pipeline this runner's envkit has locked. The expiry is read again after the refresh
(which held the lock), right before the destroy: an ``up`` of the same ID on another runner
either finished by then (its new expiry is read) or holds the lock (the destroy fails as
locked). Pulumi offers no lock held across two operations, so an ``up`` that starts and
finishes in the moment between that read and the destroy taking the lock is not seen.

A dry run takes no lock and writes nothing to the backend: it lists, reads outputs, tags,
config and state, and reads the lock files of a ``file://`` backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from envkit.errors import EnvkitError, LockedError
from envkit.naming import TAG_EXPIRES_AT, TAG_OWNER, is_pipeline_id, parse_iso
from envkit.providers.aws.automation import (
    Automation,
    AutomationFailure,
    LockHolder,
    StackHandle,
    StackListing,
    StackMissing,
    first_line,
    resource_count,
)
from envkit.providers.aws.recovery import holder_is_dead, with_recovery
from envkit.reaping import WORKERS, Decision, ReapOptions, ReapReport
from envkit.redact import scrub

log = logging.getLogger(__name__)

EXPIRES_OUTPUT = "envkit_expires_at"
OWNER_OUTPUT = "envkit_owner"
EXPIRES_CONFIG = "envkit:expiresAt"
OWNER_CONFIG = "envkit:owner"

Destroy = Callable[[StackHandle], None]


@dataclass(frozen=True)
class Stored:
    """The expiry and owner envkit stored with a stack, and where they were found."""

    expires_at: str | None = None
    owner: str | None = None
    source: str | None = None  # "outputs", "tags" or "config"


def read_stored(stack: StackHandle) -> Stored:
    """The expiry and owner stored with ``stack``: outputs, else tags, else config (reads)."""
    outputs = stack.outputs()
    if outputs.get(EXPIRES_OUTPUT):
        owner = outputs.get(OWNER_OUTPUT)
        return Stored(str(outputs[EXPIRES_OUTPUT]), str(owner) if owner else None, "outputs")
    tags = stack.tags()
    if tags.get(TAG_EXPIRES_AT):
        return Stored(tags[TAG_EXPIRES_AT], tags.get(TAG_OWNER), "tags")
    expires = stack.get_config(EXPIRES_CONFIG)
    if expires:
        return Stored(expires, stack.get_config(OWNER_CONFIG), "config")
    return Stored()


def decide_stack(stored: Stored, *, now: datetime, older_than: timedelta | None) -> Decision:
    """Whether to reap a stack with ``stored`` expiry (the reason is shown to users)."""
    if stored.expires_at is None:
        return Decision(
            False,
            "not envkit's: no expiry stored with the stack (output envkit_expires_at, tag "
            "envkit:expires-at or config envkit:expiresAt)",
        )
    try:
        expires = parse_iso(stored.expires_at)
    except ValueError:
        return Decision(False, f"unreadable expiry {stored.expires_at!r} stored with the stack")
    if expires > now:
        return Decision(False, f"until {stored.expires_at}")
    if older_than is not None and now - expires < older_than:
        return Decision(False, f"expired at {stored.expires_at}, within --older-than")
    return Decision(True, f"expired at {stored.expires_at}")


def backend_has_no_stacks(backend: str) -> bool:
    """A ``file://`` backend that was never written to (read without creating it)."""
    return backend.startswith("file://") and not (
        Path(backend.removeprefix("file://")) / ".pulumi"
    ).is_dir()


def _describe(holders: list[LockHolder]) -> str:
    return "; ".join(
        f"{h.user}@{h.host} pid {h.pid} since {h.created:%Y-%m-%dT%H:%M:%SZ}" for h in holders
    )


class StackReaper:
    """One pass over the backend's stacks of the project (see the module docstring)."""

    def __init__(
        self,
        automation: Automation,
        options: ReapOptions,
        *,
        destroy: Destroy,
        locally_busy: Callable[[str], bool] = lambda _name: False,
        secrets_: list[str] | None = None,
    ) -> None:
        self.automation = automation
        self.options = options
        self.destroy = destroy  # destroy (refreshed already) and remove; raises EnvkitError
        self.locally_busy = locally_busy
        self._secrets = secrets_ or []

    def run(self) -> ReapReport:
        """Decide on (and, unless a dry run, act on) every stack of the project."""
        report = ReapReport(dry_run=self.options.dry_run)
        try:
            listed = self.automation.list_stacks()
        except AutomationFailure as exc:
            report.errors.append(
                {
                    "pipeline_id": None,
                    "kind": "stack",
                    "error": f"listing the stacks in the Pulumi backend failed: "
                    f"{self._text(exc)}",
                }
            )
            return report
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for bucket, entry in pool.map(self._guarded, listed):
                report.add(bucket, entry)
        return report

    def _text(self, exc: BaseException) -> str:
        return first_line(scrub(str(exc), self._secrets))

    def _guarded(self, listing: StackListing) -> tuple[str, dict[str, Any] | None]:
        entry: dict[str, Any] = {
            "pipeline_id": listing.name if is_pipeline_id(listing.name) else None,
            "kind": "stack",
            "stack": listing.name,
        }
        try:
            return self._one(listing.name, entry)
        except StackMissing:
            return "kept", None  # removed by someone else since it was listed
        except LockedError as exc:
            entry["reason"] = f"busy: {exc.message}"
            return "kept", entry
        except EnvkitError as exc:
            entry["error"] = exc.message
            return "errors", entry
        except AutomationFailure as exc:
            entry["error"] = self._text(exc)
            return "errors", entry

    def _one(self, name: str, entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        stack = self.automation.select(name)
        stored = read_stored(stack)
        entry.update(expires_at=stored.expires_at, owner=stored.owner)
        decision = decide_stack(stored, now=self.options.now, older_than=self.options.older_than)
        entry["reason"] = decision.reason
        if not decision.reap:
            return "kept", entry
        if self.locally_busy(name):
            entry["reason"] = "busy: an envkit process on this runner holds its pipeline's lock"
            return "kept", entry
        holders = self.automation.lock_holders(name) or []
        live = [h for h in holders if holder_is_dead(h) is None]
        if live:
            entry["reason"] = f"busy: the backend lock is held by {_describe(live)}"
            return "kept", entry
        resources = resource_count(stack.export_state())
        entry["resources"] = resources
        if self.options.dry_run:
            entry["reason"] = decision.reason + (
                f"; {resources} resource(s) to destroy, then the stack removed"
                if resources
                else "; empty: the stack removed"
            ) + ("; the lock of a dead run cancelled first" if holders else "")
            return "reaped", entry
        return self._reap(stack, entry)

    def _reap(self, stack: StackHandle, entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        # The refresh takes the lock (recovering a dead run's lock and pending operations
        # first) and reconciles the state with what still exists.
        with_recovery(stack, lambda: stack.refresh(_log_progress), "refresh")
        stored = read_stored(stack)
        again = decide_stack(stored, now=self.options.now, older_than=self.options.older_than)
        entry.update(expires_at=stored.expires_at, owner=stored.owner)
        if not again.reap:
            entry["reason"] = f"extended while reaping: {again.reason}"
            return "kept", entry
        resources = resource_count(stack.export_state())
        entry["resources"] = resources
        if resources:
            log.info("reap: destroying the stack %s (%s)", stack.name, again.reason)
            self.destroy(stack)
            entry["reason"] = f"{again.reason}; {resources} resource(s) destroyed, stack removed"
        else:
            log.info("reap: removing the empty stack %s (%s)", stack.name, again.reason)
            self.automation.remove(stack.name)
            entry["reason"] = f"{again.reason}; empty: stack removed"
        return "reaped", entry


def _log_progress(step: str) -> None:
    log.info("%s", step)
