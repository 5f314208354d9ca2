"""What the local provider leaves behind, found by envkit's own marks only, and its reaping.

- :func:`orphans`: pipelines of this home with no record — a directory under this home's
  ``Layout.envs_root``, a process whose command line names such a directory, or a loopback
  address reserved under this home's key. The reaper destroys them under their lock.
- :class:`SharedLeftovers`: what lives under the data root shared by every ``ENVKIT_HOME`` of this
  user: spare copies (``.tmp-*``) and template builds whose builder is gone, reservations never
  finished, surplus spares, and templates no ``up`` used for ``template_ttl`` (default 7 days).
- the ``h-<key>`` directories of other homes whose ``ENVKIT_HOME`` was deleted:
  :mod:`envkit.providers.local.orphaned_homes`.

Nothing outside envkit's own directories and marked processes of the users it trusts is ever
looked at (docs/threat-model.md); every pipeline ID read back passes ``naming.is_pipeline_id``;
deletes go through :mod:`envkit.securefs`; a dry run takes no lock and writes nothing.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from envkit.durations import format_duration
from envkit.locking import FileLock, is_locked
from envkit.naming import is_pipeline_id, iso_utc
from envkit.processes import process_alive, processes_naming, stop
from envkit.providers.local.layout import Layout
from envkit.providers.local.osuser import trusted_uids
from envkit.providers.local.spares import trim as trim_pool
from envkit.reaping import Leftover, ReapOptions, ReapReport
from envkit.securefs import remove_tree, remove_tree_quietly
from envkit.settings import Settings
from envkit.state import StateStore

log = logging.getLogger(__name__)

EMPTY_RESERVATION_GRACE = timedelta(seconds=10)  # a reservation is written microseconds after


# -- finding, by envkit's marks -----------------------------------------------------------------


def pipeline_dirs(root: Path) -> list[str]:
    """Names of the real directories (not symlinks) in ``root`` that are pipeline IDs."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(
        e.name for e in entries if is_pipeline_id(e.name) and e.is_dir(follow_symlinks=False)
    )


def reserved_by(owners: Iterable[str], home_key: str) -> list[str]:
    """The pipeline IDs of ``home_key`` among address reservation owners (``<key>/<id>``)."""
    prefix = f"{home_key}/"
    found = {owner[len(prefix) :] for owner in owners if owner.startswith(prefix)}
    return sorted(name for name in found if is_pipeline_id(name))


def marked_processes(
    envs_root: Path, owners: Iterable[int] | None = None
) -> dict[str, list[int]]:
    """pipeline ID -> pids of processes of ``owners`` (envkit's users) whose command line names
    a pipeline's directory under ``envs_root``: envkit's mark on every server (and copy) it
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


def evidence(layout: Layout, owners: Iterable[int]) -> dict[str, list[str]]:
    """pipeline ID -> what is left of it under ``layout``: directory, process, address."""
    found: dict[str, list[str]] = {}
    for name in pipeline_dirs(layout.envs_root):
        found.setdefault(name, []).append("directory")
    for pipeline_id in marked_processes(layout.envs_root, owners):
        found.setdefault(pipeline_id, []).append("process")
    for pipeline_id in reserved_by(layout.addresses.owners().values(), layout.home_key):
        found.setdefault(pipeline_id, []).append("address")
    return found


def orphans(layout: Layout, known: Iterable[str], owners: Iterable[int]) -> list[Leftover]:
    """Pipelines of ``layout``'s home with something left but no record among ``known``."""
    recorded = set(known)
    return [
        Leftover(pipeline_id, tuple(found), mtime(layout.env_dir(pipeline_id)))
        for pipeline_id, found in sorted(evidence(layout, owners).items())
        if pipeline_id not in recorded
    ]


def inventory(settings: Settings, pipeline_ids: Iterable[str] = ()) -> dict[str, list[str]]:
    """Everything the local provider holds for this ``ENVKIT_HOME``: records, lock files, env
    directories, marked processes, address reservations, and the socket directories of
    ``pipeline_ids``. All lists are empty once everything is destroyed (tests assert that)."""
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


