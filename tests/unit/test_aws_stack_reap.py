"""Reaping the backend's stacks (``envkit.providers.aws.stacks``) against the fake Automation
layer: decisions from what is stored with each stack, destroy/remove, failures kept, the backend
lock honoured, the expiry read again after the refresh, and a dry run that changes nothing."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_aws_provider import (
    Backend,
    FakeAutomation,
    FakeStack,
    FakeSweeper,
    _dead_pid,
    lock_line,
    provider,
)

from envkit.providers.aws.automation import (
    AutomationFailure,
    LockHolder,
    StackListing,
    StackMissing,
    lock_holders_in,
    resource_count,
)
from envkit.providers.aws.stacks import StackReaper, Stored, decide_stack
from envkit.providers.aws.sweep import SweepReport
from envkit.reaping import ReapOptions, ReapReport

pytestmark = pytest.mark.aws

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
EXPIRED = "2030-01-01T10:00:00Z"
LIVE = "2030-01-01T14:00:00Z"
ROOT = {"type": "pulumi:pulumi:Stack", "urn": "urn:root"}
DB = {"type": "aws:rds/instance:Instance", "urn": "urn:db"}


class ReapStack(FakeStack):
    """A FakeStack whose tags are read back as the boundary's ``tags()`` does."""

    def __init__(self, name: str, script: list[Any], backend: Backend) -> None:
        super().__init__(name, script, backend)
        self.stack_tags: dict[str, str] = self.__dict__.pop("tags")
        self.on_refresh: Any = None  # what happens in the backend while refresh holds the lock

    def set_tags(self, tags: Any) -> None:
        self.stack_tags.update(tags)

    def tags(self) -> dict[str, str]:  # type: ignore[override]
        return dict(self.stack_tags)

    def refresh(self, progress: Any, *, clear_pending_creates: bool = False) -> None:
        super().refresh(progress, clear_pending_creates=clear_pending_creates)
        if self.on_refresh is not None:
            self.on_refresh(self)

    def destroy(self, progress: Any) -> None:
        super().destroy(progress)
        self.state = {"version": 3, "deployment": {"resources": []}}


class ReapAutomation(FakeAutomation):
    """Lists the backend's stacks and reads the DIY lock files without taking the lock."""

    def create_or_select(self, stack_name: str) -> ReapStack:  # type: ignore[override]
        found = self.stacks.get(stack_name)
        if found is None:
            found = self.stacks[stack_name] = ReapStack(stack_name, self.script, self.backend)
        assert isinstance(found, ReapStack)
        return found

    def select(self, stack_name: str) -> ReapStack:  # type: ignore[override]
        if stack_name not in self.backend.states:
            raise StackMissing(f"no stack named '{stack_name}' found")
        return self.create_or_select(stack_name)

    def remove(self, stack_name: str) -> None:
        if self.backend.locks.get(stack_name):
            raise AutomationFailure("the stack is currently locked")
        assert resource_count(self.backend.states[stack_name]) == 0, "removed with resources"
        self.removed.append(stack_name)
        self.backend.states.pop(stack_name)
        self.stacks.pop(stack_name, None)

    def list_stacks(self) -> list[StackListing]:
        return [StackListing(name, None) for name in sorted(self.backend.states)]

    def lock_holders(self, stack_name: str) -> list[LockHolder] | None:
        line = self.backend.locks.get(stack_name)
        return lock_holders_in(line) if line else []


def add_stack(
    automation: ReapAutomation,
    name: str,
    *,
    expires: str | None = EXPIRED,
    where: str = "outputs",
    resources: tuple[dict[str, str], ...] = (ROOT, DB),
) -> ReapStack:
    stack = automation.create_or_select(name)
    outputs = {}
    if expires is not None and where == "outputs":
        outputs = {"envkit_expires_at": expires, "envkit_owner": "ci"}
    elif expires is not None and where == "tags":
        stack.stack_tags.update({"envkit:expires-at": expires, "envkit:owner": "ci"})
    elif expires is not None:
        stack.config["envkit:expiresAt"] = (expires, False)
    stack.state = {
        "version": 3, "outputs": outputs, "deployment": {"resources": list(resources)},
    }  # fmt: skip
    return stack


def reaper(
    tmp_path: Path, automation: ReapAutomation, *, dry_run: bool = False, busy: str = ""
) -> StackReaper:
    aws = provider(tmp_path, automation)
    return StackReaper(
        automation,
        ReapOptions(now=NOW, dry_run=dry_run),
        destroy=lambda stack: aws._destroy_stack(automation, stack, refreshed=True),
        locally_busy=lambda name: name == busy,
    )


