"""The reaper: removes what outlived its purpose, and nothing else.

What it reaps (for one ``ENVKIT_HOME``):

- environments whose TTL has passed (any status);
- environments stuck in ``provisioning``/``destroying`` whose owner died (their lock is free: a
  ``flock`` dies with its process, so a free lock on a busy record proves the owner is gone);
- for the local provider, leftovers with no state record, found by envkit's own markers: a
  directory under this home's ``Layout.envs_root``, a process whose command line names such a
  directory, or a loopback address reserved under this home's key; plus stale spare copies
  (``.tmp-*``) and template build directories whose builder is gone;
- for the local provider, the ``h-<key>`` directories of *other* homes whose ``ENVKIT_HOME`` was
  deleted (CI workspaces and temp dirs get wiped with environments still running): each such
  directory names its home in a ``.home`` file, written when it was created, so a reap from any
  home can tell. An ``h-<key>`` directory whose home exists is never touched; one without a
  ``.home`` file (made by an older envkit) is removed only when empty;
- templates (and their spares) no ``up`` has used for ``template_ttl`` (default 7 days).

Every decision about a pipeline is taken, and acted on, while holding that pipeline's lock, so a
concurrent ``up``/``down`` is never raced: a locked pipeline is always kept. Nothing outside
envkit's own directories and marked processes is ever looked at, so nothing envkit did not create
can be touched. ``--provider aws`` hands the tag-based leak scan to
:mod:`envkit.providers.aws.sweep`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from envkit.commands import stop_orphaned_command
from envkit.durations import format_duration
from envkit.errors import EnvkitError, PrerequisiteError
from envkit.locking import FileLock, is_locked
from envkit.naming import is_pipeline_id, iso_utc, parse_iso, short_hash
from envkit.processes import kill_group, process_alive, processes_naming, wait_gone
from envkit.providers import Provider, get_provider
from envkit.providers.local.osuser import trusted_uids
from envkit.providers.local.spares import trim as trim_pool
from envkit.securefs import remove_tree, remove_tree_quietly
from envkit.settings import Settings
from envkit.state import BUSY_STATUSES, Record, StateStore, Status, utcnow

log = logging.getLogger(__name__)

WORKERS = 8  # destroys wait on processes and file systems, not the CPU: overlap them
EMPTY_RESERVATION_GRACE = timedelta(seconds=10)  # a reservation is written microseconds after
HOME_MARKER = ".home"  # in each h-<key> dir: its resolved ENVKIT_HOME (LocalProvider writes it)
UNMARKED_HOME_GRACE = timedelta(minutes=10)  # an empty h-<key> dir with no marker, left this long


@dataclass(frozen=True)
class Decision:
    """What to do with one pipeline, and why (the reason is shown to users)."""

    reap: bool
    reason: str


@dataclass
class ReapReport:
    """What a reap did (or, with ``dry_run``, would do); the shape of ``reap --json``."""

    reaped: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def as_json(self) -> dict[str, Any]:
        """``{"reaped": [...], "kept": [...], "errors": [...], "dry_run": bool}``."""
        return {
            "reaped": self.reaped,
            "kept": self.kept,
            "errors": self.errors,
            "dry_run": self.dry_run,
        }


def _age(since: datetime | None, now: datetime) -> timedelta:
    return now - since if since is not None else timedelta.max


def decide(
    record: Record,
    *,
    now: datetime,
    locked: bool,
    older_than: timedelta | None = None,
) -> Decision:
    """Whether to reap the environment of ``record``.

    ``locked``: a live process holds the pipeline's lock. ``older_than``: a grace period — reap
    only what expired (or got stuck) at least that long ago.
    """
    grace = older_than or timedelta(0)
    if locked:
        return Decision(False, "busy: another envkit process holds its lock")
    if record.status in BUSY_STATUSES:
        stuck_since = _parse(record.updated_at) or _parse(record.created_at)
        if older_than is not None and _age(stuck_since, now) < grace:
            return Decision(False, f"stuck in {record.status} for less than {grace}")
        return Decision(True, f"stuck in {record.status}: its owner (pid {record.owner_pid}) died")
    if record.expired(now):
        if now - record.expires < grace:
            return Decision(False, f"expired at {record.expires_at}, within --older-than")
        return Decision(True, f"expired at {record.expires_at}")
    return Decision(False, f"{record.status} until {record.expires_at}")


def decide_orphan(
    evidence: list[str], *, now: datetime, since: datetime | None, older_than: timedelta | None
) -> Decision:
    """Whether to reap leftovers of a pipeline that has no state record (``evidence`` names
    what was found: directory, process, address)."""
    if not evidence:
        return Decision(False, "nothing left")
    if older_than is not None and _age(since, now) < older_than:
        return Decision(False, f"leftover younger than {older_than}")
    return Decision(True, "no state record; leftover " + ", ".join(evidence))


def _parse(text: str) -> datetime | None:
    try:
        return parse_iso(text) if text else None
    except ValueError:
        return None


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
        self.store = StateStore(settings.home)
        self.report = ReapReport(dry_run=dry_run)
        self._providers: dict[str, Provider] = {}
        self.owners = trusted_uids(settings.pg_user)

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = get_provider(name, self.settings)
        return self._providers[name]

    # -- entry point ----------------------------------------------------------------------------
    def run(self) -> ReapReport:
        """Reap records, then (local) unrecorded leftovers, then (aws) tagged cloud leaks."""
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
        recorded = {r.pipeline_id for r in stored}
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = list(pool.map(self._recorded, [r.pipeline_id for r in records]))
            if self.provider_name == "local":
                orphans = self._orphan_evidence(recorded)
                results += list(pool.map(lambda item: self._orphan(*item), orphans.items()))
        for bucket, entry in results:
            if entry is not None:
                getattr(self.report, bucket).append(entry)
        if self.provider_name == "local":
            self._machine_leftovers()
            self._stray_lock_files()
            self._other_homes()
            self._stale_templates()
        if self.provider_name == "aws":
            self._cloud()
        for entries in (self.report.reaped, self.report.kept, self.report.errors):
            entries.sort(key=lambda e: (str(e.get("pipeline_id")), str(e.get("kind"))))
        return self.report

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

    def _probe_lock(self, path: Path) -> bool:
        """Whether a dry run could take the lock at ``path`` (nothing is written)."""
        return not is_locked(path)

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
            name = record.provider if record is not None else "local"
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

    # -- local leftovers without a record -----------------------------------------------------
    def _layout(self) -> Any:
        from envkit.providers.local.provider import Layout

        return Layout.for_settings(self.settings)

    def _orphan_evidence(self, recorded: set[str]) -> dict[str, list[str]]:
        """pipeline ID -> what was found of it without a record, from envkit's markers only."""
        layout = self._layout()
        found: dict[str, list[str]] = {}
        envs_root: Path = layout.envs_root
        for name in _pipeline_dirs(envs_root):
            if name not in recorded:
                found.setdefault(name, []).append("directory")
        for pipeline_id in marked_processes(envs_root, self.owners):
            if pipeline_id not in recorded:
                found.setdefault(pipeline_id, []).append("process")
        for pipeline_id in _reserved_by(layout.addresses.owners().values(), layout.home_key):
            if pipeline_id not in recorded:
                found.setdefault(pipeline_id, []).append("address")
        return found

    def _orphan(self, pipeline_id: str, evidence: list[str]) -> tuple[str, dict[str, Any] | None]:
        entry: dict[str, Any] = {"pipeline_id": pipeline_id, "kind": "leftover"}
        if self.dry_run:
            if not self._probe_lock(self.store.lock_path(pipeline_id)):
                entry["reason"] = "busy: another envkit process holds its lock"
                return "kept", entry
            if self.store.load(pipeline_id) is not None:
                return "kept", None
            decision = decide_orphan(
                evidence,
                now=self.now,
                since=_mtime(self._layout().env_dir(pipeline_id)),
                older_than=self.older_than,
            )
            entry["reason"] = decision.reason
            return ("reaped" if decision.reap else "kept"), entry
        lock = self.store.lock(pipeline_id)
        if not lock.try_acquire():
            entry["reason"] = "busy: another envkit process holds its lock"
            return "kept", entry
        try:
            if self.store.load(pipeline_id) is not None:
                return "kept", None  # an up created it since we looked: not a leftover
            env_dir = self._layout().env_dir(pipeline_id)
            decision = decide_orphan(
                evidence, now=self.now, since=_mtime(env_dir), older_than=self.older_than
            )
            entry["reason"] = decision.reason
            if not decision.reap:
                return "kept", entry
            return self._destroy(pipeline_id, None, lock, entry)
        finally:
            lock.release()

    def _machine_leftovers(self) -> None:
        """Spare copies and template builds left half-done, and reservations never written.

        These live under the data root shared by every ENVKIT_HOME of this user; each is removed
        only while holding the lock its creator holds, so a live refill or build is never hit.
        """
        layout = self._layout()
        templates: Path = layout.templates
        if templates.is_dir():
            for spares in templates.glob("*.spares"):
                if spares.is_symlink():
                    continue  # never made by envkit: nothing to follow into
                stale = [p for p in spares.glob(".tmp-*") if p.is_dir() and not p.is_symlink()]
                if stale:
                    self._under_lock(spares / ".refill.lock", stale, "spare copy")
                # A pool grown by a burst of ups shrinks back once the burst is forgotten.
                template = spares.with_name(spares.name.removesuffix(".spares"))
                resting = self.settings.spares  # unless the pool's own ups recorded another
                for name in trim_pool(template, resting=resting, dry_run=self.dry_run):
                    self.report.reaped.append(
                        {
                            "pipeline_id": None,
                            "kind": "spare copy",
                            "resource": str(spares / name),
                            "reason": "surplus: beyond the pool's resting size "
                            "(ENVKIT_SPARES) and no burst of ups needed it for an hour",
                        }
                    )
            for scratch in templates.glob(".build-*"):
                key = scratch.name[len(".build-") :].rsplit("-", 1)[0]
                self._under_lock(templates / f"{key}.lock", [scratch], "template build")
        for doomed in layout.data_root.glob(".reap-h-*"):
            self._half_deleted(doomed, "orphaned-home")
        book = layout.addresses
        for tmp, writer in book.unfinished().items():
            since = _mtime(tmp)
            if (
                since is not None
                and self.now - since >= EMPTY_RESERVATION_GRACE
                and (writer is None or not process_alive(writer, {}))
            ):
                if not self.dry_run:
                    tmp.unlink(missing_ok=True)
                self.report.reaped.append(
                    {
                        "pipeline_id": None,
                        "kind": "address",
                        "resource": tmp.name,
                        "reason": "unfinished address reservation: its writer is gone",
                    }
                )
        for host, owner in book.owners().items():
            path = book.folder / host
            since = _mtime(path)
            # Reservations are created whole (providers.local.loopback); an empty one is left by an
            # older envkit killed between creating and writing it, and names no owner at all.
            if owner == "" and since is not None and self.now - since >= EMPTY_RESERVATION_GRACE:
                entry = {
                    "pipeline_id": None,
                    "kind": "address",
                    "resource": host,
                    "reason": "empty address reservation",
                }
                if not self.dry_run:
                    path.unlink(missing_ok=True)
                self.report.reaped.append(entry)

    def _under_lock(self, lock_path: Path, paths: list[Path], kind: str) -> None:
        lock = FileLock(lock_path, what=str(lock_path))
        if self.dry_run:
            if not self._probe_lock(lock_path):
                return
        elif not lock.try_acquire():
            return  # its creator is alive and still working on it
        try:
            for path in paths:
                entry = {
                    "pipeline_id": None,
                    "kind": kind,
                    "resource": str(path),
                    "reason": "its creator is gone",
                }
                if not self.dry_run:
                    self._kill_marked(str(path) + os.sep)
                    remove_tree_quietly(path, self._layout().data_root)
                self.report.reaped.append(entry)
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

    # -- other homes: h-<key> directories whose ENVKIT_HOME was deleted --------------------------
    def _other_homes(self) -> None:
        """Reap the ``h-<key>`` directories of deleted homes (see the module docstring)."""
        layout = self._layout()
        root: Path = layout.data_root
        if not root.is_dir():
            return
        for h_dir in sorted(root.glob("h-*")):
            key = h_dir.name[len("h-") :]
            if key == layout.home_key or not _home_key(key) or not _real_dir(h_dir):
                continue
            try:
                self._other_home(root, h_dir, key)
            except OSError as exc:  # e.g. vanished under a concurrent reap: report, go on
                self.report.errors.append(
                    {
                        "pipeline_id": None,
                        "kind": "orphaned-home",
                        "resource": str(h_dir),
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                )

    def _other_home(self, root: Path, h_dir: Path, key: str) -> None:
        try:
            home = (h_dir / HOME_MARKER).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            self._unmarked_home(h_dir)
            return
        entry: dict[str, Any] = {
            "pipeline_id": None,
            "kind": "orphaned-home",
            "home": home,
            "resource": str(h_dir),
        }
        if not Path(home).is_absolute() or short_hash(home, 10) != key:
            entry["reason"] = f"its {HOME_MARKER} file does not name the home of key {key}"
            self.report.kept.append(entry)
            return
        if home_exists(home):
            return  # a live home: never touched (its own reaps look after it)
        servers = marked_processes(h_dir, self.owners)
        if home_exists(home, seen_by=[pid for pids in servers.values() for pid in pids]):
            return  # live for its servers, in another mount namespace
        since = _newest_mtime(h_dir)
        if self.older_than is not None and _age(since, self.now) < self.older_than:
            entry["reason"] = f"home {home} is gone, but its directory changed within --older-than"
            self.report.kept.append(entry)
            return
        lock = FileLock(root / f".{h_dir.name}.reap.lock", what=f"reap of {h_dir}")
        if not self.dry_run and not lock.try_acquire():
            entry["reason"] = "busy: another reap is removing it"
            self.report.kept.append(entry)
            return
        try:
            self._reap_home(root, h_dir, key, home, servers, entry)
        finally:
            lock.release(unlink=True)

    def _reap_home(
        self,
        root: Path,
        h_dir: Path,
        key: str,
        home: str,
        servers: dict[str, list[int]],
        entry: dict[str, Any],
    ) -> None:
        """Destroy every pipeline of a deleted home (servers, services, sockets, addresses),
        then its directory."""
        from envkit.providers.local.provider import Layout, LocalProvider

        if not h_dir.is_dir():
            return  # another reap removed it while we waited for nothing
        gone = f"its ENVKIT_HOME {home} no longer exists"
        other = Layout(root, key)
        provider = LocalProvider(self.settings)
        provider.layout = other  # destroy() derives every path from the layout alone
        evidence: dict[str, list[str]] = {}
        for name in _pipeline_dirs(h_dir):
            evidence.setdefault(name, []).append("directory")
        for pipeline_id in servers:
            evidence.setdefault(pipeline_id, []).append("process")
        for pipeline_id in _reserved_by(other.addresses.owners().values(), key):
            evidence.setdefault(pipeline_id, []).append("address")

        def destroy(pipeline_id: str) -> tuple[str, dict[str, Any]]:
            item: dict[str, Any] = {
                "pipeline_id": pipeline_id,
                "kind": "orphaned-home",
                "home": home,
                "resource": str(other.env_dir(pipeline_id)),
                "reason": f"{gone}; leftover " + ", ".join(evidence[pipeline_id]),
            }
            if self.dry_run:
                return "reaped", item
            started = time.perf_counter()
            try:
                provider.destroy(pipeline_id, None)
            except EnvkitError as exc:
                item["error"] = exc.message
                return "errors", item
            except OSError as exc:
                item["error"] = f"{type(exc).__name__}: {exc}"
                return "errors", item
            item["seconds"] = round(time.perf_counter() - started, 4)
            return "reaped", item

        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            results = list(pool.map(destroy, sorted(evidence)))
        for bucket, item in results:
            getattr(self.report, bucket).append(item)
        if any(bucket == "errors" for bucket, _ in results):
            return  # keep the directory (and its marker) for the next reap to retry
        entry["reason"] = gone
        if not self.dry_run:
            # Out of the way first, then look again: an `up` in a home recreated at this moment
            # makes a new h-dir instead of writing into one being deleted.
            doomed = h_dir.with_name(f".reap-{h_dir.name}-{os.getpid()}")
            try:
                os.rename(h_dir, doomed)
            except OSError:
                return  # gone already, or not ours to move: the next reap looks again
            if home_exists(home):  # recreated while we worked: leave what is left alone
                with contextlib.suppress(OSError):
                    os.rename(doomed, h_dir)
                entry["reason"] = f"home {home} reappeared during the reap"
                self.report.kept.append(entry)
                return
            remove_tree_quietly(doomed, root)
        self.report.reaped.append(entry)

    def _unmarked_home(self, h_dir: Path) -> None:
        """An ``h-<key>`` directory made before homes were recorded: removed when empty (after a
        grace, so one being created is spared), else kept, since nothing proves it orphaned."""
        entry: dict[str, Any] = {
            "pipeline_id": None,
            "kind": "home-directory",
            "resource": str(h_dir),
        }
        # Only a marker being written (".home.<pid>.tmp") may be there for it to count as empty.
        content = [p for p in h_dir.iterdir() if not p.name.startswith(HOME_MARKER + ".")]
        if content:
            entry["reason"] = (
                f"no {HOME_MARKER} file (made by an older envkit): cannot tell whether its "
                "ENVKIT_HOME still exists; the next 'envkit up' in that home records it"
            )
            self.report.kept.append(entry)
            return
        since = _newest_mtime(h_dir)
        grace = max(UNMARKED_HOME_GRACE, self.older_than or timedelta(0))
        if _age(since, self.now) < grace:
            return
        entry["reason"] = f"empty, with no {HOME_MARKER} file, for over {format_duration(grace)}"
        if not self.dry_run:
            for leftover in h_dir.iterdir():
                leftover.unlink(missing_ok=True)
            try:
                h_dir.rmdir()  # fails if an up created something in it meanwhile
            except OSError:
                return
        self.report.reaped.append(entry)

    # -- templates unused for template_ttl --------------------------------------------------------
    def _stale_templates(self) -> None:
        """Remove templates (with spares, seed statistics, lock) no ``up`` used for the TTL.

        "Used" is read from modification times: a checkout renames a spare out of
        ``<name>.spares`` and a refill renames one in, and a build creates the template. A base
        template counts as used while a template derived from it (``<base>-<dataset>``) is.
        """
        templates: Path = self._layout().templates
        if not templates.is_dir():
            return
        ttl: timedelta = self.settings.template_ttl
        names: dict[str, list[Path]] = {}
        for path in templates.iterdir():
            if path.name.startswith("pg-"):
                names.setdefault(path.name.split(".", 1)[0], []).append(path)
            elif path.name.startswith(".prune-"):
                self._half_deleted(path, "template")
        used = {name: _template_used(paths) for name, paths in names.items()}
        for name in sorted(names):
            last = max(
                (
                    t
                    for other, t in used.items()
                    if t is not None and (other == name or other.startswith(name + "-"))
                ),
                default=None,
            )
            if last is not None and self.now - last < ttl:
                continue
            self._prune_template(templates, name, names[name], last, ttl)

    def _prune_template(
        self, templates: Path, name: str, paths: list[Path], last: datetime | None, ttl: timedelta
    ) -> None:
        entry: dict[str, Any] = {
            "pipeline_id": None,
            "kind": "template",
            "resource": str(templates / name),
            "last_used": iso_utc(last) if last is not None else None,
            "reason": f"unused for over {format_duration(ttl)} (template TTL)",
        }
        lock_path = templates / f"{name}.lock"
        refill_path = templates / f"{name}.spares" / ".refill.lock"
        if self.dry_run:
            # Probe without taking anything: a dry run leaves every file as it was.
            if is_locked(lock_path) or is_locked(refill_path):
                entry["reason"] = "stale, but busy: being built or refilled"
                self.report.kept.append(entry)
            else:
                self.report.reaped.append(entry)
            return
        lock = FileLock(lock_path, what=f"Template {name}")
        refill = FileLock(refill_path, what=f"spares of {name}")
        if not lock.try_acquire():
            entry["reason"] = "stale, but busy: being built"
            self.report.kept.append(entry)
            return
        pruned = False
        try:
            if refill_path.parent.is_dir() and not refill.try_acquire():
                entry["reason"] = "stale, but busy: its spares are being refilled"
                self.report.kept.append(entry)
                return
            try:
                # Rename the template away first: an up looking now finds none and rebuilds it
                # (waiting for this lock) rather than copying a half-deleted one.
                for path in sorted(paths, key=lambda p: p.name != name):
                    if path == lock_path or not path.exists():
                        continue
                    if path.is_dir() and not path.is_symlink():
                        doomed = templates / f".prune-{path.name}-{os.getpid()}"
                        os.rename(path, doomed)
                        remove_tree(doomed, templates)
                    else:
                        path.unlink(missing_ok=True)
            except OSError as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"
                self.report.errors.append(entry)
                return
            finally:
                refill.release()
            pruned = True
            self.report.reaped.append(entry)
        finally:
            lock.release(unlink=pruned)

    def _kill_marked(self, needle: str) -> None:
        """SIGKILL the process groups of envkit's processes whose command line names a path
        under ``needle`` (a template build's scratch server)."""
        for pid, _arg in list(processes_naming(needle, self.owners)):
            log.warning("killing leftover process %s under %s", pid, needle)
            kill_group(pid, signal.SIGKILL)
            wait_gone(pid, 2.0)

    def _half_deleted(self, path: Path, kind: str) -> None:
        """A directory a reap renamed aside (``.prune-*`` template, ``.reap-h-*`` home) to
        delete, named after its pid, left behind because that reap was killed."""
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and process_alive(int(pid), {}):
            return
        if not self.dry_run:
            self._kill_marked(str(path) + os.sep)
            remove_tree_quietly(path, path.parent)
        self.report.reaped.append(
            {
                "pipeline_id": None,
                "kind": kind,
                "resource": str(path),
                "reason": "left half-deleted by a reap that was killed",
            }
        )

    # -- cloud ------------------------------------------------------------------------------------
    def _cloud(self) -> None:
        try:
            from envkit.providers.aws import sweep as cloudsweep
            from envkit.providers.aws.prerequisites import aws_region
        except ImportError as exc:
            self.report.errors.append(
                {
                    "pipeline_id": None,
                    "kind": "cloud",
                    "error": f"the AWS leak sweep is not available: {exc}",
                }
            )
            return
        try:
            swept = cloudsweep.sweep(
                region=aws_region(self.settings),
                dry_run=self.dry_run,
                now=self.now,
                older_than=self.older_than,
            )
        except EnvkitError as exc:
            self.report.errors.append({"pipeline_id": None, "kind": "cloud", "error": exc.message})
            return
        self.report.reaped.extend(swept.reaped)
        self.report.kept.extend(swept.kept)
        self.report.errors.extend(swept.errors)


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


def inventory(settings: Settings, pipeline_ids: Iterable[str] = ()) -> dict[str, list[str]]:
    """Everything the local provider holds for this ``ENVKIT_HOME``: records, lock files, env
    directories, marked processes, address reservations, and the socket directories of
    ``pipeline_ids``. All lists are empty once everything is destroyed (tests assert that)."""
    from envkit.providers.local.provider import Layout

    layout = Layout.for_settings(settings)
    store = StateStore(settings.home)
    locks = store.home / "locks"
    prefix = f"{layout.home_key}/"
    return {
        "records": [r.pipeline_id for r in store.all()],
        "locks": sorted(p.name for p in locks.glob("*.lock")) if locks.is_dir() else [],
        "directories": sorted(
            p.name for p in layout.envs_root.iterdir() if not p.name.startswith(".")
        )
        if layout.envs_root.is_dir()
        else [],
        "processes": sorted(
            f"{pid} ({pipeline_id})"
            for pipeline_id, pids in marked_processes(
                layout.envs_root, trusted_uids(settings.pg_user)
            ).items()
            for pid in pids
        ),
        "addresses": sorted(
            f"{host} ({owner})"
            for host, owner in layout.addresses.owners().items()
            if owner.startswith(prefix) or owner == ""
        ),
        "sockets": sorted(
            str(layout.socket_dir(i)) for i in pipeline_ids if layout.socket_dir(i).exists()
        ),
    }


def marked_processes(
    envs_root: Path, owners: Iterable[int] | None = None
) -> dict[str, list[int]]:
    """pipeline ID -> pids of processes of ``owners`` (envkit's users) whose command line names
    a pipeline's directory under ``envs_root``: envkit's marker on every server (and copy) it
    starts for this home. What follows the root must be a valid pipeline ID, so no command line
    can point a reap at ``..`` or at anything but one pipeline's directory."""
    needle = str(envs_root) + os.sep
    found: dict[str, list[int]] = {}
    trusted = trusted_uids(None) if owners is None else frozenset(owners)
    for pid, arg in processes_naming(needle, trusted):
        pipeline_id = arg[len(needle) :].split(os.sep, 1)[0]
        if is_pipeline_id(pipeline_id):
            found.setdefault(pipeline_id, []).append(pid)
    return found


def _pipeline_dirs(root: Path) -> list[str]:
    """Names of the real directories (not symlinks) in ``root`` that are pipeline IDs."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        e.name for e in entries if is_pipeline_id(e.name) and e.is_dir(follow_symlinks=False)
    )


def _reserved_by(owners: Iterable[str], home_key: str) -> list[str]:
    """The pipeline IDs of ``home_key`` among address reservation owners (``<key>/<id>``)."""
    prefix = f"{home_key}/"
    found = {owner[len(prefix) :] for owner in owners if owner.startswith(prefix)}
    return sorted(name for name in found if is_pipeline_id(name))


def _home_key(key: str) -> bool:
    """Whether ``key`` has the shape of a home key (``naming.short_hash(home, 10)``)."""
    return len(key) == 10 and all(c in "0123456789abcdef" for c in key)


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def home_exists(home: str, *, seen_by: Iterable[int] = ()) -> bool:
    """Whether the ENVKIT_HOME ``home`` exists, here or for any process of ``seen_by`` (its
    servers): looked up through ``/proc/<pid>/root``, so a server started in another mount
    namespace (a container, a service with a private /tmp) sharing this data root keeps its home.
    Only a definite "no such file" says no: a path that cannot be checked is not proof."""
    for prefix in ("", *(f"/proc/{pid}/root" for pid in seen_by)):
        try:
            os.stat(prefix + home)
        except (FileNotFoundError, NotADirectoryError):
            continue  # (also a server that exited meanwhile: its /proc entry is gone)
        except OSError:
            return True
        return True
    return False


def _newest_mtime(folder: Path) -> datetime | None:
    """When ``folder`` or anything directly in it last changed."""
    times = [t for t in (_mtime(p) for p in (folder, *folder.iterdir())) if t is not None]
    return max(times, default=None)


def _template_used(paths: list[Path]) -> datetime | None:
    """When a template was last used, from its directory, spares and seed statistics; its lock
    file does not count (reaps take it too). Lock-file time only when nothing else is left."""
    times = [_mtime(p) for p in paths if not p.name.endswith(".lock")]
    found = [t for t in times if t is not None]
    if not found:
        found = [t for t in (_mtime(p) for p in paths) if t is not None]
    return max(found, default=None)


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


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
