"""The library API: ``envkit.environment(...)`` as a context manager, ``envkit.attach(...)``.

::

    import envkit

    with envkit.environment("pr-42", dataset="default") as env:
        env.outputs["DATABASE_URL"]   # up on enter; on exit down, or preserved if the block raised

    env = envkit.attach("pr-42")      # an environment a CI step brought up earlier

This module is glue over :mod:`envkit.lifecycle`: it does no provisioning of its own, so the CLI,
the pytest plugin and library callers all get the same locking, recording and idempotence.
Drivers (psycopg) are imported inside the methods that need them, so importing this is cheap.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from envkit import lifecycle
from envkit.durations import parse_duration
from envkit.errors import ConfigError
from envkit.plan import Plan
from envkit.providers import get_provider
from envkit.settings import PROVIDERS, Settings
from envkit.state import Record, Status

if TYPE_CHECKING:
    import psycopg

    from envkit.health import HealthReport

log = logging.getLogger(__name__)

OnFailure = Literal["preserve", "destroy"]
_ON_FAILURE: tuple[str, ...] = ("preserve", "destroy")
# Statuses in which an environment can be used (a preserved one still runs until its TTL).
_USABLE = (Status.READY, Status.PRESERVED)


def _duration(value: timedelta | str | None, what: str) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return parse_duration(value, what=what)


class Environment:
    """A handle to one environment that is up: its outputs, status, a connection, teardown.

    ``outputs`` hold secrets (the database password, URLs with it): they are for code, so never
    log them; ``repr`` of the handle shows none.
    """

    def __init__(self, ctx: Plan, record: Record) -> None:
        self._ctx = ctx
        self._record = record
        self._down = False

    def __repr__(self) -> str:
        return f"Environment(pipeline_id={self.pipeline_id!r}, provider={self.provider!r})"

    @property
    def pipeline_id(self) -> str:
        """The pipeline ID that keys this environment."""
        return self._ctx.pipeline_id

    @property
    def provider(self) -> str:
        """The provider the environment lives on (``local`` or ``aws``)."""
        return self._record.provider

    @property
    def settings(self) -> Settings:
        """The settings the environment was created or attached with."""
        return self._ctx.settings

    @property
    def outputs(self) -> dict[str, str]:
        """``DATABASE_URL`` and the rest of the outputs contract, secrets included (a copy)."""
        return dict(self._record.outputs)

    @property
    def record(self) -> Record:
        """The stored record as it is now (re-read; the one seen at up time when it is gone)."""
        current = lifecycle.status(self._ctx)
        if current is not None:
            self._record = current
        return self._record

    @property
    def status(self) -> Status:
        """Where the environment is in its lifecycle now (re-read from state)."""
        current = lifecycle.status(self._ctx)
        return Status.ABSENT if current is None else current.status

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A new psycopg connection to the environment's database (keyword arguments are
        passed to :func:`psycopg.connect`, e.g. ``autocommit=True``); the caller closes it."""
        url = self._record.outputs.get("DATABASE_URL")
        if not url:
            raise ConfigError(
                f"Environment {self.pipeline_id!r} has no DATABASE_URL output.",
                hint=f"Check 'envkit status {self.pipeline_id}'; recreate it with "
                f"'envkit down {self.pipeline_id}' and 'envkit up {self.pipeline_id}'.",
            )
        import psycopg  # ~0.14 s: only for callers that connect

        return psycopg.connect(url, **kwargs)

    def wait(self, timeout: float | None = None) -> HealthReport:
        """Wait until every component is healthy again (after a restart, say); raises with a
        per-component report when they are not within ``timeout`` seconds."""
        provider = get_provider(self._record.provider, self._ctx.settings)
        limit = self._ctx.settings.health_timeout if timeout is None else timeout
        return lifecycle.wait_for(provider, self._record, limit)

    def down(self, preserve: bool = False, ttl: timedelta | str | None = None) -> None:
        """Destroy the environment, or with ``preserve`` keep it for debugging for ``ttl``
        (default: the ``preserve_ttl`` setting). Destroying an absent environment succeeds."""
        lifetime = _duration(ttl, "TTL")
        record = lifecycle.down(self._ctx, preserve=preserve, ttl=lifetime)
        if record is not None:
            self._record = record
        self._down = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`down` was called through this handle."""
        return self._down


class EnvironmentContext:
    """What :func:`environment` returns: up on ``__enter__``, down or preserve on ``__exit__``."""

    def __init__(self, ctx: Plan, *, ttl: timedelta | None, on_failure: OnFailure) -> None:
        self._ctx = ctx
        self._ttl = ttl
        self._on_failure = on_failure
        self._env: Environment | None = None
        self._created = False

    @property
    def pipeline_id(self) -> str:
        """The pipeline ID the environment has (or will have)."""
        return self._ctx.pipeline_id

    def __enter__(self) -> Environment:
        # lifecycle.up destroys what it created when provisioning, health or seeding fails (even
        # on KeyboardInterrupt) and re-raises, so a failed enter leaves only the failed record.
        outcome = lifecycle.ensure(self._ctx, ttl=self._ttl)
        self._created = outcome.created
        try:
            self._env = Environment(self._ctx, outcome.record)
        except BaseException:
            # Nothing should fail here, but if it does nobody would ever call __exit__.
            if outcome.created:
                lifecycle.down(self._ctx)
            raise
        return self._env

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        env = self._env
        if env is None or env.closed:
            return  # the block already called env.down(...): respect what it chose
        if not self._created:
            # It was up before the block (a CI step's, or another process's): not ours to end.
            log.info("environment %s was attached, not created: left as it is", env.pipeline_id)
            return
        if exc_type is None:
            env.down()  # a teardown failure here is the caller's error to see
            return
        self._quietly(env, preserve=self._on_failure == "preserve")

    def _quietly(self, env: Environment, *, preserve: bool) -> None:
        """Tear down after the block raised, never hiding the block's exception."""
        try:
            env.down(preserve=preserve)
        except Exception as cleanup:
            log.error(
                "the block failed, and %s the environment %s failed too: %s",
                "preserving" if preserve else "destroying",
                env.pipeline_id,
                cleanup,
            )
            return
        if preserve:
            log.warning(
                "the block failed: environment %s is preserved until %s for debugging "
                "('envkit outputs %s --show-secrets' to connect, 'envkit down %s' to destroy)",
                env.pipeline_id,
                env.record.expires_at,
                env.pipeline_id,
                env.pipeline_id,
            )