def stacks(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["stack"]: e for e in entries}


# -- decisions --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stored", "older_than", "reap", "reason"),
    [
        (Stored(), None, False, "not envkit's"),
        (Stored("not a time"), None, False, "unreadable expiry"),
        (Stored(LIVE), None, False, f"until {LIVE}"),
        (Stored(EXPIRED), None, True, f"expired at {EXPIRED}"),
        (Stored(EXPIRED), timedelta(hours=3), False, "within --older-than"),
        (Stored(EXPIRED), timedelta(hours=1), True, f"expired at {EXPIRED}"),
    ],
)
def test_decide_stack(
    stored: Stored, older_than: timedelta | None, reap: bool, reason: str
) -> None:
    decision = decide_stack(stored, now=NOW, older_than=older_than)
    assert decision.reap is reap
    assert reason in decision.reason


def test_resource_count_leaves_out_the_root_stack() -> None:
    assert resource_count({"deployment": {"resources": [ROOT]}}) == 0
    assert resource_count({"deployment": {"resources": [ROOT, DB]}}) == 1
    assert resource_count({"version": 3}) == 0


# -- real runs --------------------------------------------------------------------------------
def test_expired_stacks_are_destroyed_or_removed_and_the_rest_kept(tmp_path: Path) -> None:
    automation = ReapAutomation(backend=Backend(diy_tags=True))
    full = add_stack(automation, "pr-1")
    empty = add_stack(automation, "pr-2", where="tags", resources=(ROOT,))
    add_stack(automation, "pr-3", expires=LIVE)
    add_stack(automation, "base", expires=None)
    add_stack(automation, "pr-5", where="config")

    report = reaper(tmp_path, automation).run()

    assert set(stacks(report.reaped)) == {"pr-1", "pr-2", "pr-5"}
    assert stacks(report.reaped)["pr-1"]["resources"] == 1
    assert "destroyed, stack removed" in stacks(report.reaped)["pr-1"]["reason"]
    assert "empty: stack removed" in stacks(report.reaped)["pr-2"]["reason"]
    assert full.calls == ["refresh", "destroy"]  # refreshed once, before the destroy
    assert empty.calls == ["refresh"]  # the lock taken (a dead run's recovered), no destroy
    kept = stacks(report.kept)
    assert kept["pr-3"]["reason"] == f"until {LIVE}"
    assert "not envkit's" in kept["base"]["reason"] and kept["base"]["pipeline_id"] == "base"
    assert all(e["kind"] == "stack" for e in report.reaped + report.kept)
    assert sorted(automation.removed) == ["pr-1", "pr-2", "pr-5"]
    assert report.errors == []


def test_a_failed_destroy_keeps_the_stack_and_reports_its_error(tmp_path: Path) -> None:
    failure = AutomationFailure("error: deleting RDS instance: DependencyViolation")
    automation = ReapAutomation(script=[failure, failure, failure])
    stack = add_stack(automation, "pr-1")

    report = reaper(tmp_path, automation).run()

    assert [e["stack"] for e in report.errors] == ["pr-1"]
    assert "DependencyViolation" in report.errors[0]["error"]
    assert report.errors[0]["kind"] == "stack"
    assert automation.removed == [] and "pr-1" in automation.backend.states
    assert stack.calls.count("destroy") == 3


def test_a_live_lock_keeps_the_stack_busy_and_touches_nothing(tmp_path: Path) -> None:
    automation = ReapAutomation()
    stack = add_stack(automation, "pr-1")
    automation.backend.locks["pr-1"] = lock_line("other-runner", 4242, "2030-01-01T11:30:00Z")
    now_lock = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    add_stack(automation, "pr-2")
    automation.backend.locks["pr-2"] = lock_line(socket.gethostname(), os.getpid(), now_lock)

    for dry_run in (True, False):
        report = reaper(tmp_path, automation, dry_run=dry_run).run()
        kept = stacks(report.kept)
        assert set(kept) == {"pr-1", "pr-2"}, report
        held = "busy: the backend lock is held by ci@other-runner pid 4242"
        assert held in kept["pr-1"]["reason"]
    assert stack.calls == [] and automation.removed == []


