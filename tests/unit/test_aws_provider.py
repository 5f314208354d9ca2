"""AwsProvider against a fake Automation boundary: create/select, up, destroy with retries,
stale-lock and pending-operation recovery, error mapping, and the missing-CLI prerequisite."""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from envkit.errors import (
    ConfigError,
    LockedError,
    PrerequisiteError,
    ProvisionError,
    TeardownError,
)
from envkit.providers import ProvisionRequest
from envkit.providers.aws.automation import AutomationFailure, StackLocked, StackMissing, translate
from envkit.providers.aws.prerequisites import find_pulumi_cli, secrets_config
from envkit.providers.aws.provider import PASSWORD_CONFIG_KEY, AwsProvider
from envkit.providers.aws.sweep import SweepReport
from envkit.settings import Settings
from envkit.state import Record, Status

pytestmark = pytest.mark.aws

OUTPUTS = {
    "DATABASE_URL": "postgresql://envkit:pw@db.example:5432/envkitpr42",
    "DATABASE_PASSWORD": "pw",
    "DATABASE_HOST": "db.example",
    "vpc_id": "vpc-1",
    "ecs_cluster": "envkit-pr-42",
}


class Backend:
    """What a Pulumi backend keeps: state (outputs, pending operations) and locks, shared by
    every runner. DIY backends (file://, s3://) refuse stack tags with older CLIs and keep them
    with recent ones (``diy_tags``: the 3.276 CLI the engine tests run keeps them)."""

    def __init__(self, url: str = "file:///state", *, diy_tags: bool = False) -> None:
        self.url = url
        self.diy_tags = diy_tags
        self.states: dict[str, dict[str, Any]] = {}
        self.locks: dict[str, str] = {}  # stack -> the holder line of the DIY lock message

    def lock_message(self, name: str) -> str:
        return (
            "the stack is currently locked by 1 lock(s). Either wait for the other process(es) "
            "to end or delete the lock file with `pulumi cancel`.\n"
            f"  {self.url}/.pulumi/locks/organization/envkit/{name}/x.json: {self.locks[name]}"
        )


def lock_line(host: str, pid: int, at: str = "2030-01-01T00:00:00Z") -> str:
    return f"created by ci@{host} (pid {pid}) at {at}"


class FakeStack:
    """One runner's handle: config on this runner's disk, state and lock in the backend."""

    def __init__(self, name: str, script: list[Any], backend: Backend) -> None:
        self.name = name
        self.backend = backend
        self.config: dict[str, tuple[str, bool]] = {}
        self.tags: dict[str, str] = {}
        self.calls: list[str] = []
        self.inputs: list[dict[str, str]] = []
        self.script = script  # exceptions (or None) to raise from up/destroy, in order
        backend.states.setdefault(name, {"version": 3, "deployment": {"resources": []}})
        self.last_locked = ""

    @property
    def state(self) -> dict[str, Any]:
        return self.backend.states[self.name]

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self.backend.states[self.name] = value

    def _locked(self, what: str) -> None:
        # Every operation that writes the state takes the backend lock (import included).
        if self.name in self.backend.locks:
            self.calls.append(f"{what}!locked")
            self.last_locked = self.backend.lock_message(self.name)
            raise StackLocked(self.last_locked)

    def _step(self, what: str) -> None:
        self._locked(what)
        self.calls.append(what)
        if self.script:
            failure = self.script.pop(0)
            if failure is not None:
                raise failure

    def get_config(self, key: str) -> str | None:
        return self.config.get(key, (None, False))[0]

    def get_all_config(self) -> dict[str, str]:
        return {k: v for k, (v, _) in self.config.items()}

    def set_config(self, values: Mapping[str, tuple[str, bool]]) -> None:
        self.config.update(values)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        # A DIY backend refuses with older CLIs, keeps them with recent ones (the engine tests
        # show the 3.276 CLI keeping them): Backend.diy_tags says which this one models.
        if not self.backend.url.startswith(("https://", "http://")) and not self.backend.diy_tags:
            raise AutomationFailure("error: the current backend does not support stack tags")
        self.tags.update(tags)

    def outputs(self) -> dict[str, Any]:
        return dict(self.state.get("outputs") or {})

    def up(self, progress: Any, inputs: Mapping[str, str] | None = None) -> dict[str, Any]:
        progress("create aws:rds/instance:Instance database-instance")
        self._step("up")
        self.inputs.append(dict(inputs or {}))
        outputs = {**OUTPUTS, "DATABASE_PASSWORD": (inputs or {}).get("db_password", "pw")}
        if (inputs or {}).get("redis_token"):  # what the Cache component exports
            outputs["REDIS_URL"] = f"rediss://:{inputs['redis_token']}@redis.example:6379"
        self.state = {**self.state, "outputs": outputs}
        return outputs

    def refresh(self, progress: Any, *, clear_pending_creates: bool = False) -> None:
        self._locked("refresh")
        self.calls.append("refresh:clear" if clear_pending_creates else "refresh")
        if clear_pending_creates:
            deployment = dict(self.state["deployment"])
            deployment["pending_operations"] = [
                op
                for op in deployment.get("pending_operations") or []
                if op.get("type") != "creating"
            ]
            self.state = {**self.state, "deployment": deployment}

    def destroy(self, progress: Any) -> None:
        self._step("destroy")

    def cancel(self) -> None:
        self.calls.append("cancel")
        self.backend.locks.pop(self.name, None)

    def lock_holders(self) -> list[Any]:
        from envkit.providers.aws.automation import lock_holders_in

        return lock_holders_in(self.last_locked)

    def export_state(self) -> dict[str, Any]:
        return self.state  # a read: no lock

    def import_state(self, state: Mapping[str, Any]) -> None:
        self._locked("import")
        self.calls.append("import")
        self.state = dict(state)


