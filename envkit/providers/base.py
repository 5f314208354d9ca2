"""The provider interface: where an environment's components live.

A provider creates the network, database(s) and cluster of one pipeline, says how to probe
their health, and destroys them. It records what it creates in ``record.resources`` *before*
creating it (and calls ``save``), so a process killed at any point leaves enough for ``destroy``;
``destroy`` is idempotent and must also work with no record at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Set as AbstractSet

    from envkit.health import Probe
    from envkit.reaping import Leftover, ReapOptions, ReapReport
    from envkit.spec import EnvSpec
    from envkit.spec_model import RedisSpec
    from envkit.state import Record


def _ignore_progress(step: str) -> None:
    return None


@dataclass
class ProvisionRequest:
    """What a provider needs to create one environment."""

    record: Record
    save: Callable[[], None]
    progress: Callable[[str], None] = _ignore_progress
    dataset: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    spec: EnvSpec | None = None  # databases and services to create; None: one database
    redis: RedisSpec | None = None  # the Redis server to create (the spec's or --redis); None: none

    @property
    def pipeline_id(self) -> str:
        return self.record.pipeline_id


@dataclass(frozen=True)
class Check:
    """One prerequisite ``envkit doctor`` reports: ``probe`` returns what it found, or raises
    ``EnvkitError`` saying what is missing (its hint says how to fix it)."""

    name: str
    required: bool
    probe: Callable[[], str]


class Provider(Protocol):
    """Creates, probes and destroys the components of environments."""

    name: str

    def checks(self) -> list[Check]:
        """What ``envkit doctor`` checks for this provider (cheap to build; run by doctor)."""
        ...

    def preflight(self) -> None:
        """Check prerequisites (binaries, CLIs, credentials) before anything is created;
        raise ``PrerequisiteError`` / ``ConfigError`` (exit 2) when one is missing."""
        ...

    def provision(self, request: ProvisionRequest) -> dict[str, str]:
        """Create (or repair) every component; return the outputs (with secrets).

        A ``ConfigError`` / ``PrerequisiteError`` raised before anything is recorded in
        ``record.resources`` is a refusal: exit 2, and the lifecycle keeps no record of it.
        Checks that can run earlier belong in :meth:`preflight`."""
        ...

    def check_spec(self, spec: EnvSpec) -> None:
        """Raise ``ConfigError`` (exit 2) when this provider cannot run ``spec`` (a service
        without the command or image it needs, a name it cannot use)."""
        ...

    def probes(self, record: Record) -> list[Probe]:
        """Health probes for every component of a provisioned environment."""
        ...

    def gone(self, record: Record) -> list[str]:
        """What of a provisioned environment is no longer running, as short phrases naming the
        component (``"database: server not running (pid 123)"``); empty when everything runs.
        Cheap (a pid and its command line, a cached state): ``status`` and ``list`` call it
        for every environment."""
        ...

    def restart(self, record: Record) -> bool:
        """Start the stopped components of a kept environment again on their own data (a
        preserved environment whose server died); whether it could. Never recreates data."""
        ...

    def logs(self, record: Record, component: str | None = None) -> dict[str, Path]:
        """Log files of the environment's components by name (``postgres``, a service's
        name), only ``component`` when given; ``ConfigError`` naming the known ones when that
        is not one of them. Empty when the provider keeps no local logs."""
        ...

    def destroy(self, pipeline_id: str, record: Record | None) -> None:
        """Remove everything of ``pipeline_id``; succeed when nothing is there."""
        ...

    def leftovers(self, known: AbstractSet[str]) -> list[Leftover]:
        """Pipelines of this ``ENVKIT_HOME`` that left something but have no record (IDs not in
        ``known``), found by the provider's own marks only; the reaper decides on each and calls
        :meth:`destroy` under the pipeline's lock. Finds, never changes anything."""
        ...

    def reap_leftovers(self, options: ReapOptions) -> ReapReport:
        """Reap what the provider left that belongs to no pipeline of this home (half-done
        copies, stale caches, cloud resources found by tag); with ``options.dry_run`` only
        report it, writing nothing."""
        ...


@runtime_checkable
class RetainsExpiry(Protocol):
    """A provider that keeps a copy of an environment's expiry and status outside the record
    (a shared database server's marks): the lifecycle calls :meth:`retain` before it saves a
    new ``expires_at`` or status (preserve, extend), so a refusal changes nothing."""

    def retain(self, record: Record) -> None:
        """Write ``record``'s expiry and status where the provider keeps them."""
        ...