def mtime(path: Path) -> datetime | None:
    """When ``path`` last changed, or None when it cannot be read."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def real_dir(path: Path) -> bool:
    """Whether ``path`` is a directory itself (not a symlink to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# -- reaping ------------------------------------------------------------------------------------


@dataclass
class Sweep:
    """One reap of the local provider's leftovers; what it did goes to ``report``."""

    settings: Settings
    layout: Layout
    options: ReapOptions
    owners: frozenset[int]
    report: ReapReport = field(init=False)

    def __post_init__(self) -> None:
        self.report = ReapReport(dry_run=self.options.dry_run)

    @property
    def dry_run(self) -> bool:
        return self.options.dry_run

    def kill_marked(self, needle: str) -> None:
        """Kill the process groups of envkit's processes whose command line names a path under
        ``needle`` (a template build's scratch server), without a grace: the data goes next."""

        def marked() -> list[int]:
            return [pid for pid, _arg in processes_naming(needle, self.owners)]

        stop(marked, grace=0.0, kill_wait=2.0, what=f"leftover processes under {needle}")

    def half_deleted(self, path: Path, kind: str) -> None:
        """A directory a reap renamed aside (``.prune-*`` template, ``.reap-h-*`` home) to
        delete, named after its pid, left behind because that reap was killed."""
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and process_alive(int(pid), {}):
            return
        if not self.dry_run:
            self.kill_marked(str(path) + os.sep)
            remove_tree_quietly(path, path.parent)
        self.report.reaped.append(
            {
                "pipeline_id": None,
                "kind": kind,
                "resource": str(path),
                "reason": "left half-deleted by a reap that was killed",
            }
        )


class SharedLeftovers(Sweep):
    """Leftovers under the data root shared by every home (see the module docstring)."""

    def run(self) -> ReapReport:
        self.spares_and_builds()
        for doomed in self.layout.data_root.glob(".reap-h-*"):
            self.half_deleted(doomed, "orphaned-home")
        self.reservations()
        self.stale_templates()
        return self.report

    def spares_and_builds(self) -> None:
        """Spare copies and template builds left half-done, and surplus spares. Each is removed
        only while holding the lock its creator holds, so a live refill or build is never hit."""
        templates = self.layout.templates
        if not templates.is_dir():
            return
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

    def reservations(self) -> None:
        """Address reservations whose writer died before finishing, or left empty."""
        now = self.options.now
        book = self.layout.addresses
        for tmp, writer in book.unfinished().items():
            since = mtime(tmp)
            if (
                since is not None
                and now - since >= EMPTY_RESERVATION_GRACE
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
            since = mtime(path)
            # Reservations are created whole (providers.local.loopback); an empty one is left by
            # an older envkit killed between creating and writing it, and names no owner at all.
            if owner == "" and since is not None and now - since >= EMPTY_RESERVATION_GRACE:
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
            if is_locked(lock_path):
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
                    self.kill_marked(str(path) + os.sep)
                    remove_tree_quietly(path, self.layout.data_root)
                self.report.reaped.append(entry)
        finally:
            lock.release()

    # -- templates unused for template_ttl --------------------------------------------------------
    def stale_templates(self) -> None:
        """Remove templates (with spares, seed statistics, lock) no ``up`` used for the TTL.

        "Used" is read from modification times: a checkout renames a spare out of
        ``<name>.spares`` and a refill renames one in, and a build creates the template. A base
        template counts as used while a template derived from it (``<base>-<dataset>``) is.
        """
        templates = self.layout.templates
        if not templates.is_dir():
            return
        ttl: timedelta = self.settings.template_ttl
        names: dict[str, list[Path]] = {}
        for path in templates.iterdir():
            if path.name.startswith("pg-"):
                names.setdefault(path.name.split(".", 1)[0], []).append(path)
            elif path.name.startswith(".prune-"):
                self.half_deleted(path, "template")
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
            if last is not None and self.options.now - last < ttl:
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


def _template_used(paths: list[Path]) -> datetime | None:
    """When a template was last used, from its directory, spares and seed statistics; its lock
    file does not count (reaps take it too). Lock-file time only when nothing else is left."""
    times = [mtime(p) for p in paths if not p.name.endswith(".lock")]
    found = [t for t in times if t is not None]
    if not found:
        found = [t for t in (mtime(p) for p in paths) if t is not None]
    return max(found, default=None)