class FakeAutomation:
    def __init__(
        self, script: list[Any] | None = None, exists: bool = True, backend: Backend | None = None
    ) -> None:
        self.stacks: dict[str, FakeStack] = {}
        self.script = script or []
        self.exists = exists
        self.removed: list[str] = []
        self.backend = backend or Backend()
        self.supports_tags = self.backend.url.startswith(("https://", "http://"))

    def create_or_select(self, stack_name: str) -> FakeStack:
        return self.stacks.setdefault(stack_name, FakeStack(stack_name, self.script, self.backend))

    def select(self, stack_name: str) -> FakeStack:
        if not self.exists:
            raise StackMissing(f"no stack named '{stack_name}' found")
        return self.create_or_select(stack_name)

    def remove(self, stack_name: str) -> None:
        self.removed.append(stack_name)


class FakeSweeper:
    def __init__(self, report: SweepReport | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.report = report or SweepReport()

    def __call__(self, **kwargs: Any) -> SweepReport:
        self.calls.append(kwargs)
        return self.report


def provider(tmp_path: Path, automation: FakeAutomation, sweeper: FakeSweeper | None = None) -> Any:
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    return AwsProvider(
        settings,
        automation=automation,
        sweeper=sweeper or FakeSweeper(),
        env={"AWS_REGION": "eu-west-1"},
        retry_delay=0,
    )


def request(pipeline_id: str = "pr-42") -> tuple[ProvisionRequest, list[str]]:
    record = Record(
        pipeline_id, "aws", Status.PROVISIONING, "2030-01-01T00:00:00Z",
        "2030-01-01T04:00:00Z", "ci#7 runner",
    )  # fmt: skip
    steps: list[str] = []
    return ProvisionRequest(record, lambda: None, steps.append), steps


def test_up_creates_the_stack_named_after_the_pipeline_with_config_tags_and_progress(
    tmp_path: Path,
) -> None:
    automation = FakeAutomation(backend=Backend("https://api.pulumi.com"))
    req, steps = request()
    outputs = provider(tmp_path, automation).provision(req)
    stack = automation.stacks["pr-42"]
    password = stack.inputs[0]["db_password"]
    assert len(password) >= 24
    assert outputs == {**{k: v for k, v in OUTPUTS.items() if k.isupper()},
                       "DATABASE_PASSWORD": password}  # fmt: skip
    assert req.record.resources["stack_outputs"] == {
        "vpc_id": "vpc-1",
        "ecs_cluster": "envkit-pr-42",
    }
    assert req.record.resources["rds_identifier"] == "envkit-pr-42-db"
    assert stack.config["envkit:pipelineId"] == ("pr-42", False)
    assert stack.config["envkit:region"] == ("eu-west-1", False)
    assert stack.tags["envkit:expires-at"] == "2030-01-01T04:00:00Z"
    assert stack.tags["envkit:owner"] == "ci_7 runner"  # '#' is refused in AWS tags
    assert "create aws:rds/instance:Instance database-instance" in steps


@pytest.mark.parametrize("url", ["file:///var/state", "s3://bucket/envkit"])
def test_diy_backends_get_no_stack_tags_and_keep_expiry_and_owner_in_config(
    tmp_path: Path, url: str
) -> None:
    # Defect 1: `pulumi stack tag set` fails on DIY backends with older CLIs; envkit's default
    # is file://. The refusal is not an error there: expiry and owner live in config/outputs.
    automation = FakeAutomation(backend=Backend(url))
    provider(tmp_path, automation).provision(request()[0])
    stack = automation.stacks["pr-42"]
    assert stack.tags == {} and stack.calls == ["up"]
    assert stack.config["envkit:expiresAt"] == ("2030-01-01T04:00:00Z", False)
    assert stack.config["envkit:owner"][0] == "ci#7 runner"
    # A recent CLI keeps them on the same backend: then they are set too.
    keeping = FakeAutomation(backend=Backend(url, diy_tags=True))
    provider(tmp_path, keeping).provision(request()[0])
    assert keeping.stacks["pr-42"].tags["envkit:pipeline-id"] == "pr-42"


def test_a_service_backend_refusing_stack_tags_is_an_error(tmp_path: Path) -> None:
    automation = FakeAutomation(backend=Backend("https://api.pulumi.com"))
    automation.supports_tags = True

    def refuse(tags: Mapping[str, str]) -> None:
        raise AutomationFailure("error: 403 forbidden")

    stack = automation.create_or_select("pr-42")
    stack.set_tags = refuse  # type: ignore[method-assign]
    with pytest.raises(ProvisionError, match="tag"):
        provider(tmp_path, automation).provision(request()[0])


def test_supports_tags_only_on_service_backends() -> None:
    from envkit.providers.aws.automation import supports_tags

    assert supports_tags("https://api.pulumi.com") and supports_tags("http://pulumi.corp:8080")
    for url in ("file:///x", "s3://b", "gs://b", "azblob://c", "postgres://db"):
        assert not supports_tags(url), url


def test_the_password_is_never_in_config_and_a_second_runner_keeps_it(tmp_path: Path) -> None:
    # Defects 6/7: the password reaches the program in-process (not on argv via `config
    # set-all --secret`, not in the runner's Pulumi.<stack>.yaml); a second runner with its own
    # disk reads it from the backend's state and does not rotate it.
    backend = Backend()
    first = FakeAutomation(backend=backend)
    provider(tmp_path / "a", first).provision(request()[0])
    stack = first.stacks["pr-42"]
    password = stack.inputs[0]["db_password"]
    assert PASSWORD_CONFIG_KEY not in stack.config
    assert all(password not in value for value, _ in stack.config.values())
    second = FakeAutomation(backend=backend)
    provider(tmp_path / "b", second).provision(request()[0])
    assert second.stacks["pr-42"].inputs[0]["db_password"] == password


def test_up_again_selects_the_stack_and_keeps_its_password(tmp_path: Path) -> None:
    automation = FakeAutomation()
    aws = provider(tmp_path, automation)
    aws.provision(request()[0])
    aws.provision(request()[0])
    stack = automation.stacks["pr-42"]
    assert stack.inputs[0]["db_password"] == stack.inputs[1]["db_password"]
    assert stack.calls == ["up", "up"]


def test_a_password_in_an_older_envkits_config_is_kept(tmp_path: Path) -> None:
    automation = FakeAutomation()
    automation.create_or_select("pr-42").config[PASSWORD_CONFIG_KEY] = ("old-Secret_1", True)
    provider(tmp_path, automation).provision(request()[0])
    assert automation.stacks["pr-42"].inputs[0]["db_password"] == "old-Secret_1"


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _killed_run(automation: FakeAutomation, holder: str) -> tuple[FakeStack, str]:
    """What `kill -9` during `up` leaves: the backend lock and a pending create."""
    stack = automation.create_or_select("pr-42")
    urn = "urn:pulumi:pr-42::envkit::aws:rds/instance:Instance::database-instance"
    stack.state = {
        "version": 3,
        "deployment": {
            "resources": [],
            "pending_operations": [{"type": "creating", "resource": {"urn": urn}}],
        },
    }
    automation.backend.locks["pr-42"] = holder
    return stack, urn


def test_a_killed_run_is_recovered_lock_first_then_pending_creates(
    tmp_path: Path, caplog: Any
) -> None:
    # Defect 2: importing the edited state needs the lock the killed run still holds.
    import socket

    automation = FakeAutomation()
    stack, urn = _killed_run(automation, lock_line(socket.gethostname(), _dead_pid()))
    outputs = provider(tmp_path, automation).provision(request()[0])
    assert outputs["DATABASE_HOST"] == "db.example"
    assert stack.calls == ["refresh!locked", "cancel", "refresh:clear", "up"]
    assert stack.state["deployment"]["pending_operations"] == []
    assert urn in caplog.text and "tag sweep" in caplog.text and "is gone" in caplog.text


def test_a_lock_of_a_live_process_or_another_host_is_not_cancelled(tmp_path: Path) -> None:
    import os
    import socket

    for holder in (
        lock_line(socket.gethostname(), os.getpid()),
        lock_line("other-runner", 1, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
        "",  # a service backend's 409 names no holder
    ):
        automation = FakeAutomation()
        stack, _ = _killed_run(automation, holder)
        with pytest.raises(LockedError, match="is locked by"):
            provider(tmp_path, automation).provision(request()[0])
        assert "cancel" not in stack.calls
        assert automation.backend.locks["pr-42"] == holder


def test_a_lock_older_than_the_bound_is_cancelled_whoever_holds_it(tmp_path: Path) -> None:
    from envkit.providers.aws.recovery import STALE_LOCK_AGE

    old = (datetime.now(UTC) - STALE_LOCK_AGE - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    automation = FakeAutomation()
    stack, _ = _killed_run(automation, lock_line("other-runner", 1, old))
    provider(tmp_path, automation).provision(request()[0])
    assert stack.calls == ["refresh!locked", "cancel", "refresh:clear", "up"]


def test_a_lock_that_survives_cancel_is_a_locked_error(tmp_path: Path) -> None:
    automation = FakeAutomation(script=[StackLocked("locked"), StackLocked("still locked")])
    stack = automation.create_or_select("pr-42")
    stack.last_locked = lock_line("other-runner", 1, "2001-01-01T00:00:00Z")
    with pytest.raises(LockedError, match="stays locked"):
        provider(tmp_path, automation).provision(request()[0])


def test_pending_operations_are_cleared_before_up(tmp_path: Path, caplog: Any) -> None:
    automation = FakeAutomation()
    stack, urn = _killed_run(automation, "")
    automation.backend.locks.clear()
    provider(tmp_path, automation).provision(request()[0])
    assert stack.calls == ["refresh:clear", "up"]
    assert stack.state["deployment"]["pending_operations"] == []
    assert urn in caplog.text and "tag sweep" in caplog.text


def test_a_failed_up_is_a_provision_error_without_the_password(tmp_path: Path) -> None:
    automation = FakeAutomation()
    aws = provider(tmp_path, automation)
    aws.provision(request()[0])
    password = automation.stacks["pr-42"].inputs[0]["db_password"]
    automation.script.append(AutomationFailure(f"error: creating RDS: password {password} bad"))
    with pytest.raises(ProvisionError) as info:
        aws.provision(request()[0])
    assert password not in str(info.value)
    assert "Pulumi up failed" in str(info.value)


def test_settings_reach_the_stack_and_a_stack_value_no_setting_names_is_kept(
    tmp_path: Path,
) -> None:
    # Defect 4: public, ci_cidr, AZs, engine, class, spot, VPC CIDR, egress are settings, and
    # `pulumi config set envkit:public true` on the stack is not rewritten to false.
    automation = FakeAutomation()
    automation.create_or_select("pr-42").config["envkit:public"] = ("true", False)
    provider(tmp_path, automation).provision(request()[0])
    assert automation.stacks["pr-42"].config["envkit:public"] == ("true", False)
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    env = {
        "AWS_REGION": "eu-west-1", "ENVKIT_AWS_PUBLIC": "false", "ENVKIT_AWS_EGRESS": "nat",
        "ENVKIT_AWS_CI_CIDR": "203.0.113.7/32", "ENVKIT_AWS_AZS": "eu-west-1a,eu-west-1b",
        "ENVKIT_AWS_ENGINE_VERSION": "17", "ENVKIT_AWS_INSTANCE_CLASS": "db.t4g.small",
        "ENVKIT_AWS_SPOT": "yes", "ENVKIT_AWS_VPC_CIDR": "10.9.0.0/16",
    }  # fmt: skip
    aws = AwsProvider(settings, automation=automation, sweeper=FakeSweeper(), env=env)
    aws.provision(request()[0])
    config = {k: v for k, (v, _) in automation.stacks["pr-42"].config.items()}
    assert config["envkit:public"] == "false" and config["envkit:egress"] == "nat"
    assert config["envkit:ciCidr"] == "203.0.113.7/32"
    assert config["envkit:availabilityZones"] == "eu-west-1a,eu-west-1b"
    assert config["envkit:engineVersion"] == "17"
    assert config["envkit:instanceClass"] == "db.t4g.small"
    assert config["envkit:spot"] == "true" and config["envkit:vpcCidr"] == "10.9.0.0/16"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ENVKIT_AWS_EGRESS", "vpn"), ("ENVKIT_AWS_PUBLIC", "maybe"),
     ("ENVKIT_AWS_CI_CIDR", "1.2.3.4/40"), ("ENVKIT_AWS_AZS", "only-one")],
)  # fmt: skip
def test_bad_aws_settings_are_config_errors(tmp_path: Path, variable: str, value: str) -> None:
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=variable):
        AwsProvider(settings, automation=FakeAutomation(), env={variable: value})


