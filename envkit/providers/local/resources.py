"""What the local provider records of an environment: typed, stored in ``record.resources``
under the keys envkit has always used, so records written by older envkits load and tear down.

Loading tolerates absent keys (``up`` killed mid-provisioning writes them in steps) and values of
the wrong type (a hand-edited file): both read as unset, never an error. Saving writes only the
fields that are set and leaves every other key (the lifecycle's, a newer envkit's) as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.providers.local.osuser import RunAs
from envkit.seeding.pipeline import TEMPLATE_RESOURCE
from envkit.spec_model import DEFAULT_GRACE, HealthCheck

if TYPE_CHECKING:
    from envkit.state import Record

# envkit.seeding.pipeline reads this entry as stored (``name``, ``stats``): its shape is fixed.
SEED_TEMPLATE_KEY = TEMPLATE_RESOURCE
_SCALARS = (
    "data_root",
    "env_dir",
    "host",
    "dedicated_address",
    "run_as",
    "bindir",
    "spare",
    "port",
    "pid",
)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _path(value: object) -> Path | None:
    return Path(value) if isinstance(value, str) and value else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _int(value: object) -> int | None:
    # Digits in a string were accepted before (``int(...)`` on the stored value): still are.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _health(value: object) -> HealthCheck | None:
    data = _mapping(value)
    kind = _str(data.get("kind"))
    command = data.get("command", [])
    if kind is None or not isinstance(command, list | tuple):
        return None
    if not all(isinstance(arg, str) for arg in command):
        return None
    return HealthCheck(kind, _str(data.get("path")) or "/health", tuple(command))


def _run_as(value: object) -> RunAs | None:
    data = _mapping(value)
    name, uid, gid = _str(data.get("name")), _int(data.get("uid")), _int(data.get("gid"))
    switch = _bool(data.get("switch"))
    if name is None or uid is None or gid is None or switch is None:
        return None
    return RunAs(name, uid, gid, switch)


@dataclass
class ServiceEntry:
    """One service process: recorded (``pid`` unset) before it is spawned, completed after."""

    host: str = ""
    port: int | None = None
    log: Path | None = None
    workdir: Path | None = None
    health: HealthCheck | None = None
    grace: float = DEFAULT_GRACE
    run_as: RunAs | None = None
    pid: int | None = None
    pgid: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceEntry:
        """An entry as stored; unreadable fields are unset."""
        grace = _float(data.get("grace"))
        return cls(
            host=_str(data.get("host")) or "",
            port=_int(data.get("port")),
            log=_path(data.get("log")),
            workdir=_path(data.get("workdir")),
            health=_health(data.get("health")),
            grace=DEFAULT_GRACE if grace is None else grace,
            run_as=_run_as(data.get("run_as")),
            pid=_int(data.get("pid")),
            pgid=_int(data.get("pgid")),
        )

    def to_json(self) -> dict[str, Any]:
        """The entry as stored (``pid`` and ``port`` always, ``null`` when unset)."""
        data: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.log is not None:
            data["log"] = str(self.log)
        if self.workdir is not None:
            data["workdir"] = str(self.workdir)
        if self.health is not None:
            data["health"] = self.health.as_dict()
        data["grace"] = self.grace
        if self.run_as is not None:
            data["run_as"] = {
                "name": self.run_as.name,
                "uid": self.run_as.uid,
                "gid": self.run_as.gid,
                "switch": self.run_as.switch,
            }
        data["pid"] = self.pid
        if self.pgid is not None:
            data["pgid"] = self.pgid
        return data


@dataclass(frozen=True)
class SeedTemplate:
    """The seeded template an environment's data directory was copied from."""

    dataset: str
    name: str
    stats: Path  # the statistics sidecar written when the template was built

    @classmethod
    def from_json(cls, value: object) -> SeedTemplate | None:
        data = _mapping(value)
        dataset, name = _str(data.get("dataset")), _str(data.get("name"))
        stats = _path(data.get("stats"))
        if dataset is None or name is None or stats is None:
            return None
        return cls(dataset, name, stats)

    def to_json(self) -> dict[str, str]:
        return {"dataset": self.dataset, "name": self.name, "stats": str(self.stats)}


@dataclass
class LocalResources:
    """Everything the local provider created for one environment; unset: not (yet) known."""

    data_root: Path | None = None
    env_dir: Path | None = None
    host: str | None = None
    dedicated_address: bool | None = None
    run_as: str | None = None  # the server user's name
    bindir: Path | None = None
    spare: bool | None = None  # whether the data directory came from a ready spare copy
    port: int | None = None
    pid: int | None = None  # the postmaster, as started by ``up``
    services: dict[str, ServiceEntry] = field(default_factory=dict)
    seed_template: SeedTemplate | None = None

    @classmethod
    def load(cls, record: Record) -> LocalResources:
        """The local resources of ``record`` (absent or unreadable keys are unset)."""
        return cls.from_json(record.resources)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalResources:
        """Read the resources mapping as stored."""
        data = _mapping(data)
        services = {
            name: ServiceEntry.from_json(entry)
            for name, entry in _mapping(data.get("services")).items()
            if isinstance(name, str) and isinstance(entry, Mapping)
        }
        return cls(
            data_root=_path(data.get("data_root")),
            env_dir=_path(data.get("env_dir")),
            host=_str(data.get("host")),
            dedicated_address=_bool(data.get("dedicated_address")),
            run_as=_str(data.get("run_as")),
            bindir=_path(data.get("bindir")),
            spare=_bool(data.get("spare")),
            port=_int(data.get("port")),
            pid=_int(data.get("pid")),
            services=services,
            seed_template=SeedTemplate.from_json(data.get(SEED_TEMPLATE_KEY)),
        )

    def save(self, record: Record) -> None:
        """Write the fields that are set into ``record.resources`` (the caller saves the record)."""
        self.write(record.resources)

    def write(self, target: MutableMapping[str, Any]) -> None:
        """Write the fields that are set into ``target``, under their stored keys."""
        for key in _SCALARS:
            value = getattr(self, key)
            if value is not None:
                target[key] = str(value) if isinstance(value, Path) else value
        if self.services:
            stored = _mapping(target.get("services"))
            # Keys of an entry this envkit does not know (a newer one wrote them) are kept.
            target["services"] = {
                name: {**_mapping(stored.get(name)), **entry.to_json()}
                for name, entry in self.services.items()
            }
        if self.seed_template is not None:
            target[SEED_TEMPLATE_KEY] = self.seed_template.to_json()

    def has_server(self) -> bool:
        """Whether the server's binaries, address and port are known (to start it again)."""
        return self.bindir is not None and self.host is not None and self.port is not None
