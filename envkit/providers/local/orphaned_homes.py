"""The ``h-<key>`` directories of other homes whose ``ENVKIT_HOME`` was deleted.

CI workspaces and temp dirs get wiped with environments still running. Each ``h-<key>``
directory names its home in a ``.home`` file, written when it was created (the local provider's
preflight), so a reap from any home can tell. An ``h-<key>`` directory whose home exists is never
touched; one without a ``.home`` file (made by an older envkit) is removed only when empty.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from envkit.durations import format_duration
from envkit.errors import EnvkitError
from envkit.locking import FileLock
from envkit.naming import short_hash
from envkit.providers.base import Provider
from envkit.providers.local.layout import Layout
from envkit.providers.local.leftovers import (
    Sweep,
    evidence,
    marked_processes,
    mtime,
    real_dir,
)
from envkit.reaping import WORKERS, ReapReport, age
from envkit.securefs import remove_tree_quietly

HOME_MARKER = ".home"  # in each h-<key> dir: its resolved ENVKIT_HOME (LocalProvider writes it)
UNMARKED_HOME_GRACE = timedelta(minutes=10)  # an empty h-<key> dir with no marker, left this long


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


def _home_key(key: str) -> bool:
    """Whether ``key`` has the shape of a home key (``naming.short_hash(home, 10)``)."""
    return len(key) == 10 and all(c in "0123456789abcdef" for c in key)


def _newest_mtime(folder: Path) -> datetime | None:
    """When ``folder`` or anything directly in it last changed."""
    times = [t for t in (mtime(p) for p in (folder, *folder.iterdir())) if t is not None]
    return max(times, default=None)


@dataclass
class OrphanedHomes(Sweep):
    """Reap the ``h-<key>`` directories of deleted homes (see the module docstring).

    ``provider_for`` gives the provider that destroys the pipelines of another home's layout
    (the local provider passes itself, re-made on that layout)."""

    provider_for: Callable[[Layout], Provider] = field(kw_only=True)

    def run(self) -> ReapReport:
        root = self.layout.data_root
        if not root.is_dir():
            return self.report
        for h_dir in sorted(root.glob("h-*")):
            key = h_dir.name[len("h-") :]
            if key == self.layout.home_key or not _home_key(key) or not real_dir(h_dir):
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
        return self.report

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
        older_than = self.options.older_than
        if older_than is not None and age(since, self.options.now) < older_than:
            entry["reason"] = f"home {home} is gone, but its directory changed within --older-than"
            self.report.kept.append(entry)
            return
        lock = FileLock(root / f".{h_dir.name}.reap.lock", what=f"reap of {h_dir}")
        if not self.dry_run and not lock.try_acquire():
            entry["reason"] = "busy: another reap is removing it"
            self.report.kept.append(entry)
            return
        try:
            self._reap_home(root, h_dir, key, home, entry)
        finally:
            lock.release(unlink=True)

    def _reap_home(
        self, root: Path, h_dir: Path, key: str, home: str, entry: dict[str, Any]
    ) -> None:
        """Destroy every pipeline of a deleted home (servers, services, sockets, addresses),
        then its directory."""
        if not h_dir.is_dir():
            return  # another reap removed it while we waited for nothing
        gone = f"its ENVKIT_HOME {home} no longer exists"
        other = Layout(root, key)
        provider = self.provider_for(other)  # destroy() derives every path from the layout
        found = evidence(other, self.owners)

        def destroy(pipeline_id: str) -> tuple[str, dict[str, Any]]:
            item: dict[str, Any] = {
                "pipeline_id": pipeline_id,
                "kind": "orphaned-home",
                "home": home,
                "resource": str(other.env_dir(pipeline_id)),
                "reason": f"{gone}; leftover " + ", ".join(found[pipeline_id]),
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
            results = list(pool.map(destroy, sorted(found)))
        for bucket, item in results:
            self.report.add(bucket, item)
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
        grace = max(UNMARKED_HOME_GRACE, self.options.older_than or timedelta(0))
        if age(since, self.options.now) < grace:
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
