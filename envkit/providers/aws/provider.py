"""The aws provider: one Pulumi stack per pipeline ID, driven by the Automation API.

The Pulumi CLI is this provider's prerequisite: without it (or with one older than
:data:`MIN_PULUMI_VERSION`) every operation stops with ``PrerequisiteError`` before anything is
created. The Automation API sits behind a small boundary (:class:`Automation` /
:class:`StackHandle`) so that the provider's logic — create/select, up, destroy with retries,
stale-lock and pending-operation recovery, error mapping — is tested without the CLI.

Recovery after a killed run (documented in the README):

* **stale lock** — a run killed mid-``up`` leaves its lock file in the backend and the next
  operation fails with ``ConcurrentUpdateError``. envkit already holds this pipeline's own lock
  (``ENVKIT_HOME/locks``) and pipeline IDs are unique per CI run, so a lock on the pipeline's
  stack can only be stale: envkit logs a warning, runs ``pulumi cancel`` (which deletes the
  lock on DIY backends too) and retries once.
* **pending operations** — the same kill leaves ``pending_operations`` in the state: resources
  Pulumi was creating, updating or deleting. envkit exports the state, logs each one, clears
  them and imports it back (``pulumi stack export | edit | import``). A resource whose create
  was pending may exist in AWS without being in the state; the tag sweep that follows every
  destroy deletes it by its ``envkit:pipeline-id`` tag.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from envkit.errors import EnvkitError, LockedError, PrerequisiteError, ProvisionError, TeardownError
from envkit.naming import TAG_EXPIRES_AT, TAG_OWNER, TAG_PIPELINE_ID, aws_tag_value, rds_identifier
from envkit.providers import ProvisionRequest
from envkit.redact import scrub
from envkit.settings import Settings

if TYPE_CHECKING:
    from envkit.health import Probe
    from envkit.providers.aws.sweep import SweepReport
    from envkit.state import Record

log = logging.getLogger(__name__)

PROJECT = "envkit"
MIN_PULUMI_VERSION = (3, 100, 0)
PASSWORD_CONFIG_KEY = "envkit:dbPassword"  # noqa: S105  (the config key, not a password)
DESTROY_ATTEMPTS = 3
RETRY_DELAY = 10.0  # seconds, doubled per attempt; dependency violations clear within minutes
INSTALL_HINT = (
    "Install it with 'curl -fsSL https://get.pulumi.com | sh' (or 'brew install pulumi/tap/"
    "pulumi', or see https://www.pulumi.com/docs/install/) and make sure 'pulumi' is on PATH. "
    "The local provider needs no Pulumi: drop '--provider aws' to use it."
)


# -- the Automation boundary --------------------------------------------------------------------
class AutomationFailure(Exception):
    """A Pulumi operation failed (the CLI's stderr, already scrubbed of secrets)."""


class StackLocked(AutomationFailure):
    """Another update holds the stack's lock (Pulumi's ``ConcurrentUpdateError``)."""


class StackMissing(AutomationFailure):
    """The stack does not exist in the backend (Pulumi's ``StackNotFoundError``)."""


Progress = Callable[[str], None]


class StackHandle(Protocol):
    """The operations envkit needs on one stack."""

    name: str

    def get_config(self, key: str) -> str | None:
        """A config value, or ``None`` when unset."""
        ...

    def set_config(self, values: Mapping[str, tuple[str, bool]]) -> None:
        """Set config values: key -> (value, secret)."""
        ...

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set stack tags (visible in ``pulumi stack ls`` and the backend)."""
        ...

    def up(self, progress: Progress) -> dict[str, Any]:
        """Run the program; return the stack outputs (plain values)."""
        ...

    def refresh(self, progress: Progress) -> None:
        """Reconcile the state with what exists in AWS."""
        ...

    def destroy(self, progress: Progress) -> None:
        """Delete every resource of the stack."""
        ...

    def cancel(self) -> None:
        """Cancel the running update (deletes a stale lock on DIY backends)."""
        ...

    def export_state(self) -> dict[str, Any]:
        """``{"version": int, "deployment": {...}}`` as ``pulumi stack export`` prints it."""
        ...

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Replace the stack's state (``pulumi stack import``)."""
        ...


class Automation(Protocol):
    """Creates, selects and removes stacks of the ``envkit`` project."""

    def create_or_select(self, stack_name: str) -> StackHandle:
        """The stack, created when absent."""
        ...

    def select(self, stack_name: str) -> StackHandle:
        """The existing stack; raises ``StackMissing`` when there is none."""
        ...

    def remove(self, stack_name: str) -> None:
        """Remove the (empty) stack and its history."""
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

    def __init__(self, stack: Any, secrets_: list[str]) -> None:
        self._stack = stack
        self._secrets = secrets_
        self.name: str = stack.name

    def _run(self, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as exc:
            failure = translate(exc, self._secrets)
            if failure is None:
                raise
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

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._set_tag(key, value)

    def _set_tag(self, key: str, value: str) -> None:
        self._run(lambda: self._stack.set_tag(key, value))

    def up(self, progress: Progress) -> dict[str, Any]:
        result = self._run(lambda: self._stack.up(**self._events(progress)))
        return {k: v.value for k, v in result.outputs.items()}

    def refresh(self, progress: Progress) -> None:
        self._run(lambda: self._stack.refresh(**self._events(progress)))

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

    @staticmethod
    def _program() -> None:
        # The same program `pulumi up` runs from Pulumi.yaml: config from the stack.
        # mypy sees stacks/ as `stacks`; installed (and editable) it is envkit._stacks.
        from envkit._stacks import program  # type: ignore[import-not-found]

        program.main()

    def _wrap(self, action: Callable[[], Any]) -> PulumiStack:
        try:
            stack = action()
        except Exception as exc:
            failure = translate(exc, self._secrets)
            if failure is None:
                raise
            raise failure from None
        return PulumiStack(stack, self._secrets)

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


# -- prerequisites ------------------------------------------------------------------------------
def find_pulumi_cli(env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The Pulumi CLI and its version; ``PrerequisiteError`` naming the fix when missing or old.

    Looks on PATH, then where the official installer puts it (``$PULUMI_HOME/bin``,
    ``~/.pulumi/bin``).
    """
    environ = os.environ if env is None else env
    minimum = ".".join(map(str, MIN_PULUMI_VERSION))
    candidates = [shutil.which("pulumi", path=environ.get("PATH", os.defpath))]
    for home in (environ.get("PULUMI_HOME"), str(Path(environ.get("HOME", "~")) / ".pulumi")):
        if home:
            candidates.append(str(Path(home).expanduser() / "bin" / "pulumi"))
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if found is None:
        raise PrerequisiteError(
            f"The aws provider needs the Pulumi CLI (version {minimum} or newer), and it was not "
            "found on PATH, in $PULUMI_HOME/bin or in ~/.pulumi/bin. Nothing was created.",
            hint=INSTALL_HINT,
        )
    try:
        out = subprocess.run(
            [found, "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrerequisiteError(
            f"The Pulumi CLI at {found} did not run ('pulumi version': {exc}).", hint=INSTALL_HINT
        ) from None
    version = out.stdout.strip().lstrip("v")
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if out.returncode != 0 or match is None:
        raise PrerequisiteError(
            f"The Pulumi CLI at {found} did not report a version.", hint=INSTALL_HINT
        )
    if tuple(int(p) for p in match.groups()) < MIN_PULUMI_VERSION:
        raise PrerequisiteError(
            f"The Pulumi CLI at {found} is version {version}; the aws provider needs {minimum} "
            "or newer. Nothing was created.",
            hint="Upgrade it with 'pulumi self-update' or " + INSTALL_HINT,
        )
    return Path(found), version


def default_backend(settings: Settings) -> str:
    """``settings.pulumi_backend``, else a ``file://`` backend under ENVKIT_HOME."""
    if settings.pulumi_backend:
        return settings.pulumi_backend
    return f"file://{(settings.home / 'pulumi' / 'state').expanduser().resolve()}"


def aws_region(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The region: setting, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, else us-east-1."""
    environ = os.environ if env is None else env
    return (
        settings.aws_region
        or environ.get("AWS_REGION")
        or environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )


def secrets_config(settings: Settings, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(secrets provider URL or None for passphrase, passphrase or None).

    A KMS (or other) provider from settings wins; else ENVKIT_PULUMI_PASSPHRASE /
    PULUMI_CONFIG_PASSPHRASE; else, for the default file backend only, a passphrase generated
    once and kept 0600 under ENVKIT_HOME. A shared backend without either is refused: a
    passphrase made up on one CI runner would lock every other runner out of the stack.
    """
    if settings.pulumi_secrets_provider:
        return settings.pulumi_secrets_provider, None
    given = env.get("ENVKIT_PULUMI_PASSPHRASE") or env.get("PULUMI_CONFIG_PASSPHRASE")
    if given:
        return None, given
    if settings.pulumi_backend:
        raise PrerequisiteError(
            f"The Pulumi backend {settings.pulumi_backend} needs a secrets provider: none is set.",
            hint="Set ENVKIT_PULUMI_PASSPHRASE (the same on every runner, from your CI's secret "
            "store) or ENVKIT_PULUMI_SECRETS_PROVIDER=awskms://alias/<key>?region=<region>.",
        )
    path = settings.home / "pulumi" / "passphrase"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
        log.info("generated the Pulumi passphrase of this ENVKIT_HOME in %s", path)
    return None, path.read_text(encoding="utf-8").strip()


# -- the provider -------------------------------------------------------------------------------
Sweeper = Callable[..., "SweepReport"]


class AwsProvider:
    """Environments as Pulumi stacks in AWS: VPC, RDS PostgreSQL, ECS (see ``stacks/``)."""

    name = "aws"

    def __init__(
        self,
        settings: Settings,
        *,
        automation: Automation | None = None,
        sweeper: Sweeper | None = None,
        env: Mapping[str, str] | None = None,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.region = aws_region(settings, self.env)
        self.retry_delay = retry_delay
        self._automation = automation
        self._sweeper = sweeper
        self._secrets: list[str] = []

    # -- plumbing -------------------------------------------------------------------------------
    def automation(self) -> Automation:
        """The Automation boundary; checks the CLI and secrets first (exit 2, nothing created)."""
        if self._automation is None:
            cli, version = find_pulumi_cli(self.env)
            provider, passphrase = secrets_config(self.settings, self.env)
            env_vars = {"PULUMI_SKIP_UPDATE_CHECK": "true", "AWS_REGION": self.region}
            if passphrase is not None:
                env_vars["PULUMI_CONFIG_PASSPHRASE"] = passphrase
                self._secrets.append(passphrase)
            backend = default_backend(self.settings)
            if backend.startswith("file://"):
                Path(backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True, mode=0o700)
            log.debug("pulumi %s at %s, backend %s", version, cli, backend)
            self._automation = PulumiAutomation(
                backend=backend,
                work_dir=self.settings.home / "pulumi" / "work",
                env_vars=env_vars,
                secrets_provider=provider or "passphrase",
                # The installer's ~/.pulumi/bin is found even when it is not on PATH.
                cli_root=None if cli.parent == _on_path_dir(self.env) else str(cli.parent.parent),
                secrets_=self._secrets,
            )
        return self._automation

    def sweep(self, pipeline_id: str) -> SweepReport:
        """Delete whatever is still tagged with ``pipeline_id`` (the post-destroy confirmation)."""
        from envkit.state import utcnow

        if self._sweeper is None:
            from envkit.providers.aws.sweep import sweep

            self._sweeper = sweep
        return self._sweeper(
            region=self.region, dry_run=False, now=utcnow(), pipeline_id=pipeline_id
        )

    def _with_recovery(self, stack: StackHandle, action: Callable[[], Any], what: str) -> Any:
        """Run ``action``; on a stale lock cancel it, clear pending operations, retry once."""
        self.clear_pending_operations(stack)
        try:
            return action()
        except StackLocked as exc:
            log.warning(
                "the stack %s is locked (%s). envkit holds this pipeline's own lock, so the "
                "stack lock was left by a killed run: cancelling it and retrying %s once",
                stack.name,
                _first_line(str(exc)),
                what,
            )
            stack.cancel()
            self.clear_pending_operations(stack)
            try:
                return action()
            except StackLocked as again:
                raise LockedError(
                    f"The Pulumi stack {stack.name!r} stays locked after 'pulumi cancel': "
                    f"{_first_line(str(again))}",
                    hint="Another process is updating it (a second CI job with the same pipeline "
                    "ID?). Wait for it, or run 'pulumi cancel' against the backend yourself.",
                ) from None

    def clear_pending_operations(self, stack: StackHandle) -> list[dict[str, Any]]:
        """Remove the pending operations a killed run left in the state; return them."""
        state = stack.export_state()
        deployment = state.get("deployment") or {}
        pending = list(deployment.get("pending_operations") or [])
        if not pending:
            return []
        for op in pending:
            urn = (op.get("resource") or {}).get("urn", "?")
            log.warning(
                "stack %s: clearing the pending %s of %s left by a killed run%s",
                stack.name,
                op.get("type", "operation"),
                urn,
                " (it may exist in AWS untracked: the post-destroy tag sweep deletes it)"
                if op.get("type") == "creating"
                else "",
            )
        stack.import_state({**state, "deployment": {**deployment, "pending_operations": []}})
        return pending

    # -- Provider -------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Pulumi CLI (and version) and a secrets provider, before anything is created."""
        self.automation()

    @staticmethod
    def _services(request: ProvisionRequest) -> tuple[Any, ...]:
        """The spec's services as ECS ``ServiceArgs`` (env placeholders rendered in the stack)."""
        if request.spec is None or not request.spec.services:
            return ()
        from envkit._stacks.config import ServiceArgs  # type: ignore[import-not-found]
        from envkit.spec import aws_services

        return tuple(ServiceArgs(**args) for args in aws_services(request.spec))

    def provision(self, request: ProvisionRequest) -> dict[str, str]:
        from envkit._stacks.config import StackConfig
        from envkit.naming import aws_name

        pipeline_id = request.pipeline_id
        automation = self.automation()  # CLI + secrets checked: exit 2 before anything exists
        record = request.record
        config = StackConfig(
            pipeline_id=pipeline_id,
            expires_at=record.expires,
            owner=record.owner,
            region=self.region,
            base_stack=self.settings.pulumi_base_stack,
            services=self._services(request),
        )
        record.resources.update(
            {
                "stack": pipeline_id,
                "project": PROJECT,
                "region": self.region,
                "rds_identifier": rds_identifier(pipeline_id),
                "ecs_cluster": aws_name(pipeline_id, limit=255),
            }
        )
        request.save()
        started = time.perf_counter()
        request.progress("pulumi stack")
        stack = self._call(
            lambda: automation.create_or_select(pipeline_id), ProvisionError, "select"
        )
        # Keep the password of an existing stack: a new one would make `up` change it on RDS.
        password = stack.get_config(PASSWORD_CONFIG_KEY) or secrets.token_urlsafe(24)
        self._secrets.append(password)
        values = {k: (v, False) for k, v in config.to_config().items()}
        values[PASSWORD_CONFIG_KEY] = (password, True)
        self._call(lambda: stack.set_config(values), ProvisionError, "configure")
        tags = {
            TAG_PIPELINE_ID: pipeline_id,
            TAG_EXPIRES_AT: record.expires_at,
            TAG_OWNER: aws_tag_value(record.owner),
        }
        self._call(lambda: stack.set_tags(tags), ProvisionError, "tag")
        request.timings["stack"] = time.perf_counter() - started

        started = time.perf_counter()
        request.progress("pulumi up")
        outputs = self._call(
            lambda: self._with_recovery(stack, lambda: stack.up(request.progress), "up"),
            ProvisionError,
            "up",
        )
        request.timings["pulumi_up"] = time.perf_counter() - started
        record.resources["stack_outputs"] = {
            k: str(v) for k, v in outputs.items() if not k.isupper()
        }
        request.save()
        return {k: str(v) for k, v in outputs.items() if k.isupper()}

    def _call(self, action: Callable[[], Any], error: type[EnvkitError], what: str) -> Any:
        try:
            return action()
        except AutomationFailure as exc:
            raise error(
                f"Pulumi {what} failed: {scrub(str(exc), self._secrets)}",
                hint="Run with ENVKIT_DEBUG=1 for Pulumi's full output; 'envkit down ID' "
                "removes what was created.",
            ) from None

    def probes(self, record: Record) -> list[Probe]:
        from envkit.health import EcsServicesProbe, RdsInstanceProbe

        pid = record.pipeline_id
        outputs = record.outputs
        if not outputs:
            return []
        from envkit.naming import aws_name

        # RDS 'available' (boto3), then SELECT 1 when the endpoint is reachable from here (a
        # runner outside the VPC often cannot reach it); ECS cluster ACTIVE, services stable.
        return [
            RdsInstanceProbe(
                record.resources.get("rds_identifier") or rds_identifier(pid),
                region=self.region,
                user=outputs.get("DATABASE_USER"),
                password=outputs.get("DATABASE_PASSWORD"),
                dbname=outputs.get("DATABASE_NAME"),
            ),
            EcsServicesProbe(
                record.resources.get("ecs_cluster") or aws_name(pid, limit=255),
                region=self.region,
            ),
        ]

    def alive(self, record: Record) -> bool:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        identifier = record.resources.get("rds_identifier") or rds_identifier(record.pipeline_id)
        client = boto3.session.Session(region_name=self.region).client(
            "rds", config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
        )
        try:
            found = client.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "DBInstanceNotFound":
                return False
            log.warning("cannot check %s (%s); assuming it is alive", identifier, exc)
            return True
        except BotoCoreError as exc:
            log.warning("cannot check %s (%s); assuming it is alive", identifier, exc)
            return True
        return bool(found) and found[0].get("DBInstanceStatus") not in ("deleting", "failed")

    def destroy(self, pipeline_id: str, record: Record | None) -> None:
        automation = self.automation()
        try:
            stack: StackHandle | None = automation.select(pipeline_id)
        except StackMissing:
            log.info("no Pulumi stack %s: only sweeping tagged leftovers", pipeline_id)
            stack = None
        except AutomationFailure as exc:
            raise TeardownError(
                f"Selecting the Pulumi stack {pipeline_id!r} failed: {exc}",
                hint="Check the backend (ENVKIT_PULUMI_BACKEND) and its credentials; "
                "'envkit reap --provider aws' deletes leftovers by tag without Pulumi.",
            ) from None
        if stack is not None:
            self._destroy_stack(automation, stack)
        report = self.sweep(pipeline_id)
        if report.reaped:
            log.warning(
                "deleted %d resource(s) of %s that Pulumi did not know about",
                sum(len(e.get("resources", [])) for e in report.reaped),
                pipeline_id,
            )
        if report.errors:
            left = [arn for e in report.errors for arn in e.get("resources", [])]
            raise TeardownError(
                f"Resources tagged with {pipeline_id!r} remain after destroy: {', '.join(left)}",
                hint="Run 'envkit down' again, or 'envkit reap --provider aws' later.",
            )

    def _destroy_stack(self, automation: Automation, stack: StackHandle) -> None:
        def attempt() -> None:
            # Refresh first: resources deleted outside Pulumi would otherwise fail the destroy.
            stack.refresh(_log_progress)
            stack.destroy(_log_progress)

        for number in range(1, DESTROY_ATTEMPTS + 1):
            try:
                self._with_recovery(stack, attempt, "destroy")
                break
            except AutomationFailure as exc:
                text = scrub(str(exc), self._secrets)
                if number == DESTROY_ATTEMPTS:
                    raise TeardownError(
                        f"Destroying the Pulumi stack {stack.name!r} failed {number} times: {text}",
                        hint="Run 'envkit down' again later; 'envkit reap --provider aws' deletes "
                        "leftovers by tag.",
                    ) from None
                delay = self.retry_delay * 2 ** (number - 1)
                log.warning(
                    "destroy of %s failed (%s%s); retrying in %.0fs",
                    stack.name,
                    "dependency violation: " if "DependencyViolation" in text else "",
                    _first_line(text),
                    delay,
                )
                time.sleep(delay)
        automation.remove(stack.name)


def _first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else text


def _log_progress(step: str) -> None:
    log.info("%s", step)


def _on_path_dir(env: Mapping[str, str]) -> Path | None:
    found = shutil.which("pulumi", path=env.get("PATH", os.defpath))
    return Path(found).parent if found else None
