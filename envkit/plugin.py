"""The pytest plugin (entry point ``pytest11``, disabled with ``-p no:envkit``).

Fixtures:

- ``envkit_env`` (session): the session's :class:`envkit.Environment`. Attached when the
  pipeline ID (``--envkit-pipeline-id``, ``ENVKIT_PIPELINE_ID``, the ``envkit_pipeline_id`` ini
  key, or the CI's run) names an environment that is up; otherwise created for the session and
  destroyed at its end — or preserved for debugging when a test failed.
- ``envkit_outputs`` (session): its outputs (``DATABASE_URL``, …; secrets included).
- ``envkit_db`` (function): a psycopg connection inside a transaction that is rolled back after
  the test, so tests never see each other's writes.
- ``envkit_factory`` (session): ``envkit_factory("search")`` creates further environments,
  each destroyed at the end of the session.

With pytest-xdist, ``--envkit-xdist=shared`` (the default) gives every worker the same
environment: the first worker to need it decides its ID under a lock keyed by the xdist run,
``lifecycle.up`` serialises creation per ID (a second caller gets the same outputs), and the
controller destroys it once every worker is done. ``--envkit-xdist=per-worker`` gives each worker
its own, with the worker ID in the pipeline ID.

This module is imported by every pytest run of everyone who installed envkit, so it imports
nothing of envkit's machinery at module level: that happens inside fixtures and hooks.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import psycopg

    from envkit.api import Environment
    from envkit.settings import Settings

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Option:
    """One setting of the plugin: a command-line option, an ini key, maybe an env variable.

    Precedence: command line > environment variable > ini key > default (the same order as
    envkit's settings, where the ini file plays the part of ``[tool.envkit]``).
    """

    # A plain class, not a dataclass: this module loads in every pytest run, and each
    # dataclass costs ~0.5 ms to build.
    __slots__ = ("choices", "default", "env", "help", "kind", "name")

    def __init__(
        self,
        name: str,
        help: str,
        *,
        kind: str = "string",  # "string", "bool" or "choice"
        default: str | bool | None = None,
        env: str | None = None,
        choices: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.help = help
        self.kind = kind
        self.default = default
        self.env = env
        self.choices = choices

    def __repr__(self) -> str:
        return f"Option({self.flag})"

    @property
    def dest(self) -> str:
        """The argparse destination, which is also the ini key."""
        return f"envkit_{self.name}"

    @property
    def flag(self) -> str:
        """The command-line flag."""
        return "--envkit-" + self.name.replace("_", "-")

    def parse(self, raw: str, source: str) -> str | bool:
        """A text value (from an env variable or the ini file) as this option's type."""
        text = raw.strip()
        if self.kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise pytest.UsageError(
                f"{source}={raw!r} is not a boolean: use one of {', '.join(_TRUE + _FALSE)}."
            )
        if self.kind == "choice" and text not in self.choices:
            raise pytest.UsageError(
                f"{source}={raw!r} is not valid: use one of {', '.join(self.choices)}."
            )
        return text


# The one table of the plugin's options; pytest_addoption and value() both read it.
OPTIONS: tuple[Option, ...] = (
    Option(
        "pipeline_id",
        "Pipeline ID of the session's environment: attached when it is up, else created and "
        "destroyed at the end (default: ENVKIT_PIPELINE_ID, the CI's run, or pytest-<random>).",
        env="ENVKIT_PIPELINE_ID",
    ),
    Option(
        "provider",
        "Provider of the environments the session creates.",
        kind="choice",
        env="ENVKIT_PROVIDER",
        choices=("local", "aws"),
    ),
    Option("dataset", "Dataset to seed created environments with.", env="ENVKIT_DATASET"),
    Option(
        "keep",
        "Never destroy the environments the session created: leave them up until their TTL "
        "('envkit down ID' removes them).",
        kind="bool",
        default=False,
    ),
    Option(
        "preserve_on_failure",
        "When a test failed, preserve the session's environments for debugging instead of "
        "destroying them (default: on; --no-envkit-preserve-on-failure turns it off).",
        kind="bool",
        default=True,
    ),
    Option(
        "xdist",
        "With pytest-xdist: 'shared' (one environment for all workers) or 'per-worker' "
        "(one each, the worker ID in its pipeline ID).",
        kind="choice",
        default="shared",
        choices=("shared", "per-worker"),
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register every option of :data:`OPTIONS` on the command line and as an ini key."""
    group = parser.getgroup("envkit", "envkit: ephemeral test environments")
    for option in OPTIONS:
        text = option.help + (f" Environment variable: {option.env}." if option.env else "")
        kwargs: dict[str, Any] = {"dest": option.dest, "default": None, "help": text}
        if option.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif option.kind == "choice":
            kwargs["choices"] = option.choices
        group.addoption(option.flag, **kwargs)
        parser.addini(option.dest, option.help, type="string", default="")


def value(config: pytest.Config, name: str, env: dict[str, str] | None = None) -> Any:
    """The value of the plugin option ``name``: command line > env variable > ini > default."""
    option = _BY_NAME[name]
    given = config.getoption(option.dest, default=None)
    if given is not None:
        return given
    environ = os.environ if env is None else env
    if option.env and environ.get(option.env):
        return option.parse(environ[option.env], option.env)
    raw = str(config.getini(option.dest) or "")
    if raw.strip():
        return option.parse(raw, f"ini {option.dest}")
    return option.default


# -- per-process state ---------------------------------------------------------------------


class _State:
    """What the plugin tracks in one pytest process (kept in ``config.stash``)."""

    def __init__(self) -> None:
        self.failures = 0
        self._run_id: str | None = None
        # Environments this process created and must tear down at the end of the session.
        self.owned: list[Environment] = []
        self.messages: list[str] = []
        # xdist controller only: (home, pipeline ID) -> owned, as workers reported them.
        self.shared: dict[tuple[str, str], bool] = {}
        self.markers: set[str] = set()

    @property
    def run_id(self) -> str:
        """A random suffix for the pipeline IDs this process generates."""
        if self._run_id is None:
            import secrets

            self._run_id = secrets.token_hex(4)
        return self._run_id


_STATE = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    if _STATE not in config.stash:
        config.stash[_STATE] = _State()
    return config.stash[_STATE]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Count failing reports (setup, call or teardown), to preserve environments at the end."""
    report = yield
    if report.failed:
        _state(item.config).failures += 1
    return report


def _failed(session: pytest.Session) -> bool:
    # session.testsfailed is the authority (on an xdist controller it counts every worker's
    # failures); our own count also sees a failure whose report is not logged yet.
    return session.testsfailed > 0 or _state(session.config).failures > 0


# -- resolving IDs and settings --------------------------------------------------------------


def _settings(config: pytest.Config) -> Settings:
    from envkit.settings import Settings

    explicit = {"provider": value(config, "provider"), "dataset": value(config, "dataset")}
    return Settings.resolve(explicit)


def _base_id(config: pytest.Config) -> str | None:
    """The configured or CI-detected pipeline ID (an environment with it may be attached)."""
    from envkit.naming import detect_pipeline_id, validate_pipeline_id

    configured = value(config, "pipeline_id")
    if configured:
        return validate_pipeline_id(str(configured))
    return detect_pipeline_id(os.environ)


def _with_suffix(base: str, suffix: str) -> str:
    from envkit.naming import MAX_ID_LENGTH, shorten

    return shorten(f"{base}-{suffix}", MAX_ID_LENGTH, digest_of=f"{base}-{suffix}")


def _workerinput(config: pytest.Config) -> dict[str, Any] | None:
    # Only xdist workers have it. The PYTEST_XDIST_* variables are not used: they leak into
    # child processes (a pytest run started from inside a worker is not a worker).
    return getattr(config, "workerinput", None)


def _attach_or_create(
    settings: Settings, pipeline_id: str, *, attachable: bool
) -> tuple[Environment, bool]:
    """(environment, whether this session created it and so must tear it down)."""
    from envkit import api, lifecycle
    from envkit.plan import Plan

    plan = Plan.build(pipeline_id, settings)
    # One that is up (or was: lifecycle starts it again, or repairs it) is attached to and
    # never ours to destroy, whatever happens to it during the session.
    outcome = lifecycle.ensure(plan)
    return api.Environment(plan, outcome.record), outcome.created or not attachable


# -- the session environment -----------------------------------------------------------------


def _session_environment(config: pytest.Config) -> Environment:
    settings = _settings(config)
    workerinput = _workerinput(config)
    if workerinput is not None and value(config, "xdist") == "shared":
        return _shared_environment(config, settings, str(workerinput["testrunuid"]))
    base = _base_id(config)
    worker = None if workerinput is None else str(workerinput["workerid"])
    if base is None:
        pipeline_id = f"pytest-{_state(config).run_id}"
        if worker is not None:
            pipeline_id = f"{pipeline_id}-{worker}"
    else:
        pipeline_id = base if worker is None else _with_suffix(base, worker)
    env, owned = _attach_or_create(settings, pipeline_id, attachable=base is not None)
    if owned:
        _state(config).owned.append(env)
    return env


def _shared_environment(config: pytest.Config, settings: Settings, run: str) -> Environment:
    """The environment every xdist worker of run ``run`` shares.

    The first worker decides its pipeline ID (and whether it attaches to one that is up) under
    a lock keyed by the run and writes the decision down *before* creating anything, so the
    other workers follow it and a crash mid-creation still leaves it known. Creation itself is
    serialised per ID by ``lifecycle.up``. The controller destroys it after all workers finish.
    """
    from envkit import api, lifecycle
    from envkit.locking import locked
    from envkit.plan import Plan

    folder = settings.home / "pytest"
    marker = folder / f"xdist-{_safe(run)}.json"
    with locked(
        folder / f"xdist-{_safe(run)}.lock",
        what=f"the pytest-xdist run {run}",
        timeout=settings.lock_timeout,
    ):
        decision = _read_json(marker)
        if decision is None:
            base = _base_id(config)
            pipeline_id = base or f"pytest-{_state(config).run_id}"
            attached = base is not None and _is_kept(settings, pipeline_id)
            decision = {"pipeline_id": pipeline_id, "owned": not attached}
            _write_json(marker, decision)
    pipeline_id, owned = str(decision["pipeline_id"]), bool(decision["owned"])
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        # Tell the controller what to tear down (it reads this when the worker goes down).
        workeroutput["envkit_shared"] = {
            "home": str(settings.home),
            "pipeline_id": pipeline_id,
            "owned": owned,
            "marker": str(marker),
        }
    plan = Plan.build(pipeline_id, settings)
    return api.Environment(plan, lifecycle.up(plan))


def _is_kept(settings: Settings, pipeline_id: str) -> bool:
    """Whether an environment is recorded ready or preserved under this ID (running or not:
    one whose server died is still the user's, started again by ``lifecycle.up``)."""
    from envkit.state import StateStore, Status

    record = StateStore(settings.home).load(pipeline_id)
    return record is not None and record.status in (Status.READY, Status.PRESERVED)


def _safe(text: str) -> str:
    return "".join(c for c in text if c.isalnum() or c in "-_")[:64] or "run"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(temporary, path)


def _finish(config: pytest.Config, env: Environment, *, failed: bool) -> None:
    """Destroy, preserve or keep one environment this session created."""
    state = _state(config)
    if value(config, "keep"):
        state.messages.append(
            f"environment {env.pipeline_id} kept (--envkit-keep); "
            f"'envkit down {env.pipeline_id}' destroys it"
        )
        return
    if failed and value(config, "preserve_on_failure"):
        env.down(preserve=True)
        state.messages.append(
            f"tests failed: environment {env.pipeline_id} is preserved until "
            f"{env.record.expires_at} for debugging ('envkit outputs {env.pipeline_id} "
            f"--show-secrets' to connect, 'envkit down {env.pipeline_id}' to destroy)"
        )
        return
    env.down()


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def envkit_env(request: pytest.FixtureRequest) -> Iterator[Environment]:
    """The session's environment (attached, or created and torn down at the end)."""
    config = request.config
    env = _session_environment(config)
    yield env
    state = _state(config)
    if any(owned is env for owned in state.owned):
        state.owned = [owned for owned in state.owned if owned is not env]
        _finish(config, env, failed=_failed(request.session))


@pytest.fixture(scope="session")
def envkit_outputs(envkit_env: Environment) -> dict[str, str]:
    """The session environment's outputs (``DATABASE_URL``, …), secrets included."""
    return envkit_env.outputs


@pytest.fixture
def envkit_db(envkit_env: Environment) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection in a transaction rolled back after the test.

    ``commit()`` inside the test raises, saying why: it would leak the test's writes into the
    next test. ``conn.transaction()`` inside the test nests as a savepoint.
    """
    import psycopg

    conn = envkit_env.connect(autocommit=True)

    def refuse_commit() -> None:
        raise psycopg.ProgrammingError(
            "envkit_db rolls back everything a test wrote when the test ends, so commit() is "
            "not allowed on it (the writes would leak into the next test). Use "
            "conn.transaction() for a savepoint, or envkit_env.connect() for a connection "
            "whose commits stay."
        )

    conn.commit = refuse_commit  # type: ignore[method-assign]
    try:
        with conn.transaction() as transaction:
            yield conn
            raise psycopg.Rollback(transaction)
    finally:
        conn.close()


class EnvironmentFactory:
    """Creates named environments for the session; each is torn down at the session's end."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._made: dict[str, Environment] = {}

    def __call__(self, name: str) -> Environment:
        """The environment called ``name`` in this session (created on first call)."""
        if name in self._made:
            return self._made[name]
        from envkit.naming import validate_pipeline_id

        config = self._config
        base = _base_id(config)
        workerinput = _workerinput(config)
        pipeline_id = _with_suffix(
            base or f"pytest-{_state(config).run_id}", validate_pipeline_id(name)
        )
        if workerinput is not None:
            # Factories are per process, even in shared mode: the name alone would race.
            pipeline_id = _with_suffix(pipeline_id, str(workerinput["workerid"]))
        env, owned = _attach_or_create(_settings(config), pipeline_id, attachable=base is not None)
        if owned:
            _state(config).owned.append(env)
        self._made[name] = env
        return env

    def finish(self, session: pytest.Session) -> None:
        """Tear down (or preserve) every environment this factory created."""
        state = _state(self._config)
        errors: list[BaseException] = []
        for env in self._made.values():
            if not any(owned is env for owned in state.owned):
                continue  # attached, not ours
            state.owned = [owned for owned in state.owned if owned is not env]
            try:
                _finish(self._config, env, failed=_failed(session))
            except Exception as exc:  # tear the others down before reporting
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def envkit_factory(request: pytest.FixtureRequest) -> Iterator[EnvironmentFactory]:
    """A factory of further environments: ``envkit_factory("search")``."""
    factory = EnvironmentFactory(request.config)
    yield factory
    factory.finish(request.session)


# -- xdist controller ------------------------------------------------------------------------


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """On the xdist controller: note the shared environment a worker used."""
    shared = getattr(node, "workeroutput", {}).get("envkit_shared")
    if shared:
        key = (str(shared["home"]), str(shared["pipeline_id"]))
        state = _state(node.config)
        state.shared[key] = state.shared.get(key, False) or bool(shared["owned"])
        state.markers.add(str(shared["marker"]))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """On the xdist controller, after every worker is down: tear the shared environment down."""
    state = _state(session.config)
    if not state.shared and not state.markers:
        return
    from envkit import api, lifecycle
    from envkit.plan import Plan
    from envkit.settings import Settings

    failed = _failed(session)
    for marker in state.markers:
        Path(marker).unlink(missing_ok=True)
        Path(marker).with_suffix(".lock").unlink(missing_ok=True)
    state.markers.clear()
    for (home, pipeline_id), owned in list(state.shared.items()):
        if not owned:
            continue
        settings = Settings.resolve({"home": home})
        plan = Plan.build(pipeline_id, settings)
        record = lifecycle.status(plan)
        if record is None:
            continue
        _finish(session.config, api.Environment(plan, record), failed=failed)
    state.shared.clear()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which environments were kept or preserved, and how to reach or destroy them."""
    state = _state(terminalreporter.config)
    if state.messages:
        terminalreporter.write_sep("-", "envkit")
        for message in state.messages:
            terminalreporter.write_line(message)


__all__ = ["OPTIONS", "EnvironmentFactory", "Option", "value"]