def test_destroy_refreshes_retries_removes_the_stack_and_sweeps_by_tag(tmp_path: Path) -> None:
    automation = FakeAutomation(script=[AutomationFailure("DependencyViolation: sg in use")])
    sweeper = FakeSweeper()
    provider(tmp_path, automation, sweeper).destroy("pr-42", None)
    stack = automation.stacks["pr-42"]
    assert stack.calls == ["refresh", "destroy", "refresh", "destroy"]
    assert automation.removed == ["pr-42"]
    assert sweeper.calls[0]["pipeline_id"] == "pr-42" and sweeper.calls[0]["dry_run"] is False
    assert sweeper.calls[0]["region"] == "eu-west-1"


def test_a_dependency_violation_sweeps_the_untracked_leftovers_before_the_retry(
    tmp_path: Path,
) -> None:
    # An orphan Pulumi does not track (a killed run's last create) keeps the VPC in use: the
    # retry alone would fail the same way until the attempts run out.
    automation = FakeAutomation(script=[AutomationFailure("DependencyViolation: sg in use")])
    sweeper = FakeSweeper()
    provider(tmp_path, automation, sweeper).destroy("pr-42", None)
    assert [c["pipeline_id"] for c in sweeper.calls] == ["pr-42", "pr-42"]  # between, after
    assert automation.removed == ["pr-42"]
    other = FakeAutomation(script=[AutomationFailure("RequestLimitExceeded")])
    quiet = FakeSweeper()
    provider(tmp_path, other, quiet).destroy("pr-42", None)
    assert len(quiet.calls) == 1  # only the confirmation after the destroy


