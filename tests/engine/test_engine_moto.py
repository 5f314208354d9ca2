"""envkit's Automation boundary, recovery and down on the real engine, with AWS played by moto.

The stacks' resources are dynamic ones (``engine_programs.aws_program``: a VPC and a security
group) whose create/delete call boto3 against a moto server on a loopback port, tagged as envkit
tags everything; envkit's own tag sweep then confirms that nothing of the pipeline is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from engine_programs import aws_program, wait_group_gone

from envkit.naming import TAG_EXPIRES_AT, TAG_OWNER, TAG_PIPELINE_ID, Tags
from envkit.providers.aws import sweep as cloudsweep
from envkit.providers.aws.automation import PulumiAutomation, StackMissing, connect
from envkit.providers.aws.provider import AwsProvider
from envkit.providers.aws.recovery import with_recovery
from envkit.settings import Settings

REGION = "us-east-1"
HERE = Path(__file__).resolve().parent


@pytest.fixture
def moto(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test's moto server (see conftest.moto_url) as a boto3 session; envkit's sweep does
    not wait between its waves against it."""
    import boto3

    monkeypatch.setattr(cloudsweep, "RETRY_DELAYS", (0, 0, 0))
    return boto3.session.Session(region_name=REGION)


def pipeline_tags(pipeline_id: str) -> dict[str, str]:
    """The three tags envkit puts on every resource of ``pipeline_id``."""
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    return Tags(pipeline_id, expires, "engine-tier").as_dict()


def runner(
    home: Path, backend: str | None, pipeline_id: str, monkeypatch: pytest.MonkeyPatch
) -> PulumiAutomation:
    """envkit's boundary as the aws provider connects it, running the moto program."""
    values: dict[str, Any] = {"home": home}
    if backend:
        values["pulumi_backend"] = backend
    boundary = connect(Settings.resolve(values), dict(os.environ), REGION, [])
    monkeypatch.setattr(boundary, "_program", aws_program(pipeline_tags(pipeline_id), REGION))
    return boundary


def down(boundary: PulumiAutomation, pipeline_id: str, home: Path) -> None:
    """envkit's ``down`` of the aws provider: refresh + destroy (with recovery), remove the
    stack, then the tag sweep of the pipeline."""
    settings = Settings.resolve({"home": home})
    provider = AwsProvider(settings, automation=boundary, env=dict(os.environ), retry_delay=0)
    provider.destroy(pipeline_id, None)