def test_the_lock_of_a_dead_run_is_cancelled_and_the_stack_reaped(tmp_path: Path) -> None:
    automation = ReapAutomation()
    stack = add_stack(automation, "pr-1")
    now_lock = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    automation.backend.locks["pr-1"] = lock_line(socket.gethostname(), _dead_pid(), now_lock)

    dry = reaper(tmp_path, automation, dry_run=True).run()
    assert "the lock of a dead run cancelled first" in dry.reaped[0]["reason"]
    assert stack.calls == []

    report = reaper(tmp_path, automation).run()

    assert [e["stack"] for e in report.reaped] == ["pr-1"]
    assert stack.calls[:2] == ["refresh!locked", "cancel"]
    assert automation.removed == ["pr-1"]


def test_an_expiry_extended_by_another_runner_during_the_refresh_keeps_the_stack(
    tmp_path: Path,
) -> None:
    automation = ReapAutomation()
    stack = add_stack(automation, "pr-1")

    def extended(s: ReapStack) -> None:
        s.state = {**s.state, "outputs": {"envkit_expires_at": LIVE, "envkit_owner": "ci"}}

    stack.on_refresh = extended

    report = reaper(tmp_path, automation).run()

    assert report.kept[0]["reason"] == f"extended while reaping: until {LIVE}"
    assert "destroy" not in stack.calls and automation.removed == []


def test_a_pipeline_locked_by_envkit_on_this_runner_is_kept(tmp_path: Path) -> None:
    automation = ReapAutomation()
    stack = add_stack(automation, "pr-1")
    report = reaper(tmp_path, automation, busy="pr-1").run()
    assert "busy: an envkit process on this runner" in report.kept[0]["reason"]
    assert stack.calls == []


def test_a_dry_run_decides_the_same_and_changes_nothing(tmp_path: Path) -> None:
    automation = ReapAutomation()
    add_stack(automation, "pr-1")
    add_stack(automation, "pr-2", resources=(ROOT,))
    add_stack(automation, "pr-3", expires=LIVE)
    states = {k: dict(v) for k, v in automation.backend.states.items()}

    report = reaper(tmp_path, automation, dry_run=True).run()

    assert report.dry_run is True
    assert set(stacks(report.reaped)) == {"pr-1", "pr-2"}
    assert "1 resource(s) to destroy" in stacks(report.reaped)["pr-1"]["reason"]
    assert "empty: the stack removed" in stacks(report.reaped)["pr-2"]["reason"]
    assert set(stacks(report.kept)) == {"pr-3"}
    assert all(s.calls == [] for s in automation.stacks.values())
    assert automation.removed == [] and automation.backend.states == states


def test_a_stack_removed_since_the_listing_is_skipped(tmp_path: Path) -> None:
    automation = ReapAutomation()
    automation.list_stacks = lambda: [StackListing("pr-9", None)]  # type: ignore[method-assign]
    report = reaper(tmp_path, automation).run()
    assert report.as_json() == ReapReport().as_json()


def test_a_listing_failure_is_an_error(tmp_path: Path) -> None:
    automation = ReapAutomation()

    def refuse() -> list[StackListing]:
        raise AutomationFailure("error: could not read the bucket")

    automation.list_stacks = refuse  # type: ignore[method-assign]
    report = reaper(tmp_path, automation).run()
    assert "listing the stacks in the Pulumi backend failed" in report.errors[0]["error"]


# -- the provider: stacks, then the tag sweep -------------------------------------------------
def test_reap_leftovers_reaps_stacks_then_sweeps_tags(tmp_path: Path) -> None:
    automation = ReapAutomation()
    add_stack(automation, "pr-1")
    sweeper = FakeSweeper(SweepReport(reaped=[{"pipeline_id": "pr-7", "kind": "cloud"}]))

    report = provider(tmp_path, automation, sweeper).reap_leftovers(ReapOptions(now=NOW))

    assert [(e["pipeline_id"], e["kind"]) for e in report.reaped] == [
        ("pr-1", "stack"), ("pr-7", "cloud"),
    ]  # fmt: skip
    assert len(sweeper.calls) == 1


def test_a_file_backend_never_written_is_not_connected_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from envkit.providers.aws import provider as provider_module

    def no_connect(*_args: Any) -> Any:
        raise AssertionError("connected: that creates the backend and a passphrase")

    monkeypatch.setattr(provider_module, "connect", no_connect)
    aws = provider_module.AwsProvider(
        provider(tmp_path, ReapAutomation()).settings, sweeper=FakeSweeper(), env={}
    )
    report = aws.reap_leftovers(ReapOptions(now=NOW, dry_run=True))
    assert report.as_json() == ReapReport(dry_run=True).as_json()
    assert not (tmp_path / "home").exists()
