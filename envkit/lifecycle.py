"""The lifecycle of environments: up, down (or preserve), status, list.

Every transition runs under the pipeline's lock, is saved in its record and appended to the event
log with its duration, and is idempotent: ``up`` of a ready environment returns it, ``up`` after
a crash repairs, ``down`` of an absent environment succeeds (and still sweeps leftovers).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from envkit.commands import RESOURCE as RUN_RESOURCE
from envkit.commands import stop_orphaned_command
from envkit.errors import (
    ConfigError,
    EnvkitError,
    PrerequisiteError,
    ProvisionError,
)
from envkit.naming import iso_utc
from envkit.outputs import complete
from envkit.plan import Plan
from envkit.providers import Provider, ProvisionRequest, RetainsExpiry, get_provider
from envkit.redact import scrub, secret_values
from envkit.settings import Settings
from envkit.state import (
    BUSY_STATUSES,
    Record,
    StateStore,
    Status,
    utcnow,
)

if TYPE_CHECKING:
    from envkit.health import HealthReport, Probe

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _quiet(step: str) -> None:
    return None


@dataclass(frozen=True)
class Outcome:
    """What :func:`ensure` did: the environment's record, and whether this call created it
    (``False`` when it was already up, or up but repaired: it is someone else's to destroy)."""

    record: Record
    created: bool


def up(
    plan: Plan,
    *,
    ttl: timedelta | None = None,
    progress: Progress = _quiet,
    keep_on_failure: bool = False,
    recreate: bool = False,
) -> Record:
    """Bring the environment to ``ready`` and return its record (with secret outputs)."""
    return ensure(
        plan, ttl=ttl, progress=progress, keep_on_failure=keep_on_failure, recreate=recreate
    ).record


def ensure(
    plan: Plan,
    *,
    ttl: timedelta | None = None,
    progress: Progress = _quiet,
    keep_on_failure: bool = False,
    recreate: bool = False,
) -> Outcome:
    """:func:`up`, saying whether this call created the environment.

    An environment that is up is returned as it is (its TTL renewed when ``ttl`` is given).
    One whose processes are gone is started again on its own data when the provider can;
    otherwise a ready one is recreated, and a preserved one — kept for its data — is refused
    unless ``recreate``. A failed or half-done one is repaired (destroyed, then created).
    """
    store, pipeline_id = plan.store, plan.pipeline_id
    # Every check of input and prerequisites comes before the first lock, record or directory
    # of the pipeline: exit 2 promises that nothing was created.
    provider = get_provider(plan.settings.provider, plan.settings)
    lifetime = ttl or plan.settings.ttl
    store.prepare(need_space=True)  # ENVKIT_HOME: a writable directory with room (exit 2)
    provider.preflight()  # a missing prerequisite is exit 2 with nothing created
    spec = plan.spec  # so is a bad spec
    if spec is not None:
        provider.check_spec(spec)
    dataset = plan.dataset
    if dataset is not None:  # an unknown dataset is exit 2 with nothing created
        from envkit.seeding.datasets import load as load_dataset_definition

        load_dataset_definition(plan.settings, dataset)
    with store.locked(pipeline_id, plan.settings.lock_timeout) as lock:
        record = store.load(pipeline_id)
        kept = record is not None and record.status in (Status.READY, Status.PRESERVED)
        if record is not None and kept:
            if record.provider != provider.name:
                raise ConfigError(
                    f"Pipeline {pipeline_id!r} is already up on the {record.provider} provider.",
                    hint=f"Run 'envkit down {pipeline_id}' first, or use --provider "
                    f"{record.provider}.",
                )
            if _running(plan, provider, record, recreate=recreate):
                if ttl is not None:
                    record.expires_at = iso_utc(utcnow() + lifetime)
                    _retain(provider, record)
                    store.save(record)
                    store.event(pipeline_id, "extended", expires_at=record.expires_at)
                return Outcome(record, created=False)
        if record is not None:
            if record.status in BUSY_STATUSES:
                log.warning(
                    "a previous envkit (pid %s) died while %s %s: repairing",
                    record.owner_pid,
                    record.status,
                    pipeline_id,
                )
            store.event(pipeline_id, "repair", previous=str(record.status))
            _destroy(provider, pipeline_id, record)
        try:
            created = _provision(plan, provider, lifetime, dataset, progress, keep_on_failure)
        except (ConfigError, PrerequisiteError):
            if store.load(pipeline_id) is None:  # refused before creating anything
                lock.release(unlink=True)  # no record, no lock file: as if never asked
            raise
        return Outcome(created, created=not kept)


def _running(plan: Plan, provider: Provider, record: Record, *, recreate: bool) -> bool:
    """Whether a ready or preserved environment runs, after starting what stopped on its own
    data if need be; ``False`` when it must be recreated (``ProvisionError`` when it is
    preserved and ``recreate`` was not asked: its data is what the user kept)."""
    missing = provider.gone(record)
    pipeline_id = record.pipeline_id
    if not missing:
        if not recreate:
            return True
        try:  # asked to replace it unless it serves: check that it does
            wait_for(provider, record, plan.settings.health_timeout, store=plan.store)
        except EnvkitError as exc:
            log.warning("environment %s runs but is unhealthy (%s): recreating", pipeline_id, exc)
            return False
        return True
    if provider.restart(record):
        try:
            wait_for(provider, record, plan.settings.health_timeout, store=plan.store)
        except EnvkitError as exc:  # it runs, but its data does not serve
            missing = [*missing, f"started again, then: {exc.message.splitlines()[0]}"]
        else:
            plan.store.event(pipeline_id, "restarted", gone=missing)
            log.warning("environment %s started again on its data: %s", pipeline_id, missing)
            return True
    if record.status is Status.PRESERVED and not recreate:
        raise ProvisionError(
            f"Environment {pipeline_id!r} is preserved, but {'; '.join(missing)}, and it cannot "
            "be used again on its data.",
            hint=f"'envkit up {pipeline_id} --recreate' replaces it with a new one (the kept "
            f"data is lost); 'envkit down {pipeline_id}' removes it.",
        )
    log.warning("environment %s: %s; recreating it", pipeline_id, "; ".join(missing))
    return False


def _refused_before_creating(exc: BaseException, record: Record) -> bool:
    """Whether ``exc`` is an exit-2 refusal raised before the provider recorded (and so before
    it created) anything: providers record every resource before creating it."""
    return (
        isinstance(exc, ConfigError | PrerequisiteError)
        and not record.resources
        and not record.outputs
    )


def _provision(
    ctx: Plan,
    provider: Provider,
    lifetime: timedelta,
    dataset: str | None,
    progress: Progress,
    keep_on_failure: bool,
) -> Record:
    store, pipeline_id = ctx.store, ctx.pipeline_id
    now = utcnow()
    record = Record(
        pipeline_id=pipeline_id,
        provider=provider.name,
        status=Status.PROVISIONING,
        created_at=iso_utc(now),
        expires_at=iso_utc(now + lifetime),
        owner=ctx.settings.owner,
        owner_pid=os.getpid(),
        dataset=dataset,
    )
    store.save(record)
    store.event(pipeline_id, "provisioning", provider=provider.name)
    started = time.perf_counter()
    request = ProvisionRequest(record, lambda: store.save(record), progress, dataset)
    request.spec = ctx.spec
    request.redis = ctx.redis
    try:
        outputs = provider.provision(request)
        record.outputs = complete(outputs, pipeline_id=pipeline_id, provider=provider.name)
        store.save(record)
        progress("health")
        health_started = time.perf_counter()
        report = wait_for(provider, record, ctx.settings.health_timeout, store=store)
        request.timings["health"] = time.perf_counter() - health_started
        request.timings.update(report.timings())  # time to ready per component
        if dataset is not None:
            progress("seed")
            seed_started = time.perf_counter()
            stats = seed_dataset(ctx, record, dataset)
            request.timings["seed"] = time.perf_counter() - seed_started
            request.timings.update({f"seed_{k}": v for k, v in stats.items()})
    except BaseException as exc:
        if _refused_before_creating(exc, record):
            # e.g. the data directory cannot be created: exit 2, and exit 2 promises nothing
            # was created, so no `failed` record is left behind either (nor a destroy, which
            # could create what it looks for).
            store.delete(pipeline_id)
            store.event(pipeline_id, "refused", error=str(exc))
            raise
        secrets = secret_values(record.outputs)
        record.status = Status.FAILED
        record.error = scrub(str(exc) if isinstance(exc, EnvkitError) else repr(exc), secrets)
        record.timings = _rounded(request.timings, started)
        if not keep_on_failure:
            try:
                _destroy(provider, pipeline_id, record)
            except Exception as cleanup:  # report the first failure, not the cleanup's
                log.error(
                    "cleaning up the failed environment %s failed: %s",
                    pipeline_id,
                    scrub(str(cleanup), secrets),
                )
        store.save(record)
        store.event(pipeline_id, "failed", error=record.error, timings=record.timings)
        if isinstance(exc, EnvkitError | KeyboardInterrupt | SystemExit):
            raise
        raise ProvisionError(f"Provisioning {pipeline_id!r} failed: {record.error}") from exc
    record.status = Status.READY
    record.error = None
    record.timings = _rounded(request.timings, started)
    store.save(record)
    store.event(pipeline_id, "ready", timings=record.timings)
    return record


def _rounded(timings: dict[str, float], started: float) -> dict[str, float]:
    result = {k: round(v, 4) for k, v in timings.items()}
    result["total"] = round(time.perf_counter() - started, 4)
    return result


def wait_for(
    provider: Provider,
    record: Record,
    timeout: float,
    *,
    store: StateStore | None = None,
    extra: Sequence[Probe] = (),
) -> HealthReport:
    """Wait until every component of ``record`` is healthy (raises with a report if not).

    Probes: the provider's, plus ``extra`` (e.g. health checks declared by the environment
    spec). With ``store``, the report (per-probe time to ready, attempts, last error) is
    appended to the event log as ``healthy`` or ``unhealthy``.
    """
    from envkit.health import HealthCheckFailedError, wait_until_healthy  # ~16 ms: only here

    try:
        report = wait_until_healthy(
            [*provider.probes(record), *extra],
            timeout=timeout,
            secrets=secret_values(record.outputs),
        )
    except HealthCheckFailedError as exc:
        if store is not None:
            store.event(record.pipeline_id, "unhealthy", **exc.report.as_dict())
        raise
    if store is not None:
        store.event(record.pipeline_id, "healthy", **report.as_dict())
    return report


def recheck(ctx: Plan, timeout: float | None = None) -> HealthReport:
    """Re-check an existing environment's health (``envkit wait``), without taking its lock
    (a long wait must not block ``down``); the result goes to the event log."""
    record = ctx.store.load(ctx.pipeline_id)
    if record is None or not record.outputs:
        raise ConfigError(
            f"Pipeline {ctx.pipeline_id!r} has no environment to check.",
            hint=f"Create it with 'envkit up {ctx.pipeline_id}'.",
        )
    provider = get_provider(record.provider, ctx.settings)
    missing = provider.gone(record)
    if missing:  # nothing to wait for: it will not come back by itself
        raise _not_running(ctx, missing)
    return wait_for(
        provider,
        record,
        ctx.settings.health_timeout if timeout is None else timeout,
        store=ctx.store,
    )


def _not_running(ctx: Plan, missing: list[str]) -> Exception:
    """The failed health report of an environment whose processes are gone (``wait``)."""
    from envkit.health import HealthCheckFailedError, HealthReport, ProbeResult

    results = []
    for item in missing:
        component, _, problem = item.partition(": ")
        results.append(
            ProbeResult("running", component, attempts=1, error=problem or item, fatal=True)
        )
    report = HealthReport(results)
    ctx.store.event(ctx.pipeline_id, "unhealthy", **report.as_dict())
    headline = f"Environment {ctx.pipeline_id!r} is not running: {'; '.join(missing)}."
    return HealthCheckFailedError(
        headline,
        report,
        headline=headline,
        hint=f"'envkit up {ctx.pipeline_id}' starts it again (on its data when it can).",
    )


def seed_dataset(ctx: Plan, record: Record, dataset: str) -> dict[str, float]:
    """The seeding hook: load ``dataset`` into the environment's database (a no-op but for the
    statistics when the provider copied it from the dataset's seeded template)."""
    from envkit.seeding import pipeline as seeding

    stats = seeding.seed_environment(ctx.settings, record, dataset)
    ctx.store.event(record.pipeline_id, "seeded", dataset=dataset, **stats)
    return stats


def down(ctx: Plan, *, preserve: bool = False, ttl: timedelta | None = None) -> Record | None:
    """Destroy the environment (``None`` afterwards), or with ``preserve`` keep it until its TTL."""
    store, pipeline_id = ctx.store, ctx.pipeline_id
    lock = store.lock(pipeline_id)
    lock.acquire(ctx.settings.lock_timeout)
    try:
        record = store.load(pipeline_id)
        if preserve:
            if record is None:
                raise ConfigError(f"Pipeline {pipeline_id!r} has no environment to preserve.")
            record.status = Status.PRESERVED
            record.expires_at = iso_utc(utcnow() + (ttl or ctx.settings.preserve_ttl))
            _retain(get_provider(record.provider, ctx.settings), record)
            store.save(record)
            store.event(pipeline_id, "preserved", expires_at=record.expires_at)
            return record
        provider = get_provider(record.provider if record else ctx.settings.provider, ctx.settings)
        started = time.perf_counter()
        before = (record.status, record.owner_pid) if record is not None else None
        if record is not None:
            record.status = Status.DESTROYING
            record.owner_pid = os.getpid()
            store.save(record)
            store.event(pipeline_id, "destroying")
        try:
            _destroy(provider, pipeline_id, record)
        except (ConfigError, PrerequisiteError):
            # A refusal (exit 2: a credential or setting missing) comes before the provider
            # removes anything: the environment is as it was, so is its record.
            if record is not None and before is not None:
                record.status, record.owner_pid = before
                store.save(record)
                store.event(pipeline_id, "destroy-refused")
            raise
        store.delete(pipeline_id)
        if record is not None:
            store.event(pipeline_id, "absent", seconds=round(time.perf_counter() - started, 4))
        lock.release(unlink=True)
        return None
    finally:
        lock.release()


def extend(ctx: Plan, ttl: timedelta) -> Record:
    """Give a ready or preserved environment a new ``expires_at`` of now + ``ttl``."""
    store, pipeline_id = ctx.store, ctx.pipeline_id
    with store.locked(pipeline_id, ctx.settings.lock_timeout):
        record = store.load(pipeline_id)
        if record is None or record.status not in (Status.READY, Status.PRESERVED):
            raise ConfigError(
                f"Pipeline {pipeline_id!r} has no ready or preserved environment to extend "
                f"(status: {record.status if record else Status.ABSENT}).",
                hint=f"Create it with 'envkit up {pipeline_id}'.",
            )
        record.expires_at = iso_utc(utcnow() + ttl)
        _retain(get_provider(record.provider, ctx.settings), record)
        store.save(record)
        store.event(pipeline_id, "extended", expires_at=record.expires_at)
        return record


def _retain(provider: Provider, record: Record) -> None:
    """Let a provider that keeps the expiry elsewhere too (a shared server) record it."""
    if isinstance(provider, RetainsExpiry):
        provider.retain(record)


def _destroy(provider: Provider, pipeline_id: str, record: Record | None) -> None:
    if record is not None:  # what a killed `envkit run` left running against it goes first
        stop_orphaned_command(pipeline_id, record.resources)
    provider.destroy(pipeline_id, record)


def note_run(ctx: Plan, marker: str, owner: dict[str, int]) -> None:
    """Record an ``envkit run`` whose command uses the environment (see envkit.commands); what
    earlier runs whose envkit died (a killed run, retried) left running is stopped first."""
    with ctx.store.locked(ctx.pipeline_id, ctx.settings.lock_timeout):
        record = ctx.store.load(ctx.pipeline_id)
        if record is None:
            return
        stop_orphaned_command(ctx.pipeline_id, record.resources)
        record.resources.setdefault(RUN_RESOURCE, {})[marker] = owner
        ctx.store.save(record)


def forget_run(ctx: Plan, marker: str) -> None:
    """Drop a finished run's entry (its command has exited)."""
    with ctx.store.locked(ctx.pipeline_id, ctx.settings.lock_timeout):
        record = ctx.store.load(ctx.pipeline_id)
        runs = record.resources.get(RUN_RESOURCE) if record is not None else None
        if record is None or not isinstance(runs, dict) or runs.pop(marker, None) is None:
            return
        if not runs:
            del record.resources[RUN_RESOURCE]
        ctx.store.save(record)


def status(ctx: Plan) -> Record | None:
    """The record of the environment, or ``None`` when absent."""
    return ctx.store.load(ctx.pipeline_id)


def list_environments(settings: Settings) -> list[Record]:
    """Every environment recorded under the settings' ENVKIT_HOME."""
    return StateStore(settings.home).all()


def describe(settings: Settings, records: Sequence[Record]) -> list[dict[str, object]]:
    """The status objects of ``records`` as they are now, not only as recorded: a ready or
    preserved environment whose processes are gone says so (``alive``: false, what is gone in
    ``error``), and a ready one is reported ``failed`` (a cheap check per environment)."""
    providers: dict[str, Provider] = {}
    described = []
    for record in records:
        data: dict[str, object] = record.public()
        if record.status in (Status.READY, Status.PRESERVED):
            if record.provider not in providers:
                providers[record.provider] = get_provider(record.provider, settings)
            missing = providers[record.provider].gone(record)
            data["alive"] = not missing
            if missing:
                data["error"] = "not running: " + "; ".join(missing)
                if record.status is Status.READY:
                    data["status"] = str(Status.FAILED)
        described.append(data)
    return described


def absent_status(pipeline_id: str) -> dict[str, object]:
    """The status object of an environment that does not exist."""
    return {
        "pipeline_id": pipeline_id,
        "provider": None,
        "status": str(Status.ABSENT),
        "created_at": None,
        "expires_at": None,
    }
