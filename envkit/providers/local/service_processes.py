"""A pipeline's service processes as the system sees them: their marks, finding them from /proc
alone (a record may not name them: ``up`` killed between spawning and saving), and stopping them.

Every service process carries ``ENVKIT_HOME_KEY`` + ``ENVKIT_PIPELINE_ID`` in its environment
(inherited by what it starts) and runs in a working directory under the pipeline's env dir.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Collection
from pathlib import Path

from envkit.processes import carries, cwd, process_alive, scan, stop
from envkit.providers.local.osuser import trusted_uids
from envkit.providers.local.resources import LocalResources

MARKER_HOME = "ENVKIT_HOME_KEY"
MARKER_PIPELINE = "ENVKIT_PIPELINE_ID"
MARKER_SERVICE = "ENVKIT_SERVICE"
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # services this process spawned, to reap


def pid_alive(pid: int) -> bool:
    """Whether a service process runs (one this process spawned is reaped once it exited)."""
    return process_alive(pid, CHILDREN)


def marks(home_key: str, pipeline_id: str) -> dict[str, str]:
    """The environment entries every service process of a pipeline carries (and its children)."""
    return {MARKER_HOME: home_key, MARKER_PIPELINE: pipeline_id}


def belongs(pid: int, home_key: str, pipeline_id: str, env_dir: Path) -> bool:
    """Whether process ``pid`` is a service (or a child of one) of this pipeline: its marks,
    or its working directory under the env dir's ``services/`` (not the env dir as a whole:
    PostgreSQL runs in its data directory there, and is stopped its own way)."""
    if carries(pid, marks(home_key, pipeline_id)):
        return True
    return cwd(pid).startswith(str(env_dir / "services") + os.sep)


def find_service_processes(
    home_key: str, pipeline_id: str, env_dir: Path, owners: Collection[int] | None = None
) -> list[int]:
    """Every live process of this pipeline's services (of ``owners``, by default the users
    envkit trusts), found from /proc alone."""
    trusted = trusted_uids(None) if owners is None else owners

    def service(pid: int) -> bool | None:
        return True if belongs(pid, home_key, pipeline_id, env_dir) and pid_alive(pid) else None

    return [pid for pid, _ in scan(trusted, service)]


def stop_services(
    home_key: str,
    pipeline_id: str,
    env_dir: Path,
    resources: LocalResources | None,
    *,
    grace: float | None = None,
    owners: Collection[int] | None = None,
) -> list[int]:
    """Stop every service process of the pipeline: SIGTERM to each process group, SIGKILL to what
    is left after the grace period. Return the pids that were found."""
    recorded = resources.services if resources is not None else {}
    wait = max([e.grace for e in recorded.values()] or [5.0])
    if grace is not None:
        wait = grace
    if not recorded and not (env_dir / "services").exists():
        # Services get their directory before any is spawned: none was, skip the /proc scan.
        return []
    trusted = trusted_uids(None) if owners is None else owners

    def find() -> set[int]:
        pids = set(find_service_processes(home_key, pipeline_id, env_dir, trusted))
        for entry in recorded.values():
            pid = entry.pid
            # A recorded pid may have been reused by now: only one that still carries the marks.
            if pid and pid_alive(pid) and belongs(pid, home_key, pipeline_id, env_dir):
                pids.add(pid)
        return pids

    stopped = stop(
        find, grace=wait, children=CHILDREN, what=f"service processes of {pipeline_id}"
    )
    _reap_children()
    return stopped


def _reap_children() -> None:
    for pid, child in list(CHILDREN.items()):
        if child.poll() is not None:
            CHILDREN.pop(pid, None)