def test_destroy_gives_up_after_the_retries_with_a_teardown_error(tmp_path: Path) -> None:
    automation = FakeAutomation(script=[AutomationFailure("boom")] * 3)
    with pytest.raises(TeardownError, match="failed 3 times"):
        provider(tmp_path, automation).destroy("pr-42", None)
    assert automation.removed == []


def test_destroy_of_a_missing_stack_still_sweeps_and_reports_leftovers(tmp_path: Path) -> None:
    automation = FakeAutomation(exists=False)
    arn = "arn:aws:ec2:eu-west-1:123456789012:vpc/vpc-1"
    sweeper = FakeSweeper(
        SweepReport(errors=[{"pipeline_id": "pr-42", "resources": [arn], "error": "x"}])
    )
    with pytest.raises(TeardownError, match="vpc-1"):
        provider(tmp_path, automation, sweeper).destroy("pr-42", None)
    assert automation.stacks == {} and automation.removed == []
    assert FakeSweeper().report.as_dict() == {"reaped": [], "kept": [], "errors": []}


def test_pulumi_automation_errors_map_to_typed_failures() -> None:
    from pulumi.automation import errors
    from pulumi.automation._cmd import CommandResult

    def result(stderr: str) -> CommandResult:
        return CommandResult(stdout="", stderr=stderr, code=255)

    locked = translate(
        errors.ConcurrentUpdateError(result("error: [409] Conflict: stack is locked"))
    )
    missing = translate(errors.StackNotFoundError(result("error: no stack named 'x' found")))
    other = translate(errors.CommandError(result("error: secret-pw appears here")), ["secret-pw"])
    assert isinstance(locked, StackLocked)
    assert isinstance(missing, StackMissing)
    assert type(other) is AutomationFailure and "secret-pw" not in str(other)
    assert translate(ValueError("not pulumi")) is None