@pytest.fixture
def home(engine_env: str, moto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The runner's ENVKIT_HOME, where envkit keeps its default ``file://`` backend."""
    monkeypatch.delenv("PULUMI_BACKEND_URL")  # envkit chooses the backend itself
    return tmp_path / "envkit-home"


Cleanup = list[tuple[PulumiAutomation, str, Path]]


@pytest.fixture
def cleanup(engine_env: str, moto: Any) -> Iterator[Cleanup]:
    """Stacks to take down (envkit's ``down``) if the test leaves them, failed or not; runs
    before the moto server stops."""
    stacks: Cleanup = []
    yield stacks
    for boundary, pipeline_id, home in stacks:
        try:
            boundary.select(pipeline_id)
        except StackMissing:
            continue
        try:
            down(boundary, pipeline_id, home)
        except Exception as exc:  # the test's own failure is the one to see
            print(f"cleanup of {pipeline_id} failed: {exc}", file=sys.stderr)


def tagged(session: Any, pipeline_id: str) -> dict[str, list[str]]:
    """What AWS still holds tagged with ``pipeline_id``: the tagging API, and EC2's own
    listings (which do not depend on the tagging API's coverage)."""
    ec2 = session.client("ec2")
    tag_filter = [{"Name": f"tag:{TAG_PIPELINE_ID}", "Values": [pipeline_id]}]
    mappings = session.client("resourcegroupstaggingapi").get_resources(
        TagFilters=[{"Key": TAG_PIPELINE_ID, "Values": [pipeline_id]}]
    )["ResourceTagMappingList"]
    found = {
        "arns": sorted(m["ResourceARN"] for m in mappings),
        "vpcs": sorted(v["VpcId"] for v in ec2.describe_vpcs(Filters=tag_filter)["Vpcs"]),
        "groups": sorted(
            g["GroupId"]
            for g in ec2.describe_security_groups(Filters=tag_filter)["SecurityGroups"]
        ),
    }
    return found


NOTHING: dict[str, list[str]] = {"arns": [], "vpcs": [], "groups": []}


def test_up_tags_in_aws_and_destroy_leaves_nothing_tagged(
    home: Path, moto: Any, cleanup: Cleanup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up creates the resources in AWS with envkit's three tags, envkit's sweep lists them by
    tag, and the Pulumi destroy alone deletes them all (the sweep then finds nothing)."""
    pipeline_id = "envkit-moto-1"
    boundary = runner(home, None, pipeline_id, monkeypatch)
    cleanup.append((boundary, pipeline_id, home))
    stack = boundary.create_or_select(pipeline_id)

    outputs = stack.up(lambda _: None)

    ec2 = moto.client("ec2")
    (vpc,) = ec2.describe_vpcs(VpcIds=[outputs["vpc_id"]])["Vpcs"]
    (group,) = ec2.describe_security_groups(GroupIds=[outputs["group_id"]])["SecurityGroups"]
    assert group["VpcId"] == vpc["VpcId"]
    for resource in (vpc, group):
        tags = {t["Key"]: t["Value"] for t in resource["Tags"]}
        assert tags[TAG_PIPELINE_ID] == pipeline_id
        assert tags[TAG_OWNER] == "engine-tier"
        assert datetime.fromisoformat(tags[TAG_EXPIRES_AT]) > datetime.now(UTC)
    listed = tagged(moto, pipeline_id)
    assert listed["vpcs"] == [vpc["VpcId"]] and listed["groups"] == [group["GroupId"]]
    assert len(listed["arns"]) == 2
    dry = cloudsweep.sweep(
        region=REGION, dry_run=True, now=datetime.now(UTC), pipeline_id=pipeline_id
    )
    assert [sorted(e["resources"]) for e in dry.reaped] == [listed["arns"]]

    stack.destroy(lambda _: None)

    assert tagged(moto, pipeline_id) == NOTHING
    boundary.remove(pipeline_id)
    swept = cloudsweep.sweep(
        region=REGION, dry_run=False, now=datetime.now(UTC), pipeline_id=pipeline_id
    )
    assert swept.reaped == [] and swept.errors == []


KILLED_UP = """
import json, os, sys
from pathlib import Path
from engine_programs import aws_program
from envkit.providers.aws.automation import connect
from envkit.settings import Settings
home, pipeline_id, tags, marker = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
boundary = connect(Settings.resolve({"home": Path(home)}), dict(os.environ), "us-east-1", [])
boundary._program = aws_program(tags, "us-east-1", Path(marker))
boundary.create_or_select(pipeline_id).up(print)
"""


def kill_mid_create(home: Path, pipeline_id: str, marker: Path) -> None:
    """envkit's boundary running an ``up`` in another process, SIGKILLed with its process group
    (the CLI, the providers) while the security group's create sleeps after its AWS call."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_UP, str(home), pipeline_id,
         json.dumps(pipeline_tags(pipeline_id)), str(marker)],
        start_new_session=True, cwd=HERE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the up ended before the create paused"
            assert time.monotonic() < deadline, "the create never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_group_gone(proc.pid)


def stored_state(backend: str, stack: str) -> dict[str, Any]:
    """The stack's checkpoint as the ``file://`` backend stores it (read without the CLI)."""
    (path,) = Path(backend.removeprefix("file://"), ".pulumi", "stacks").rglob(f"{stack}.json")
    checkpoint: dict[str, Any] = json.loads(path.read_text())["checkpoint"]["latest"]
    return checkpoint


def lock_files(backend: str, stack: str) -> list[Path]:
    """The lock files the ``file://`` backend keeps for ``stack``."""
    locks = Path(backend.removeprefix("file://"), ".pulumi", "locks")
    return [p for p in locks.rglob("*.json") if p.parent.name == stack]


def test_a_killed_up_is_recovered_by_the_next_up_and_down_leaves_nothing_tagged(
    home: Path, moto: Any, cleanup: Cleanup, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Defect 2 with AWS in the loop: the killed run leaves the lock and a pending create whose
    group exists in AWS; envkit's next up cancels the dead run's lock, clears the pending create
    and succeeds; envkit's down destroys what Pulumi tracks and its sweep the orphan."""
    pipeline_id = "envkit-moto-killed"
    boundary = runner(home, None, pipeline_id, monkeypatch)
    backend = boundary.backend
    cleanup.append((boundary, pipeline_id, home))

    kill_mid_create(home, pipeline_id, tmp_path / "creating")

    assert lock_files(backend, pipeline_id), "the killed run left no lock"
    pending = stored_state(backend, pipeline_id).get("pending_operations") or []
    assert [(op["type"], op["resource"]["type"]) for op in pending] == [
        ("creating", "pulumi-python:dynamic:Resource")
    ]
    orphans = tagged(moto, pipeline_id)["groups"]
    assert len(orphans) == 1, "the group's AWS create did not happen before the kill"

    stack = boundary.create_or_select(pipeline_id)
    outputs = with_recovery(stack, lambda: stack.up(lambda _: None), "up")

    assert "locked by a dead run" in caplog.text
    assert not lock_files(backend, pipeline_id)
    assert not stored_state(backend, pipeline_id).get("pending_operations")
    assert outputs["group_id"] not in orphans
    after_up = tagged(moto, pipeline_id)
    assert after_up["vpcs"] == [outputs["vpc_id"]]  # the VPC's create had finished: kept
    assert sorted(after_up["groups"]) == sorted([*orphans, outputs["group_id"]])

    down(boundary, pipeline_id, home)

    assert tagged(moto, pipeline_id) == NOTHING
    # Pulumi's destroy took what it tracked; the orphan went with envkit's sweep.
    assert "deleted 1 resource(s) of envkit-moto-killed that Pulumi did not know" in caplog.text
    with pytest.raises(StackMissing):
        boundary.select(pipeline_id)


def test_a_killed_up_is_recovered_by_down_alone(
    home: Path, moto: Any, cleanup: Cleanup, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``down`` right after the killed run (no up in between) recovers the lock and pending
    create itself, and leaves nothing tagged."""
    pipeline_id = "envkit-moto-killed-down"
    boundary = runner(home, None, pipeline_id, monkeypatch)
    cleanup.append((boundary, pipeline_id, home))
    kill_mid_create(home, pipeline_id, tmp_path / "creating")
    assert lock_files(boundary.backend, pipeline_id)
    assert len(tagged(moto, pipeline_id)["groups"]) == 1

    down(boundary, pipeline_id, home)

    assert tagged(moto, pipeline_id) == NOTHING
    assert not lock_files(boundary.backend, pipeline_id)
    with pytest.raises(StackMissing):
        boundary.select(pipeline_id)


def test_a_second_runner_downs_the_stack_and_nothing_tagged_is_left(
    engine_env: str, moto: Any, cleanup: Cleanup, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Defect 6 with AWS in the loop: a runner with a fresh ENVKIT_HOME and work dir, the same
    backend URL and passphrase, takes the stack down without the first runner's files."""
    pipeline_id = "envkit-moto-shared"
    first = runner(tmp_path / "runner-1", engine_env, pipeline_id, monkeypatch)
    cleanup.append((first, pipeline_id, tmp_path / "runner-1"))
    first.create_or_select(pipeline_id).up(lambda _: None)
    assert len(tagged(moto, pipeline_id)["arns"]) == 2

    second = runner(tmp_path / "runner-2", engine_env, pipeline_id, monkeypatch)
    assert second.backend == first.backend and second.work_dir != first.work_dir
    assert not second.work_dir.exists() or not any(second.work_dir.iterdir())

    down(second, pipeline_id, tmp_path / "runner-2")

    assert tagged(moto, pipeline_id) == NOTHING
    with pytest.raises(StackMissing):
        first.select(pipeline_id)