def _settings(
    settings: Settings | None, provider: str | None, dataset: str | None
) -> Settings:
    if settings is None:
        return Settings.resolve({"provider": provider, "dataset": dataset})
    changes: dict[str, Any] = {}
    if provider is not None:
        if provider not in PROVIDERS:
            raise ConfigError(
                f"Unknown provider {provider!r}.", hint=f"Choose one of: {', '.join(PROVIDERS)}."
            )
        changes["provider"] = provider
    if dataset is not None:
        changes["dataset"] = dataset
    return settings.with_(**changes) if changes else settings


def environment(
    pipeline_id: str | None = None,
    *,
    provider: str | None = None,
    dataset: str | None = None,
    ttl: timedelta | str | None = None,
    on_failure: OnFailure = "preserve",
    settings: Settings | None = None,
    seed: bool = True,
    redis: bool | None = None,
) -> EnvironmentContext:
    """An environment for the ``with`` block: brought up (healthy, seeded with ``dataset``) on
    enter, destroyed on exit — or, when the block raised and ``on_failure`` is ``"preserve"``,
    kept for debugging until the ``preserve_ttl`` setting runs out.

    ``pipeline_id`` defaults to ``ENVKIT_PIPELINE_ID`` or the one detected from CI variables;
    ``provider``, ``dataset`` and ``ttl`` override the settings (``ENVKIT_*`` variables,
    ``[tool.envkit]``). Seeded as ``envkit up`` seeds (see :mod:`envkit.plan`); ``seed=False``
    loads nothing. An environment that is already up under that ID is attached to, and left
    as it is on exit: only one this block created is destroyed or preserved. ``redis=True``
    adds a Redis server (``REDIS_URL``) when the spec has no ``[redis]``.
    """
    if on_failure not in _ON_FAILURE:
        raise ConfigError(
            f"on_failure={on_failure!r} is not valid.", hint="Use 'preserve' or 'destroy'."
        )
    resolved = _settings(settings, provider, dataset)
    if redis is not None:
        resolved = resolved.with_(redis=redis)
    plan = Plan.build(pipeline_id, resolved, seed=seed)
    return EnvironmentContext(plan, ttl=_duration(ttl, "TTL"), on_failure=on_failure)


def attach(pipeline_id: str | None = None, *, settings: Settings | None = None) -> Environment:
    """A handle to an environment that is already up (``envkit up`` ran earlier, e.g. in a CI
    step). Raises ``ConfigError`` when it is absent, failed, or its processes are gone.
    Nothing is destroyed when the handle is dropped; call :meth:`Environment.down` for that."""
    resolved = settings if settings is not None else Settings.resolve()
    ctx = Plan.build(pipeline_id, resolved)
    record = lifecycle.status(ctx)
    if record is None or record.status not in _USABLE:
        shown = "absent" if record is None else str(record.status)
        raise ConfigError(
            f"Environment {ctx.pipeline_id!r} is {shown}, so there is nothing to attach to "
            f"(ENVKIT_HOME={resolved.home}).",
            hint=f"Bring it up first ('envkit up {ctx.pipeline_id}'), or use "
            "envkit.environment() to create one for the block.",
        )
    missing = get_provider(record.provider, resolved).gone(record)
    if missing:
        raise ConfigError(
            f"Environment {ctx.pipeline_id!r} is recorded {record.status} but is not running: "
            f"{'; '.join(missing)}.",
            hint=f"Run 'envkit up {ctx.pipeline_id}' to start it again (on its data when it "
            "can).",
        )
    return Environment(ctx, record)


__all__ = ["Environment", "EnvironmentContext", "OnFailure", "attach", "environment"]
