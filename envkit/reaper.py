"""The reaper: removes what outlived its purpose, and nothing else.

What it reaps (for one ``ENVKIT_HOME`` and one provider):

- environments whose TTL has passed (any status);
- environments stuck in ``provisioning``/``destroying`` whose owner died (their lock is free: a
  ``flock`` dies with its process, so a free lock on a busy record proves the owner is gone);
- pipelines with no record that the provider still holds something of (``Provider.leftovers``);
- lock files of pipelines with no record;
- whatever else the provider left that belongs to no pipeline of this home
  (``Provider.reap_leftovers``: the local provider's half-done copies, stale templates and
  deleted homes; the aws provider's tag sweep).

Every decision about a pipeline is taken, and acted on, while holding that pipeline's lock, so a
concurrent ``up``/``down`` is never raced: a locked pipeline is always kept. A dry run takes no
lock and writes nothing: locks are probed read-only.
"""

from __future__ import annotations

import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from envkit.commands import stop_orphaned_command
from envkit.errors import EnvkitError, PrerequisiteError
from envkit.locking import FileLock, is_locked
from envkit.naming import is_pipeline_id
from envkit.processes import process_alive
from envkit.providers import Provider, get_provider
from envkit.reaping import (
    WORKERS,
    Decision,
    Leftover,
    ReapOptions,
    ReapReport,
    decide,
    decide_orphan,
)
from envkit.settings import Settings
from envkit.state import BUSY_STATUSES, Record, StateStore, Status, utcnow

__all__ = ["Decision", "ReapReport", "Reaper", "decide", "decide_orphan", "reap"]


