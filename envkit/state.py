"""Durable state: one JSON record per pipeline, an append-only JSONL event log, per-pipeline locks.

Layout under ``ENVKIT_HOME`` (directories 0700, files 0600)::

    envs/<pipeline-id>.json    the record (written to a temp file, fsync'd, renamed)
    locks/<pipeline-id>.lock   the flock guarding every transition of that pipeline
    events.jsonl               one line per event, every pipeline, appended atomically

The event log is shared so that ``down`` can remove every file of a pipeline and still leave its
history readable.
"""

from __future__ import annotations

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

from envkit.locking import FileLock, is_locked
from envkit.naming import iso_utc, parse_iso

RECORD_VERSION = 1


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


class StateStore:
    """Reads and writes records, locks and events under one ``ENVKIT_HOME``."""

    def __init__(self, home: Path) -> None:
        self.home = home

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
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- records ------------------------------------------------------------------------------
    def load(self, pipeline_id: str) -> Record | None:
        """The record of ``pipeline_id``, or ``None`` when absent (or unreadable)."""
        try:
            text = self.record_path(pipeline_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
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
        write_atomic(self.record_path(record.pipeline_id), payload)

    def delete(self, pipeline_id: str) -> None:
        """Remove the record (absent is fine)."""
        self.record_path(pipeline_id).unlink(missing_ok=True)

    def all(self) -> list[Record]:
        """Every record, sorted by pipeline ID; stray temp files are ignored."""
        if not self.envs_dir.is_dir():
            return []
        records = []
        for path in sorted(self.envs_dir.glob("*.json")):
            record = self.load(path.stem)
            if record is not None:
                records.append(record)
        return records

    # -- locks --------------------------------------------------------------------------------
    def lock(self, pipeline_id: str) -> FileLock:
        """The (unacquired) lock of a pipeline."""
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
        fd = os.open(self.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def events(self, pipeline_id: str | None = None) -> list[dict[str, Any]]:
        """Events in order, optionally of one pipeline; torn or foreign lines are skipped."""
        try:
            lines = self.events_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
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
