"""The aws provider: one Pulumi stack per pipeline ID, driven by the Automation API.

The Pulumi CLI is this provider's prerequisite (:mod:`envkit.providers.aws.prerequisites`):
without it every operation stops with ``PrerequisiteError`` before anything is created. The
provider's logic — create/select, up, destroy with retries, error mapping — is written against
the Automation boundary (:mod:`envkit.providers.aws.automation`), which also recovers stale
locks and pending operations left by a killed run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.errors import ConfigError, EnvkitError, ProvisionError, TeardownError
from envkit.naming import TAG_EXPIRES_AT, TAG_OWNER, TAG_PIPELINE_ID, aws_tag_value, rds_identifier
from envkit.providers.aws.automation import (
    PROJECT,
    Automation,
    AutomationFailure,
    StackHandle,
    StackMissing,
    connect,
    first_line,
)
from envkit.providers.aws.options import AwsOptions
from envkit.providers.aws.prerequisites import aws_region, doctor_checks
from envkit.providers.aws.recovery import with_recovery
from envkit.providers.aws.resources import AwsResources
from envkit.providers.aws.services import aws_services
from envkit.providers.aws.services import check_spec as check_services
from envkit.providers.base import Check, ProvisionRequest
from envkit.reaping import Leftover, ReapOptions, ReapReport
from envkit.redact import scrub
from envkit.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Set as AbstractSet

    from envkit.health import Probe
    from envkit.providers.aws.shared_instance import SharedInstance
    from envkit.providers.aws.sweep import SweepReport
    from envkit.spec_model import EnvSpec
    from envkit.state import Record

log = logging.getLogger(__name__)

PASSWORD_CONFIG_KEY = "envkit:dbPassword"  # noqa: S105  (the config key, not a password)
REDIS_TOKEN_CONFIG_KEY = "envkit:redisToken"  # noqa: S105  (the config key, not a token)
DESTROY_ATTEMPTS = 3
RETRY_DELAY = 10.0  # seconds, doubled per attempt; dependency violations clear within minutes


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
        self.options = AwsOptions.from_env(self.env, settings)
        self.retry_delay = retry_delay
        self._automation = automation
        self._sweeper = sweeper
        self._secrets: list[str] = []

    # -- plumbing -------------------------------------------------------------------------------
    def automation(self) -> Automation:
        """The Automation boundary; checks the CLI and secrets first (exit 2, nothing created)."""
        if self._automation is None:
            self._automation = connect(self.settings, self.env, self.region, self._secrets)
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

    # -- Provider -------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Pulumi CLI (and version) and a secrets provider, before anything is created."""
        self.automation()

    def check_spec(self, spec: EnvSpec) -> None:
        """Every service needs an image and a name ECS accepts."""
        check_services(spec)

    @staticmethod
    def _services(request: ProvisionRequest) -> tuple[Any, ...]:
        """The spec's services as ECS ``ServiceArgs`` (env placeholders rendered in the stack)."""
        if request.spec is None or not request.spec.services:
            return ()
        from envkit._stacks.config import ServiceArgs  # type: ignore[import-not-found]

        return tuple(ServiceArgs(**args) for args in aws_services(request.spec))

    def _shared_instance(self, error: type[EnvkitError]) -> SharedInstance:
        """The base stack's shared RDS instance (exit 2 when there is none to use)."""
        from envkit.providers.aws.shared_instance import read_shared_instance

        base = self.settings.pulumi_base_stack
        if not base:
            raise ConfigError(
                "ENVKIT_AWS_SHARED_DATABASE needs the base stack that holds the shared instance.",
                hint="Set ENVKIT_PULUMI_BASE_STACK=<org>/envkit/base (see the README's aws "
                "section), or unset ENVKIT_AWS_SHARED_DATABASE.",
            )
        return read_shared_instance(self.automation(), base, self._secrets, error)

    def provision(self, request: ProvisionRequest) -> dict[str, str]:
        from envkit._stacks.cache import cache_name  # type: ignore[import-not-found]
        from envkit._stacks.config import StackConfig
        from envkit.naming import aws_name
        from envkit.providers.aws.shared_instance import create_on_shared, external_database

        pipeline_id = request.pipeline_id
        automation = self.automation()  # CLI + secrets checked: exit 2 before anything exists
        record = request.record
        opts = self.options
        redis = request.redis
        # Read before anything is recorded: a missing base stack or instance is a refusal.
        shared = self._shared_instance(ProvisionError) if opts.shared_database else None
        config = StackConfig(
            pipeline_id=pipeline_id,
            expires_at=record.expires,
            owner=record.owner,
            region=self.region,
            base_stack=self.settings.pulumi_base_stack,
            services=self._services(request),
            egress=opts.egress,
            public=opts.public,
            ci_cidr=opts.ci_cidr,
            availability_zones=opts.availability_zones,
            engine_version=opts.engine_version,
            instance_class=opts.instance_class,
            spot=opts.spot,
            vpc_cidr=opts.vpc_cidr,
            redis=redis is not None,
            redis_engine=opts.redis_engine,
            redis_version=redis.version if redis is not None else None,
            redis_node_type=opts.redis_node_type,
            redis_persistence=redis.persistence if redis is not None else False,
            shared_database=shared is not None,
        )
        resources = AwsResources(
            pipeline_id,
            stack=pipeline_id,
            project=PROJECT,
            region=self.region,
            rds_identifier=shared.identifier if shared else rds_identifier(pipeline_id),
            ecs_cluster=aws_name(pipeline_id, limit=255),
            redis_group=cache_name(pipeline_id, "redis") if redis is not None else None,
            shared_base=shared.base_stack if shared else None,
        )
        resources.save(record)
        request.save()
        started = time.perf_counter()
        request.progress("pulumi stack")
        stack = self._call(
            lambda: automation.create_or_select(pipeline_id), ProvisionError, "select"
        )
        current = self._call(stack.outputs, ProvisionError, "read outputs")
        database: dict[str, str] = {}
        if shared is not None:
            started = time.perf_counter()
            request.progress("database on the shared instance")
            database = create_on_shared(shared, request, self.settings)
            request.timings["shared_database"] = time.perf_counter() - started
            password = database["DATABASE_PASSWORD"]
            config = dataclasses.replace(config, external_database=external_database(database))
        else:
            password = self._password(stack, current)
        self._secrets.append(password)
        inputs = {"db_password": password}
        if redis is not None:
            inputs["redis_token"] = self._redis_token(stack, current)
            self._secrets.append(inputs["redis_token"])
        values = self._config_values(stack, config.to_config())
        self._call(lambda: stack.set_config(values), ProvisionError, "configure")
        # The expiry and owner reach the backend on every kind of backend anyway: as resource
        # tags (the sweep), stack config and the stack outputs envkit_expires_at/envkit_owner.
        # Stack tags come on top where the backend keeps them: service backends always do; a
        # DIY one (file://, s3://) does with recent CLIs and refuses with older ones.
        tags = {
            TAG_PIPELINE_ID: pipeline_id,
            TAG_EXPIRES_AT: record.expires_at,
            TAG_OWNER: aws_tag_value(record.owner),
        }
        try:
            self._call(lambda: stack.set_tags(tags), ProvisionError, "tag")
        except ProvisionError as exc:
            if automation.supports_tags:
                raise
            log.info("the backend keeps no stack tags (%s); expiry and owner are in the stack "
                     "outputs", exc.message)
        request.timings["stack"] = time.perf_counter() - started

        started = time.perf_counter()
        request.progress("pulumi up")
        outputs = self._call(
            lambda: with_recovery(
                stack, lambda: stack.up(request.progress, inputs), "up"
            ),
            ProvisionError,
            "up",
        )
        request.timings["pulumi_up"] = time.perf_counter() - started
        resources.stack_outputs = {k: str(v) for k, v in outputs.items() if not k.isupper()}
        resources.save(record)
        request.save()
        # On the shared instance, the placement's DATABASE_* are what tests connect with.
        return {**{k: str(v) for k, v in outputs.items() if k.isupper()}, **database}

    def _password(self, stack: StackHandle, outputs: Mapping[str, Any]) -> str:
        """The stack's database password, from the backend when the stack has one.

        It lives only in the state (the secret output ``DATABASE_PASSWORD``), so a second
        runner sharing the backend finds the same one; a new password would make ``up``
        rotate it on RDS. A ``envkit:dbPassword`` from an older envkit's config still counts.
        """
        found = outputs.get("DATABASE_PASSWORD") or stack.get_config(PASSWORD_CONFIG_KEY)
        return str(found) if found else secrets.token_urlsafe(24)

    def _redis_token(self, stack: StackHandle, outputs: Mapping[str, Any]) -> str:
        """The stack's Redis AUTH token, kept like the password: from the secret output
        ``REDIS_URL`` when the stack has one (a new token would be set on the group at every
        ``up``), else ``envkit:redisToken``, else a new one."""
        from urllib.parse import unquote, urlsplit

        url = outputs.get("REDIS_URL")
        found = unquote(urlsplit(str(url)).password or "") if url else ""
        found = found or stack.get_config(REDIS_TOKEN_CONFIG_KEY) or ""
        return found or secrets.token_urlsafe(32)

    def _config_values(
        self, stack: StackHandle, wanted: Mapping[str, str]
    ) -> dict[str, tuple[str, bool]]:
        """``wanted`` as config values, minus the tunable keys already set on the stack that no
        setting names (``pulumi config set envkit:public true`` is not silently rewritten)."""
        current = self._call(stack.get_all_config, ProvisionError, "read config")
        keys = self.options.config_keys()
        kept = {
            key
            for name, key in keys.items()
            if name not in self.options.explicit and key in current
        }
        for key in sorted(kept):
            if current[key] != wanted.get(key):
                log.info("keeping %s=%s from the stack's config", key, current[key])
        return {k: (v, False) for k, v in wanted.items() if k not in kept}

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
        from envkit.providers.aws.probes import (
            EcsServicesProbe,
            ElastiCacheProbe,
            RdsInstanceProbe,
        )

        outputs = record.outputs
        if not outputs:
            return []
        resources = AwsResources.load(record)
        # RDS 'available' (boto3), then SELECT 1 when the endpoint is reachable from here (a
        # runner outside the VPC often cannot reach it); ECS cluster ACTIVE, services stable.
        probes: list[Probe] = [
            RdsInstanceProbe(
                resources.database,
                region=self.region,
                user=outputs.get("DATABASE_USER"),
                password=outputs.get("DATABASE_PASSWORD"),
                dbname=outputs.get("DATABASE_NAME"),
            ),
            EcsServicesProbe(
                resources.cluster,
                region=self.region,
            ),
        ]
        if resources.redis_group:
            probes.append(
                ElastiCacheProbe(
                    resources.redis_group, region=self.region, url=outputs.get("REDIS_URL")
                )
            )
        return probes

    def checks(self) -> list[Check]:
        """The Pulumi CLI, AWS credentials and the state backend (informational)."""
        return doctor_checks(self.settings)

    def gone(self, record: Record) -> list[str]:
        """The RDS instance (the shared one on the shared instance) and the ElastiCache
        replication group when missing, deleting or failed (one describe call each)."""
        resources = AwsResources.load(record)
        lost = []
        from envkit.providers.aws.liveness import cache_alive, rds_alive

        if not rds_alive(resources.database, self.region):
            lost.append(f"database: RDS instance {resources.database} is missing, deleting or "
                        "failed")  # fmt: skip
        if resources.redis_group and not cache_alive(resources.redis_group, self.region):
            lost.append(f"redis: ElastiCache replication group {resources.redis_group} is "
                        "missing, deleting or failed")  # fmt: skip
        return lost

    def restart(self, record: Record) -> bool:
        """A lost RDS instance cannot be started on its data again: it must be recreated."""
        return False

    def logs(self, record: Record, component: str | None = None) -> dict[str, Path]:
        """No local logs: ECS tasks log to CloudWatch (see the README's aws section)."""
        if component is not None:
            raise ConfigError(
                f"Environment {record.pipeline_id!r} runs on aws: its logs are in CloudWatch "
                f"Logs, not on this machine.",
                hint="Look in the log group of its ECS cluster.",
            )
        return {}

    def leftovers(self, known: AbstractSet[str]) -> list[Leftover]:
        """None by pipeline: cloud leftovers are found by their tags (:meth:`reap_leftovers`)."""
        return []

    def reap_leftovers(self, options: ReapOptions) -> ReapReport:
        """The backend's expired stacks (:mod:`~envkit.providers.aws.stacks`), then the tag
        sweep: the resources of expired pipelines found by their tags alone."""
        report = self._reap_stacks(options)
        try:
            if self._sweeper is None:
                from envkit.providers.aws.sweep import sweep

                self._sweeper = sweep
            swept = self._sweeper(
                region=self.region,
                dry_run=options.dry_run,
                now=options.now,
                older_than=options.older_than,
            )
        except ImportError as exc:
            report.errors.append(
                {
                    "pipeline_id": None,
                    "kind": "cloud",
                    "error": f"the AWS leak sweep is not available: {exc}",
                }
            )
            return report
        except EnvkitError as exc:
            report.errors.append({"pipeline_id": None, "kind": "cloud", "error": exc.message})
            return report
        report.reaped.extend(swept.reaped)
        report.kept.extend(swept.kept)
        report.errors.extend(swept.errors)
        return report

    def _reap_stacks(self, options: ReapOptions) -> ReapReport:
        """The stacks of the project in the backend, decided from what is stored with them."""
        from envkit.locking import is_locked
        from envkit.providers.aws.prerequisites import default_backend
        from envkit.providers.aws.stacks import StackReaper, backend_has_no_stacks
        from envkit.state import StateStore

        report = ReapReport(dry_run=options.dry_run)
        if self._automation is None and backend_has_no_stacks(default_backend(self.settings)):
            return report  # connecting would create the backend and a passphrase: nothing to do
        try:
            automation = self.automation()
        except EnvkitError as exc:
            report.errors.append({"pipeline_id": None, "kind": "stack", "error": exc.message})
            return report
        store = StateStore(self.settings.home)
        return StackReaper(
            automation,
            options,
            destroy=lambda stack: self._destroy_stack(automation, stack, refreshed=True),
            locally_busy=lambda name: is_locked(store.lock_path(name)),
            secrets_=self._secrets,
        ).run()

    def destroy(self, pipeline_id: str, record: Record | None) -> None:
        automation = self.automation()
        base = AwsResources.load(record).shared_base if record is not None else None
        if base or (record is None and self.options.shared_database):
            self._drop_shared(pipeline_id)
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

    def retain(self, record: Record) -> None:
        """A new expiry or status (preserve, extend) of a database on the shared instance goes
        on the instance too, so ``reap --database-server`` sees it."""
        if not AwsResources.load(record).shared_base:
            return
        from envkit.providers.aws.shared_instance import retain_on_shared

        retain_on_shared(self._shared_instance(ProvisionError), record)

    def _drop_shared(self, pipeline_id: str) -> None:
        """Drop the pipeline's database on the shared instance (before its stack goes)."""
        from envkit.providers.aws.shared_instance import drop_on_shared

        instance = self._shared_instance(TeardownError)
        dropped = drop_on_shared(instance, pipeline_id)
        what = "dropped" if dropped else "found no"
        log.info("%s the database of %s on the shared instance", what, pipeline_id)

    def _destroy_stack(
        self, automation: Automation, stack: StackHandle, *, refreshed: bool = False
    ) -> None:
        def attempt() -> None:
            # Refresh first: resources deleted outside Pulumi would otherwise fail the destroy.
            if number > 1 or not refreshed:
                stack.refresh(_log_progress)
            stack.destroy(_log_progress)

        for number in range(1, DESTROY_ATTEMPTS + 1):
            try:
                with_recovery(stack, attempt, "destroy")
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
                dependency = "DependencyViolation" in text
                log.warning(
                    "destroy of %s failed (%s%s); retrying in %.0fs",
                    stack.name,
                    "dependency violation: " if dependency else "",
                    first_line(text),
                    delay,
                )
                if dependency:
                    # Something Pulumi does not track holds on to what it tracks (a resource a
                    # killed run created after its last checkpoint, say): delete what carries
                    # the pipeline's tag, then refresh and destroy again.
                    self.sweep(stack.name)
                time.sleep(delay)
        automation.remove(stack.name)


def _log_progress(step: str) -> None:
    log.info("%s", step)
