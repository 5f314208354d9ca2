"""Durable state: one JSON record per pipeline, an append-only JSONL event log, per-pipeline locks.

Layout under ``ENVKIT_HOME`` (directories 0700, files 0600)::

    envs/<pipeline-id>.json    the record (written to a temp file, fsync'd, renamed)
    locks/<pipeline-id>.lock   the flock guarding every transition of that pipeline
    events.jsonl               one line per event, every pipeline, appended atomically

The event log is shared so that ``down`` can remove every file of a pipeline and still leave its
history readable.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from envkit.errors import ConfigError, StateError
from envkit.locking import FileLock, is_locked
from envkit.naming import iso_utc, parse_iso

RECORD_VERSION = 1
MIN_FREE_BYTES = 256 << 10
"""Free space ENVKIT_HOME needs before an operation starts: a record is ~2 KiB, an event line
~0.5 KiB; a quarter MiB is room for any one operation, so a full disk is refused up front (exit 2)
rather than failing half-way with an environment created and no record of it."""


class Status(StrEnum):
    """Where an environment is in its lifecycle."""

    PROVISIONING = "provisioning"
    READY = "ready"
    FAILED = "failed"
    PRESERVED = "preserved"
    DESTROYING = "destroying"
    ABSENT = "absent"


BUSY_STATUSES = (Status.PROVISIONING, Status.DESTROYING)


def utcnow() -> datetime:
    """Now, timezone-aware, UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Record:
    """Everything envkit knows about one environment."""

    pipeline_id: str
    provider: str
    status: Status
    created_at: str
    expires_at: str
    owner: str
    updated_at: str = ""
    owner_pid: int = 0
    dataset: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    version: int = RECORD_VERSION

    @property
    def expires(self) -> datetime:
        """``expires_at`` as an aware datetime."""
        return parse_iso(self.expires_at)

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the TTL has run out."""
        return self.expires <= (now or utcnow())

    def to_json(self) -> dict[str, Any]:
        """The record as stored."""
        data = asdict(self)
        data["status"] = str(self.status)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """Read a stored record (unknown keys from newer versions are ignored)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["status"] = Status(known["status"])
        return cls(**known)

    def public(self) -> dict[str, Any]:
        """The status object of ``status --json`` / ``list --json`` (no outputs, no secrets)."""
        return {
            "pipeline_id": self.pipeline_id,
            "provider": self.provider,
            "status": str(self.status),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
            "owner": self.owner,
            "dataset": self.dataset,
            "error": self.error,
            "timings": self.timings,
        }


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole: a private (0600) temp file beside it, named
    ``.<name>.<random>`` so concurrent writers (processes or threads) never share one, renamed
    over it. Readers see the old content or the new, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _what_to_do(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free some space on that filesystem, or point ENVKIT_HOME at another one."
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "Make it writable for this user, or point ENVKIT_HOME at a directory that is."
    return "Point ENVKIT_HOME at a directory this user can create and write."


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


class StateStore:
    """Reads and writes records, locks and events under one ``ENVKIT_HOME``.

    Every foreseeable filesystem failure is an :class:`EnvkitError` naming the path: an unusable
    home found by :meth:`prepare` (run before every transition) is a ``ConfigError`` (exit 2,
    nothing created); a write that fails later (the disk filled up meanwhile) a ``StateError``.
    """

    def __init__(self, home: Path) -> None:
        self.home = home

    def prepare(self, *, need_space: bool = False) -> None:
        """Create ENVKIT_HOME (0700) if needed and prove it usable before anything is written
        for an operation: a directory, writable and, with ``need_space`` (operations that
        create: ``up``; never ``down`` or ``reap``, which free space), with room left. Else
        ``ConfigError`` (exit 2)."""
        home = self.home
        try:
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not home.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(home))
            if not os.access(home, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(home))
            fs = os.statvfs(home)
        except OSError as exc:
            raise ConfigError(
                f"ENVKIT_HOME {home} is not usable: {_reason(exc)}"
                + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(home) else "")
                + ".",
                hint=_what_to_do(exc),
            ) from None
        if not need_space:
            return
        # root may use the blocks reserved for it; others only the available ones
        free_blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
        if free_blocks * fs.f_frsize < MIN_FREE_BYTES or (fs.f_files and fs.f_favail == 0):
            raise ConfigError(
                f"ENVKIT_HOME {home} is on a full filesystem "
                f"({free_blocks * fs.f_frsize // 1024} KiB free; envkit needs "
                f"{MIN_FREE_BYTES // 1024} KiB).",
                hint=_what_to_do(OSError(errno.ENOSPC, "full")),
            )

    def _failed(self, exc: OSError, doing: str, path: Path) -> StateError:
        return StateError(
            f"Could not {doing} {path}: {_reason(exc)}.",
            hint=_what_to_do(exc)
            + " Then re-run; 'envkit down ID' removes what a failed operation left.",
        )

    def _unreadable(self, exc: OSError, path: Path) -> ConfigError:
        return ConfigError(
            f"ENVKIT_HOME {self.home} is not usable: cannot read {path} ({_reason(exc)}).",
            hint=_what_to_do(exc),
        )

    # -- paths --------------------------------------------------------------------------------
    @property
    def envs_dir(self) -> Path:
        return self.home / "envs"

    @property
    def events_path(self) -> Path:
        return self.home / "events.jsonl"

    def record_path(self, pipeline_id: str) -> Path:
        return self.envs_dir / f"{pipeline_id}.json"

    def lock_path(self, pipeline_id: str) -> Path:
        return self.home / "locks" / f"{pipeline_id}.lock"

    def _ensure(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise self._failed(exc, "create the directory", folder) from exc

    # -- records ------------------------------------------------------------------------------
    def load(self, pipeline_id: str) -> Record | None:
        """The record of ``pipeline_id``, or ``None`` when absent (or unreadable)."""
        path = self.record_path(pipeline_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:  # a home under a file, or one this user may not read
            raise self._unreadable(exc, path) from exc
        try:
            return Record.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError):
            return None

    def save(self, record: Record) -> None:
        """Write ``record`` atomically: a temp file in the same directory, renamed over the old.

        No fsync: the rename already makes a killed process leave either the old or the new
        record; fsync would only guard against power loss, at ~4 ms a write on this hot path.
        """
        self._ensure(self.envs_dir)
        record.updated_at = iso_utc(utcnow())
        payload = json.dumps(record.to_json(), indent=2, sort_keys=True).encode()
        path = self.record_path(record.pipeline_id)
        try:
            write_atomic(path, payload)
        except OSError as exc:
            raise self._failed(exc, "write the record", path) from exc

    def delete(self, pipeline_id: str) -> None:
        """Remove the record (absent is fine)."""
        path = self.record_path(pipeline_id)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise self._failed(exc, "remove the record", path) from exc

    def all(self) -> list[Record]:
        """Every record, sorted by pipeline ID; stray temp files are ignored."""
        try:
            paths = sorted(self.envs_dir.glob("*.json")) if self.envs_dir.is_dir() else []
        except OSError as exc:
            raise self._unreadable(exc, self.envs_dir) from exc
        records = []
        for path in paths:
            record = self.load(path.stem)
            if record is not None:
                records.append(record)
        return records

    # -- locks --------------------------------------------------------------------------------
    def lock(self, pipeline_id: str) -> FileLock:
        """The (unacquired) lock of a pipeline; the home is checked first (:meth:`prepare`):
        every transition starts by taking one."""
        self.prepare()
        self._ensure(self.lock_path(pipeline_id).parent)
        return FileLock(self.lock_path(pipeline_id), what=f"Pipeline {pipeline_id!r}")

    @contextmanager
    def locked(self, pipeline_id: str, timeout: float) -> Iterator[FileLock]:
        """Hold the pipeline's lock for the block."""
        lock = self.lock(pipeline_id)
        lock.acquire(timeout)
        try:
            yield lock
        finally:
            lock.release()

    def is_locked(self, pipeline_id: str) -> bool:
        """Whether a live process holds the pipeline's lock."""
        return is_locked(self.lock_path(pipeline_id))

    # -- events -------------------------------------------------------------------------------
    def event(self, pipeline_id: str, name: str, **fields: Any) -> None:
        """Append one event; a single ``write`` on an O_APPEND fd, so lines never interleave."""
        self._ensure(self.home)
        line = {
            "ts": time.time(),
            "at": iso_utc(utcnow()),
            "pipeline_id": pipeline_id,
            "event": name,
            "pid": os.getpid(),
            **fields,
        }
        data = (json.dumps(line, sort_keys=True, default=str) + "\n").encode()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.events_path, flags, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._failed(exc, "append to the event log", self.events_path) from exc

    def events(self, pipeline_id: str | None = None) -> list[dict[str, Any]]:
        """Events in order, optionally of one pipeline; torn or foreign lines are skipped."""
        try:
            lines = self.events_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._unreadable(exc, self.events_path) from exc
        found = []
        for text in lines:
            try:
                item = json.loads(text)
            except ValueError:
                continue
            if isinstance(item, dict) and (
                pipeline_id is None or item.get("pipeline_id") == pipeline_id
            ):
                found.append(item)
        return found