def test_missing_pulumi_cli_is_a_prerequisite_error_naming_version_and_install(
    tmp_path: Path,
) -> None:
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    with pytest.raises(PrerequisiteError) as info:
        find_pulumi_cli(env)
    assert info.value.exit_code == 2
    text = str(info.value)
    assert "Pulumi CLI" in text and "3.100.0" in text and "get.pulumi.com" in text
    # An old CLI is refused too.
    fake = tmp_path / "pulumi"
    fake.write_text("#!/bin/sh\necho v3.50.0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(PrerequisiteError, match=r"version 3\.50\.0"):
        find_pulumi_cli(env)
    fake.write_text("#!/bin/sh\necho v3.210.1\n")
    assert find_pulumi_cli(env) == (fake, "3.210.1")


def test_preflight_without_cli_fails_before_anything_is_created(tmp_path: Path) -> None:
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    aws = AwsProvider(settings, env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    with pytest.raises(PrerequisiteError, match="Pulumi CLI"):
        aws.preflight()
    assert not (tmp_path / "home").exists()


def test_secrets_provider_passphrase_and_generated_passphrase(tmp_path: Path) -> None:
    home = tmp_path / "home"
    kms = Settings.resolve({"home": home, "pulumi_secrets_provider": "awskms://alias/x"}, env={})
    assert secrets_config(kms, {}) == ("awskms://alias/x", None)
    plain = Settings.resolve({"home": home}, env={})
    assert secrets_config(plain, {"ENVKIT_PULUMI_PASSPHRASE": "p"}) == (None, "p")
    generated = secrets_config(plain, {})[1]
    assert generated and secrets_config(plain, {})[1] == generated
    assert stat.S_IMODE((home / "pulumi" / "passphrase").stat().st_mode) == 0o600
    shared = Settings.resolve({"home": home, "pulumi_backend": "s3://bucket"}, env={})
    with pytest.raises(PrerequisiteError, match="ENVKIT_PULUMI_PASSPHRASE"):
        secrets_config(shared, {})


# -- Redis (issue 19) ---------------------------------------------------------------------------
def redis_request(pipeline_id: str = "pr-42", **spec: Any) -> ProvisionRequest:
    from envkit.spec_model import RedisSpec

    req, _ = request(pipeline_id)
    req.redis = RedisSpec(**spec)
    return req


def test_redis_reaches_the_stack_and_its_token_goes_in_process_and_is_kept(
    tmp_path: Path,
) -> None:
    backend = Backend()
    first = FakeAutomation(backend=backend)
    req = redis_request(version="8", persistence=True)
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    valkey = AwsProvider(settings, automation=first, sweeper=FakeSweeper(),
                         env={"AWS_REGION": "eu-west-1", "ENVKIT_AWS_REDIS_ENGINE": "valkey"})
    outputs = valkey.provision(req)
    stack = first.stacks["pr-42"]
    token = stack.inputs[0]["redis_token"]
    assert len(token) >= 32 and outputs["REDIS_URL"].startswith(f"rediss://:{token}@")
    config = {k: v for k, (v, _) in stack.config.items()}
    assert config["envkit:redis"] == "true" and config["envkit:redisEngine"] == "valkey"
    assert config["envkit:redisVersion"] == "8" and config["envkit:redisPersistence"] == "true"
    assert all(token not in value for value in config.values())
    assert req.record.resources["redis_group"] == "envkit-pr-42-redis"
    # A second runner reads the token back from the state: no new AUTH token per up.
    second = FakeAutomation(backend=backend)
    provider(tmp_path / "b", second).provision(redis_request())
    assert second.stacks["pr-42"].inputs[0]["redis_token"] == token


def test_without_redis_no_token_and_no_cache_probe(tmp_path: Path) -> None:
    from envkit.providers.aws.probes import ElastiCacheProbe

    automation = FakeAutomation()
    aws = provider(tmp_path, automation)
    req, _ = request()
    req.record.outputs = aws.provision(req)
    assert "redis_token" not in automation.stacks["pr-42"].inputs[0]
    assert automation.stacks["pr-42"].config["envkit:redis"] == ("false", False)
    assert not any(isinstance(p, ElastiCacheProbe) for p in aws.probes(req.record))
    with_redis = redis_request("pr-43")
    with_redis.record.outputs = aws.provision(with_redis)
    (cache,) = [p for p in aws.probes(with_redis.record) if isinstance(p, ElastiCacheProbe)]
    assert cache.replication_group_id == "envkit-pr-43-redis" and cache.component == "redis"


def test_a_bad_redis_engine_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="ENVKIT_AWS_REDIS_ENGINE must be one of redis, valkey"):
        AwsProvider(settings, automation=FakeAutomation(), sweeper=FakeSweeper(),
                    env={"ENVKIT_AWS_REDIS_ENGINE": "memcached"})  # fmt: skip


# -- the shared RDS instance (issue 17) ---------------------------------------------------------
BASE_PASSWORD = "base-Master_pw-0123456789"
BASE = {
    "vpc_id": "vpc-base",
    "shared_database_identifier": "envkit-base-db",
    "shared_database_address": "envkit-base-db.x.eu-west-1.rds.amazonaws.com",
    "shared_database_port": 5432.0,  # numbers come back from the state as floats
    "shared_database_user": "envkit",
    "shared_database_password": BASE_PASSWORD,
}


class FakeSharedServer:
    """Stands in for envkit.shared_server (it needs a PostgreSQL server; its own tests have one)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def create_database(self, admin_dsn: str, pipeline_id: str, **kwargs: Any) -> dict[str, str]:
        self.calls.append(("create", (admin_dsn, pipeline_id, kwargs)))
        name = f"envkit_{pipeline_id.replace('-', '_')}"
        return {
            "DATABASE_URL": f"postgresql://{name}:db-Pw_1@{BASE['shared_database_address']}"
            f":5432/{name}?sslmode=require",
            "DATABASE_HOST": str(BASE["shared_database_address"]),
            "DATABASE_PORT": "5432",
            "DATABASE_NAME": name,
            "DATABASE_USER": name,
            "DATABASE_PASSWORD": "db-Pw_1",
        }

    def drop_database(self, admin_dsn: str, pipeline_id: str) -> bool:
        self.calls.append(("drop", (admin_dsn, pipeline_id)))
        return True

    def set_expiry(self, admin_dsn: str, pipeline_id: str, expires_at: str, *, status: str) -> None:
        self.calls.append(("expiry", (admin_dsn, pipeline_id, expires_at, status)))


@pytest.fixture
def shared_server(monkeypatch: pytest.MonkeyPatch) -> FakeSharedServer:
    import sys
    import types

    fake = FakeSharedServer()
    module = types.ModuleType("envkit.shared_server")
    module.create_database = fake.create_database  # type: ignore[attr-defined]
    module.drop_database = fake.drop_database  # type: ignore[attr-defined]
    module.set_expiry = fake.set_expiry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "envkit.shared_server", module)
    return fake


def shared_provider(tmp_path: Path, automation: FakeAutomation, base: str | None = "base") -> Any:
    explicit: dict[str, Any] = {"home": tmp_path / "home"}
    if base:
        explicit["pulumi_base_stack"] = base
    settings = Settings.resolve(explicit, env={}, cwd=tmp_path)
    return AwsProvider(settings, automation=automation, sweeper=FakeSweeper(), retry_delay=0,
                       env={"AWS_REGION": "eu-west-1", "ENVKIT_AWS_SHARED_DATABASE": "1"})


def test_on_the_shared_instance_the_database_is_made_by_the_placement_not_by_rds(
    tmp_path: Path, shared_server: FakeSharedServer
) -> None:
    automation = FakeAutomation()
    automation.create_or_select("base").state["outputs"] = BASE
    req, steps = request()
    outputs = shared_provider(tmp_path, automation).provision(req)
    (kind, (admin_dsn, pipeline_id, kwargs)), = shared_server.calls
    assert kind == "create" and pipeline_id == "pr-42"
    assert admin_dsn == (
        f"postgresql://envkit:{BASE_PASSWORD}@envkit-base-db.x.eu-west-1.rds.amazonaws.com:5432"
        "/postgres?sslmode=require"
    )
    assert kwargs["owner"] == "ci#7 runner" and kwargs["expires_at"] == "2030-01-01T04:00:00Z"
    assert "database on the shared instance" in steps
    assert "shared_database" in req.timings
    # The placement's outputs are the environment's; the stack gets them without the password.
    assert outputs["DATABASE_NAME"] == "envkit_pr_42" and outputs["DATABASE_PASSWORD"] == "db-Pw_1"
    assert outputs["DATABASE_URL"].endswith("?sslmode=require")
    stack = automation.stacks["pr-42"]
    assert stack.inputs[0]["db_password"] == "db-Pw_1"
    config = {k: v for k, (v, _) in stack.config.items()}
    assert json.loads(config["envkit:externalDatabase"]) == {
        "host": BASE["shared_database_address"], "port": "5432", "name": "envkit_pr_42",
        "user": "envkit_pr_42",
    }  # fmt: skip
    assert config["envkit:sharedDatabase"] == "true"
    # The record names the base stack and the shared instance, never the admin DSN.
    resources = req.record.resources
    assert resources["shared_base"] == "base" and resources["rds_identifier"] == "envkit-base-db"
    assert BASE_PASSWORD not in json.dumps(req.record.to_json())
    assert all(BASE_PASSWORD not in v and "db-Pw_1" not in v for v in config.values())


def test_down_drops_the_database_on_the_shared_instance_then_destroys_the_stack(
    tmp_path: Path, shared_server: FakeSharedServer
) -> None:
    automation = FakeAutomation()
    automation.create_or_select("base").state["outputs"] = BASE
    aws = shared_provider(tmp_path, automation)
    req, _ = request()
    aws.provision(req)
    shared_server.calls.clear()
    aws.destroy("pr-42", req.record)
    (kind, (admin_dsn, pipeline_id)), = shared_server.calls
    assert kind == "drop" and pipeline_id == "pr-42" and BASE_PASSWORD in admin_dsn
    assert automation.stacks["pr-42"].calls[-1] == "destroy"
    assert automation.removed == ["pr-42"]
    # With no record at all, the setting says where the database is.
    shared_server.calls.clear()
    aws.destroy("pr-42", None)
    assert [c[0] for c in shared_server.calls] == ["drop"]


def test_a_new_expiry_reaches_the_shared_instance_and_nothing_else_calls_it(
    tmp_path: Path, shared_server: FakeSharedServer
) -> None:
    automation = FakeAutomation()
    automation.create_or_select("base").state["outputs"] = BASE
    aws = shared_provider(tmp_path, automation)
    req, _ = request()
    aws.provision(req)
    shared_server.calls.clear()
    req.record.expires_at = "2031-01-01T00:00:00Z"
    aws.retain(req.record)
    (kind, (admin_dsn, pipeline_id, expires_at, status)), = shared_server.calls
    assert (kind, pipeline_id, expires_at) == ("expiry", "pr-42", "2031-01-01T00:00:00Z")
    assert BASE_PASSWORD in admin_dsn and status == str(req.record.status)
    shared_server.calls.clear()
    own, _ = request()  # a dedicated-instance environment: no shared_base, nothing to write
    AwsProvider(Settings.resolve({"home": tmp_path / "h2"}, env={}, cwd=tmp_path),
                automation=automation, sweeper=FakeSweeper(), retry_delay=0,
                env={"AWS_REGION": "eu-west-1"}).retain(own.record)
    assert shared_server.calls == []


def test_shared_mode_refuses_without_a_base_stack_or_a_shared_instance_before_recording(
    tmp_path: Path, shared_server: FakeSharedServer
) -> None:
    req, _ = request()
    with pytest.raises(ConfigError, match="ENVKIT_PULUMI_BASE_STACK") as caught:
        shared_provider(tmp_path, FakeAutomation(), base=None).provision(req)
    assert caught.value.exit_code == 2
    automation = FakeAutomation()
    automation.create_or_select("base").state["outputs"] = {"vpc_id": "vpc-base"}
    with pytest.raises(ConfigError, match="holds no shared database"):
        shared_provider(tmp_path, automation).provision(req)
    missing = FakeAutomation(exists=False)
    with pytest.raises(ConfigError, match="base stack 'base' does not exist"):
        shared_provider(tmp_path, missing).provision(req)
    assert req.record.resources == {} and shared_server.calls == []
