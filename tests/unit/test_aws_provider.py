"""AwsProvider against a fake Automation boundary: create/select, up, destroy with retries,
stale-lock and pending-operation recovery, error mapping, and the missing-CLI prerequisite."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from envkit.errors import LockedError, PrerequisiteError, ProvisionError, TeardownError
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


class FakeStack:
    def __init__(self, name: str, script: list[Any]) -> None:
        self.name = name
        self.config: dict[str, tuple[str, bool]] = {}
        self.tags: dict[str, str] = {}
        self.calls: list[str] = []
        self.script = script  # exceptions (or None) to raise from up/destroy, in order
        self.state: dict[str, Any] = {"version": 3, "deployment": {"resources": []}}

    def _step(self, what: str) -> None:
        self.calls.append(what)
        if self.script:
            failure = self.script.pop(0)
            if failure is not None:
                raise failure

    def get_config(self, key: str) -> str | None:
        return self.config.get(key, (None, False))[0]

    def set_config(self, values: Mapping[str, tuple[str, bool]]) -> None:
        self.config.update(values)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def up(self, progress: Any) -> dict[str, Any]:
        progress("create aws:rds/instance:Instance database-instance")
        self._step("up")
        return dict(OUTPUTS)

    def refresh(self, progress: Any) -> None:
        self.calls.append("refresh")

    def destroy(self, progress: Any) -> None:
        self._step("destroy")

    def cancel(self) -> None:
        self.calls.append("cancel")

    def export_state(self) -> dict[str, Any]:
        return self.state

    def import_state(self, state: Mapping[str, Any]) -> None:
        self.calls.append("import")
        self.state = dict(state)


class FakeAutomation:
    def __init__(self, script: list[Any] | None = None, exists: bool = True) -> None:
        self.stacks: dict[str, FakeStack] = {}
        self.script = script or []
        self.exists = exists
        self.removed: list[str] = []

    def create_or_select(self, stack_name: str) -> FakeStack:
        return self.stacks.setdefault(stack_name, FakeStack(stack_name, self.script))

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
    automation = FakeAutomation()
    req, steps = request()
    outputs = provider(tmp_path, automation).provision(req)
    stack = automation.stacks["pr-42"]
    assert outputs == {k: v for k, v in OUTPUTS.items() if k.isupper()}
    assert req.record.resources["stack_outputs"] == {
        "vpc_id": "vpc-1",
        "ecs_cluster": "envkit-pr-42",
    }
    assert req.record.resources["rds_identifier"] == "envkit-pr-42-db"
    assert stack.config["envkit:pipelineId"] == ("pr-42", False)
    assert stack.config["envkit:region"] == ("eu-west-1", False)
    password, secret = stack.config[PASSWORD_CONFIG_KEY]
    assert secret and len(password) >= 24
    assert stack.tags["envkit:expires-at"] == "2030-01-01T04:00:00Z"
    assert stack.tags["envkit:owner"] == "ci_7 runner"  # '#' is refused in AWS tags
    assert "create aws:rds/instance:Instance database-instance" in steps


def test_up_again_selects_the_stack_and_keeps_its_password(tmp_path: Path) -> None:
    automation = FakeAutomation()
    aws = provider(tmp_path, automation)
    aws.provision(request()[0])
    first = automation.stacks["pr-42"].config[PASSWORD_CONFIG_KEY]
    aws.provision(request()[0])
    assert automation.stacks["pr-42"].config[PASSWORD_CONFIG_KEY] == first
    assert automation.stacks["pr-42"].calls == ["up", "up"]


def test_stale_lock_is_cancelled_and_up_retried_once(tmp_path: Path) -> None:
    automation = FakeAutomation(script=[StackLocked("the stack is currently locked by 1 lock(s)")])
    outputs = provider(tmp_path, automation).provision(request()[0])
    assert outputs["DATABASE_HOST"] == "db.example"
    assert automation.stacks["pr-42"].calls == ["up", "cancel", "up"]


def test_a_lock_that_survives_cancel_is_a_locked_error(tmp_path: Path) -> None:
    automation = FakeAutomation(script=[StackLocked("locked"), StackLocked("still locked")])
    with pytest.raises(LockedError, match="stays locked"):
        provider(tmp_path, automation).provision(request()[0])


def test_pending_operations_are_cleared_before_up(tmp_path: Path, caplog: Any) -> None:
    automation = FakeAutomation()
    stack = automation.create_or_select("pr-42")
    urn = "urn:pulumi:pr-42::envkit::aws:rds/instance:Instance::database-instance"
    stack.state = {
        "version": 3,
        "deployment": {
            "resources": [],
            "pending_operations": [{"type": "creating", "resource": {"urn": urn}}],
        },
    }
    provider(tmp_path, automation).provision(request()[0])
    assert stack.calls == ["import", "up"]
    assert stack.state["deployment"]["pending_operations"] == []
    assert urn in caplog.text and "tag sweep" in caplog.text


def test_a_failed_up_is_a_provision_error_without_the_password(tmp_path: Path) -> None:
    automation = FakeAutomation()
    aws = provider(tmp_path, automation)
    aws.provision(request()[0])
    password = automation.stacks["pr-42"].config[PASSWORD_CONFIG_KEY][0]
    automation.script.append(AutomationFailure(f"error: creating RDS: password {password} bad"))
    with pytest.raises(ProvisionError) as info:
        aws.provision(request()[0])
    assert password not in str(info.value)
    assert "Pulumi up failed" in str(info.value)


def test_destroy_refreshes_retries_removes_the_stack_and_sweeps_by_tag(tmp_path: Path) -> None:
    automation = FakeAutomation(script=[AutomationFailure("DependencyViolation: sg in use")])
    sweeper = FakeSweeper()
    provider(tmp_path, automation, sweeper).destroy("pr-42", None)
    stack = automation.stacks["pr-42"]
    assert stack.calls == ["refresh", "destroy", "refresh", "destroy"]
    assert automation.removed == ["pr-42"]
    assert sweeper.calls[0]["pipeline_id"] == "pr-42" and sweeper.calls[0]["dry_run"] is False
    assert sweeper.calls[0]["region"] == "eu-west-1"


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