class Reaper:
    """One reap over one ``ENVKIT_HOME`` (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        dry_run: bool = False,
        older_than: timedelta | None = None,
        provider: str | None = None,
        now: datetime | None = None,
    ) -> None:
        self.settings = settings
        self.dry_run = dry_run
        self.older_than = older_than
        self.provider_name = provider or settings.provider
        self.now = now or utcnow()
        self.options = ReapOptions(now=self.now, dry_run=dry_run, older_than=older_than)
        self.store = StateStore(settings.home)
        self.report = ReapReport(dry_run=dry_run)
        self._providers: dict[str, Provider] = {}

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = get_provider(name, self.settings)
        return self._providers[name]

    # -- entry point ----------------------------------------------------------------------------
    def run(self) -> ReapReport:
        """Reap records and the provider's unrecorded pipelines, stray lock files, then the
        provider's other leftovers."""
        self._check_home()
        stored = self.store.all()
        for bad in [r for r in stored if not is_pipeline_id(r.pipeline_id)]:
            self.report.kept.append(
                {
                    "pipeline_id": None,
                    "kind": "environment",
                    "resource": ascii(bad.pipeline_id),
                    "reason": "not a valid pipeline ID (written by hand or by an old envkit): "
                    "remove its record by hand",
                }
            )
        stored = [r for r in stored if is_pipeline_id(r.pipeline_id)]
        records = [r for r in stored if r.provider == self.provider_name]
        provider = self._provider_or_report()
        orphans = []
        if provider is not None:
            known = {r.pipeline_id for r in stored}
            # A provider's marks are evidence only: each ID is validated again here.
            orphans = [o for o in provider.leftovers(known) if is_pipeline_id(o.pipeline_id)]
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = list(pool.map(self._recorded, [r.pipeline_id for r in records]))
            results += list(pool.map(self._orphan, orphans))
        for bucket, entry in results:
            self.report.add(bucket, entry)
        if provider is not None:
            self.report.merge(provider.reap_leftovers(self.options))
        self._stray_lock_files()
        for entries in (self.report.reaped, self.report.kept, self.report.errors):
            entries.sort(key=lambda e: (str(e.get("pipeline_id")), str(e.get("kind"))))
        return self.report

    def _provider_or_report(self) -> Provider | None:
        """The provider reaped, or None (and an error entry) when it cannot be loaded here."""
        try:
            return self.provider(self.provider_name)
        except ImportError as exc:
            self.report.errors.append(
                {
                    "pipeline_id": None,
                    "kind": "provider",
                    "error": f"the {self.provider_name} provider is not available: {exc}",
                }
            )
            return None

    def _check_home(self) -> None:
        """A home that exists but cannot be read is an error, not "nothing to reap"."""
        home = self.settings.home
        try:
            st = os.stat(home)
            if stat.S_ISDIR(st.st_mode) and os.path.isdir(self.store.envs_dir):
                os.listdir(self.store.envs_dir)
            elif not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(20, "Not a directory")
        except FileNotFoundError:
            return  # no home: nothing was ever created here
        except OSError as exc:
            raise PrerequisiteError(
                f"Cannot read ENVKIT_HOME {home}: {exc.strerror}.",
                hint="Run reap as the user who owns it, or point ENVKIT_HOME at the right "
                "directory.",
            ) from None

    # -- environments with a record -----------------------------------------------------------
    def _owner_died(self, pipeline_id: str, lock: FileLock) -> bool:
        """Take the lock of a busy record whose owner is dead, waiting up to 2 s for it.

        A process killed while forking a child (cp, postgres, psql) leaves that child holding
        the lock's open file description until it execs (the fd is close-on-exec): an instant,
        longer on a loaded machine. Waiting that out beats keeping a dead environment.
        """
        record = self.store.load(pipeline_id)
        if record is None or record.status not in BUSY_STATUSES or not record.owner_pid:
            return False
        if process_alive(record.owner_pid, {}):
            return False
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            time.sleep(0.01)
            if lock.try_acquire():
                return True
        return False

    def _recorded(self, pipeline_id: str) -> tuple[str, dict[str, Any] | None]:
        if self.dry_run:
            return self._recorded_dry(pipeline_id)
        lock = self.store.lock(pipeline_id)
        got = lock.try_acquire() or self._owner_died(pipeline_id, lock)
        try:
            record = self.store.load(pipeline_id)
            if record is None:  # destroyed by someone else since we listed it
                return "kept", None
            decision = decide(record, now=self.now, locked=not got, older_than=self.older_than)
            entry = _environment_entry(record, decision)
            if not decision.reap:
                return "kept", entry
            return self._destroy(pipeline_id, record, lock, entry)
        finally:
            lock.release()

    def _recorded_dry(self, pipeline_id: str) -> tuple[str, dict[str, Any] | None]:
        """What ``_recorded`` would decide, from probes that write nothing (no lock taken)."""
        record = self.store.load(pipeline_id)
        if record is None:
            return "kept", None
        locked = is_locked(self.store.lock_path(pipeline_id))
        if locked and record.status in BUSY_STATUSES and record.owner_pid:
            locked = process_alive(record.owner_pid, {})
        decision = decide(record, now=self.now, locked=locked, older_than=self.older_than)
        return ("reaped" if decision.reap else "kept"), _environment_entry(record, decision)

    def _destroy(
        self, pipeline_id: str, record: Record | None, lock: FileLock, entry: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """Destroy under the held ``lock``: mark ``destroying`` first (a reaper killed now
        leaves a busy record with a free lock, which the next reap picks up), then delete."""
        if self.dry_run:
            return "reaped", entry
        started = time.perf_counter()
        try:
            if record is not None:
                record.status = Status.DESTROYING
                record.owner_pid = os.getpid()
                self.store.save(record)
                self.store.event(pipeline_id, "destroying", by="reap", reason=entry["reason"])
            name = record.provider if record is not None else self.provider_name
            if record is not None:  # what a killed `envkit run` left running goes first
                stop_orphaned_command(pipeline_id, record.resources)
            self.provider(name).destroy(pipeline_id, record)
        except EnvkitError as exc:
            entry["error"] = exc.message
            self.store.event(pipeline_id, "reap-failed", error=exc.message)
            return "errors", entry
        except OSError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            self.store.event(pipeline_id, "reap-failed", error=entry["error"])
            return "errors", entry
        self.store.delete(pipeline_id)
        entry["seconds"] = round(time.perf_counter() - started, 4)
        self.store.event(pipeline_id, "reaped", reason=entry["reason"], seconds=entry["seconds"])
        lock.release(unlink=True)
        return "reaped", entry

    # -- pipelines with leftovers but no record -------------------------------------------------
    def _orphan(self, leftover: Leftover) -> tuple[str, dict[str, Any] | None]:
        pipeline_id = leftover.pipeline_id
        entry: dict[str, Any] = {"pipeline_id": pipeline_id, "kind": "leftover"}
        decision = decide_orphan(
            list(leftover.evidence), now=self.now, since=leftover.since, older_than=self.older_than
        )
        if self.dry_run:
            if is_locked(self.store.lock_path(pipeline_id)):
                entry["reason"] = "busy: another envkit process holds its lock"
                return "kept", entry
            if self.store.load(pipeline_id) is not None:
                return "kept", None
            entry["reason"] = decision.reason
            return ("reaped" if decision.reap else "kept"), entry
        lock = self.store.lock(pipeline_id)
        if not lock.try_acquire():
            entry["reason"] = "busy: another envkit process holds its lock"
            return "kept", entry
        try:
            if self.store.load(pipeline_id) is not None:
                return "kept", None  # an up created it since we looked: not a leftover
            entry["reason"] = decision.reason
            if not decision.reap:
                return "kept", entry
            return self._destroy(pipeline_id, None, lock, entry)
        finally:
            lock.release()

    def _stray_lock_files(self) -> None:
        """Lock files of pipelines with no record (an ``up`` killed before its first save)."""
        locks = self.store.home / "locks"
        if self.dry_run or not locks.is_dir():
            return
        for path in locks.glob("*.lock"):
            pipeline_id = path.name[: -len(".lock")]
            if not is_pipeline_id(pipeline_id) or self.store.record_path(pipeline_id).exists():
                continue
            lock = self.store.lock(pipeline_id)
            if lock.try_acquire():
                if self.store.load(pipeline_id) is None:
                    lock.release(unlink=True)
                lock.release()


def reap(
    settings: Settings,
    *,
    dry_run: bool = False,
    older_than: timedelta | None = None,
    provider: str | None = None,
    now: datetime | None = None,
) -> ReapReport:
    """Reap expired environments, dead owners' leftovers and unrecorded leftovers; see module."""
    return Reaper(
        settings, dry_run=dry_run, older_than=older_than, provider=provider, now=now
    ).run()


def _environment_entry(record: Record, decision: Decision) -> dict[str, Any]:
    """The report entry of an environment with a record."""
    return {
        "pipeline_id": record.pipeline_id,
        "kind": "environment",
        "provider": record.provider,
        "status": str(record.status),
        "expires_at": record.expires_at,
        "reason": decision.reason,
    }
