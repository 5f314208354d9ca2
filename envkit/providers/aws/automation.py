"""The Automation boundary: the few stack operations envkit needs, typed failures, and the
recovery after a killed run.

:class:`Automation` / :class:`StackHandle` are what the provider's logic is written against, so
that create/select, up, destroy, lock and pending-operation recovery are tested without the CLI;
:class:`PulumiAutomation` implements them over ``pulumi.automation``.

Recovery after a killed run (stale lock, pending operations):
:mod:`envkit.providers.aws.recovery`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from envkit.providers.aws.prerequisites import (
    default_backend,
    find_pulumi_cli,
    on_path_dir,
    secrets_config,
)
from envkit.redact import scrub
from envkit.settings import Settings

log = logging.getLogger(__name__)

PROJECT = "envkit"


class AutomationFailure(Exception):
    """A Pulumi operation failed (the CLI's stderr, already scrubbed of secrets)."""


class StackLocked(AutomationFailure):
    """Another update holds the stack's lock (Pulumi's ``ConcurrentUpdateError``)."""


class StackMissing(AutomationFailure):
    """The stack does not exist in the backend (Pulumi's ``StackNotFoundError``)."""


Progress = Callable[[str], None]

# Schemes of the DIY backends (file, object stores, SQL): older CLIs refuse stack tags there
# (`pulumi stack tag set` fails); recent ones (3.276, checked by the engine tests) keep them.
DIY_SCHEMES = ("file://", "s3://", "gs://", "azblob://", "postgres://", "postgresql://")


def supports_tags(backend: str) -> bool:
    """Whether ``backend`` surely keeps stack tags (the HTTP service backends); on a DIY one it
    depends on the CLI's version, so a refusal there is expected, not an error."""
    return backend.startswith(("https://", "http://")) and not backend.startswith(DIY_SCHEMES)


@dataclass(frozen=True)
class LockHolder:
    """One lock on a stack as the DIY backend describes it (``created by user@host (pid N)``)."""

    user: str
    host: str
    pid: int
    created: datetime


_LOCK_LINE = re.compile(
    r"created by (?P<user>[^@\s]*)@(?P<host>\S+) \(pid (?P<pid>\d+)\) at (?P<at>\S+)"
)


def lock_holders_in(text: str) -> list[LockHolder]:
    """The lock holders a ``ConcurrentUpdateError`` (or ``pulumi cancel``) text names."""
    found = []
    for match in _LOCK_LINE.finditer(text):
        try:
            created = datetime.fromisoformat(match["at"].replace("Z", "+00:00"))
        except ValueError:
            continue
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        found.append(LockHolder(match["user"], match["host"], int(match["pid"]), created))
    return found


@dataclass(frozen=True)
class StackListing:
    """One stack of the project as the backend lists it."""

    name: str
    resources: int | None  # in its latest state, the root stack included (None: unknown)


ROOT_STACK_TYPE = "pulumi:pulumi:Stack"


def resource_count(state: Mapping[str, Any]) -> int:
    """How many resources an exported state holds besides the root stack (which holds only the
    outputs: a stack with nothing else is empty, and ``pulumi stack rm`` accepts it)."""
    resources = (state.get("deployment") or {}).get("resources") or []
    return sum(1 for r in resources if r.get("type") != ROOT_STACK_TYPE)


class StackHandle(Protocol):
    """The operations envkit needs on one stack."""

    name: str

    def get_config(self, key: str) -> str | None:
        """A config value, or ``None`` when unset."""
        ...

    def set_config(self, values: Mapping[str, tuple[str, bool]]) -> None:
        """Set config values: key -> (value, secret)."""
        ...

    def get_all_config(self) -> dict[str, str]:
        """Every config value of the stack (key -> text)."""
        ...

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set stack tags (a DIY backend of an older CLI refuses: see ``supports_tags``)."""
        ...

    def outputs(self) -> dict[str, Any]:
        """The outputs recorded in the backend's state (secrets decrypted), ``{}`` when none."""
        ...

    def up(self, progress: Progress, inputs: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Run the program with ``inputs`` handed to it in-process (never written to config or a
        command line); return the stack outputs (plain values)."""
        ...

    def refresh(self, progress: Progress, *, clear_pending_creates: bool = False) -> None:
        """Reconcile the state with AWS; optionally drop pending creates a killed run left."""
        ...

    def destroy(self, progress: Progress) -> None:
        """Delete every resource of the stack."""
        ...

    def cancel(self) -> None:
        """Cancel the running update (deletes a stale lock on DIY backends)."""
        ...

    def lock_holders(self) -> list[LockHolder]:
        """Who holds the stack's lock (empty when unlocked or unknown)."""
        ...

    def export_state(self) -> dict[str, Any]:
        """``{"version": int, "deployment": {...}}`` as ``pulumi stack export`` prints it."""
        ...

    def tags(self) -> dict[str, str]:
        """The stack's tags, read without writing (``{}`` where the backend keeps none)."""
        ...

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Replace the stack's state (``pulumi stack import``)."""
        ...


class Automation(Protocol):
    """Creates, selects and removes stacks of the ``envkit`` project."""

    supports_tags: bool  # stack tags surely exist (Pulumi Cloud / self-hosted service)

    def create_or_select(self, stack_name: str) -> StackHandle:
        """The stack, created when absent."""
        ...

    def select(self, stack_name: str) -> StackHandle:
        """The existing stack; raises ``StackMissing`` when there is none."""
        ...

    def remove(self, stack_name: str) -> None:
        """Remove the (empty) stack and its history."""
        ...

    def list_stacks(self) -> list[StackListing]:
        """Every stack of the project in the backend (a read: no lock, nothing written)."""
        ...

    def lock_holders(self, stack_name: str) -> list[LockHolder] | None:
        """Who holds the stack's lock, read without taking it (``None``: this backend's locks
        cannot be read so; only an operation that takes the lock finds out)."""
        ...


def translate(exc: BaseException, secrets_: list[str] | None = None) -> AutomationFailure | None:
    """Pulumi Automation exceptions as the boundary's typed failures (``None``: not Pulumi's).

    The types come first (``ConcurrentUpdateError`` and ``StackNotFoundError`` are subclasses
    of ``CommandError``); the text is only what the message shows.
    """
    from pulumi.automation import errors as auto_errors

    if not isinstance(exc, auto_errors.CommandError):
        return None
    text = scrub(_tail(str(exc)), secrets_ or [])
    if isinstance(exc, auto_errors.ConcurrentUpdateError):
        return StackLocked(text)
    if isinstance(exc, auto_errors.StackNotFoundError):
        return StackMissing(text)
    return AutomationFailure(text)


def _tail(text: str, lines: int = 12) -> str:
    """The last lines of a CLI error: where Pulumi puts the cause."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def describe_event(event: Any) -> str | None:
    """A short progress line for a Pulumi engine event (``None``: nothing worth showing)."""
    pre = getattr(event, "resource_pre_event", None)
    if pre is None or pre.metadata is None:
        return None
    meta = pre.metadata
    if meta.op is None or str(getattr(meta.op, "value", meta.op)) == "same":
        return None
    name = meta.urn.rsplit("::", 1)[-1]
    return f"{getattr(meta.op, 'value', meta.op)} {meta.type} {name}"


class PulumiStack:
    """:class:`StackHandle` over ``pulumi.automation.Stack``."""

    def __init__(
        self, stack: Any, secrets_: list[str], inputs: dict[str, str] | None = None
    ) -> None:
        self._stack = stack
        self._secrets = secrets_
        self._inputs = {} if inputs is None else inputs  # shared with the inline program
        self.name: str = stack.name
        self.last_locked: str = ""

    def _run(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:
            failure = translate(exc, self._secrets)
            if failure is None:
                raise
            if isinstance(failure, StackLocked):
                self.last_locked = str(exc)  # the DIY backend names the lock's holder here
            raise failure from None

    def _events(self, progress: Progress) -> dict[str, Any]:
        def on_event(event: Any) -> None:
            line = describe_event(event)
            if line:
                progress(line)

        def on_output(line: str) -> None:
            log.debug("pulumi: %s", scrub(line.rstrip(), self._secrets))

        return {"on_event": on_event, "on_output": on_output}

    def get_config(self, key: str) -> str | None:
        from pulumi.automation import errors as auto_errors

        try:
            return str(self._stack.get_config(key).value)
        except auto_errors.CommandError:
            return None  # the CLI reports a missing key as an error

    def set_config(self, values: Mapping[str, tuple[str, bool]]) -> None:
        from pulumi import automation as auto

        config = {k: auto.ConfigValue(value=v, secret=s) for k, (v, s) in values.items()}
        self._run(lambda: self._stack.set_all_config(config))

    def get_all_config(self) -> dict[str, str]:
        values = self._run(self._stack.get_all_config)
        return {k: str(v.value) for k, v in values.items()}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._set_tag(key, value)

    def _set_tag(self, key: str, value: str) -> None:
        self._run(lambda: self._stack.set_tag(key, value))

    def outputs(self) -> dict[str, Any]:
        return {k: v.value for k, v in self._run(self._stack.outputs).items()}

    def up(self, progress: Progress, inputs: Mapping[str, str] | None = None) -> dict[str, Any]:
        self._inputs.clear()
        self._inputs.update(inputs or {})
        try:
            result = self._run(lambda: self._stack.up(**self._events(progress)))
        finally:
            self._inputs.clear()
        return {k: v.value for k, v in result.outputs.items()}

    def refresh(self, progress: Progress, *, clear_pending_creates: bool = False) -> None:
        extra = {"clear_pending_creates": True} if clear_pending_creates else {}
        self._run(lambda: self._stack.refresh(**self._events(progress), **extra))

    def lock_holders(self) -> list[LockHolder]:
        return lock_holders_in(self.last_locked)

    def destroy(self, progress: Progress) -> None:
        self._run(lambda: self._stack.destroy(**self._events(progress)))

    def cancel(self) -> None:
        self._run(self._stack.cancel)

    def export_state(self) -> dict[str, Any]:
        deployment = self._run(self._stack.export_stack)
        return {"version": deployment.version, "deployment": deployment.deployment}

    def import_state(self, state: Mapping[str, Any]) -> None:
        from pulumi.automation import Deployment

        deployment = Deployment(version=state["version"], deployment=state["deployment"])
        self._run(lambda: self._stack.import_stack(deployment))

    def tags(self) -> dict[str, str]:
        try:
            return {str(k): str(v) for k, v in self._run(self._stack.list_tags).items()}
        except AutomationFailure:
            return {}  # a DIY backend of an older CLI keeps no tags


class PulumiAutomation:
    """:class:`Automation` over ``pulumi.automation`` with an inline program (``stacks/``)."""

    def __init__(
        self,
        *,
        backend: str,
        work_dir: Path,
        env_vars: Mapping[str, str],
        secrets_provider: str | None,
        cli_root: str | None,
        secrets_: list[str],
    ) -> None:
        self.backend = backend
        self.work_dir = work_dir
        self.env_vars = dict(env_vars)
        self.secrets_provider = secrets_provider
        self.cli_root = cli_root
        self._secrets = secrets_
        self.supports_tags = supports_tags(backend)
        # What `up` hands the inline program in-process (the database password): never on a
        # command line, never in the runner's Pulumi.<stack>.yaml.
        self._inputs: dict[str, str] = {}

    def _options(self) -> Any:
        from pulumi import automation as auto

        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return auto.LocalWorkspaceOptions(
            work_dir=str(self.work_dir),
            env_vars=self.env_vars,
            secrets_provider=self.secrets_provider,
            project_settings=auto.ProjectSettings(
                name=PROJECT,
                runtime="python",
                backend=auto.ProjectBackend(url=self.backend),
            ),
            pulumi_command=auto.PulumiCommand(root=self.cli_root),
        )

    def _program(self) -> None:
        # The same program `pulumi up` runs from Pulumi.yaml: config from the stack, plus the
        # password handed over in-process.
        # mypy sees stacks/ as `stacks`; installed (and editable) it is envkit._stacks.
        from envkit._stacks import program  # type: ignore[import-not-found]

        program.main(
            db_password=self._inputs.get("db_password"),
            redis_token=self._inputs.get("redis_token"),
        )

    def _wrap(self, action: Callable[[], Any]) -> PulumiStack:
        try:
            stack = action()
        except Exception as exc:
            failure = translate(exc, self._secrets)
            if failure is None:
                raise
            raise failure from None
        return PulumiStack(stack, self._secrets, self._inputs)

    def create_or_select(self, stack_name: str) -> StackHandle:
        from pulumi import automation as auto

        return self._wrap(
            lambda: auto.create_or_select_stack(
                stack_name, project_name=PROJECT, program=self._program, opts=self._options()
            )
        )

    def select(self, stack_name: str) -> StackHandle:
        from pulumi import automation as auto

        return self._wrap(
            lambda: auto.select_stack(
                stack_name, project_name=PROJECT, program=self._program, opts=self._options()
            )
        )

    def remove(self, stack_name: str) -> None:
        from pulumi import automation as auto

        try:
            workspace = auto.LocalWorkspace(**vars(self._options()))
            workspace.remove_stack(stack_name)
        except Exception as exc:
            failure = translate(exc, self._secrets)
            if failure is None:
                raise
            if not isinstance(failure, StackMissing):
                raise failure from None

    def list_stacks(self) -> list[StackListing]:
        from pulumi import automation as auto

        try:
            found = auto.LocalWorkspace(**vars(self._options())).list_stacks()
        except Exception as exc:
            failure = translate(exc, self._secrets)
            if failure is None:
                raise
            raise failure from None
        return [StackListing(s.name, s.resource_count) for s in found]

    def lock_holders(self, stack_name: str) -> list[LockHolder] | None:
        # A file:// backend keeps each lock as a JSON file (pid, username, hostname, timestamp);
        # other backends' locks are known only by trying to take them.
        if not self.backend.startswith("file://"):
            return None
        folder = Path(self.backend.removeprefix("file://")) / ".pulumi" / "locks"
        holders = []
        for path in sorted(folder.glob(f"*/{PROJECT}/{stack_name}/*.json")):
            try:
                lock = json.loads(path.read_text(encoding="utf-8"))
                created = datetime.fromisoformat(str(lock["timestamp"]).replace("Z", "+00:00"))
                holder = LockHolder(
                    str(lock["username"]), str(lock["hostname"]), int(lock["pid"]), created
                )
            except (OSError, ValueError, KeyError, TypeError):
                # Unreadable: a holder that is neither dead nor identifiable keeps the stack.
                holder = LockHolder("?", "?", 0, datetime.now(UTC))
            holders.append(holder if holder.created.tzinfo else _utc(holder))
        return holders


def _utc(holder: LockHolder) -> LockHolder:
    return LockHolder(holder.user, holder.host, holder.pid, holder.created.replace(tzinfo=UTC))


def connect(
    settings: Settings, env: Mapping[str, str], region: str, secrets_: list[str]
) -> PulumiAutomation:
    """The boundary for these settings; checks the CLI and secrets first (exit 2, nothing made).

    A generated or given passphrase is appended to ``secrets_`` so that error messages scrub it.
    """
    cli, version = find_pulumi_cli(env)
    provider, passphrase = secrets_config(settings, env)
    env_vars = {"PULUMI_SKIP_UPDATE_CHECK": "true", "AWS_REGION": region}
    if passphrase is not None:
        env_vars["PULUMI_CONFIG_PASSPHRASE"] = passphrase
        secrets_.append(passphrase)
    backend = default_backend(settings)
    if backend.startswith("file://"):
        Path(backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True, mode=0o700)
    log.debug("pulumi %s at %s, backend %s", version, cli, backend)
    return PulumiAutomation(
        backend=backend,
        work_dir=settings.home / "pulumi" / "work",
        env_vars=env_vars,
        secrets_provider=provider or "passphrase",
        # The installer's ~/.pulumi/bin is found even when it is not on PATH.
        cli_root=None if cli.parent == on_path_dir(env) else str(cli.parent.parent),
        secrets_=secrets_,
    )


def first_line(text: str) -> str:
    """The first non-blank line of ``text`` (a CLI error's headline)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else text
