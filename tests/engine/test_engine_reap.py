"""``envkit reap --provider aws`` on the real engine: the backend's stacks reaped from a runner
that created none of them (issue 20).

Stacks are made through envkit's Automation boundary from one ENVKIT_HOME, with inline programs
of dynamic resources: a VPC and a security group created through boto3 against a moto server
(tagged as envkit tags them), or files; the reap is the real CLI as a subprocess with a fresh
ENVKIT_HOME and the same backend and passphrase, pointed at the same moto server.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from engine_programs import wait_group_gone
from reap_programs import envkit_aws_program, envkit_program

from envkit.naming import TAG_EXPIRES_AT, TAG_OWNER, TAG_PIPELINE_ID
from envkit.providers.aws.automation import PulumiAutomation, connect
from envkit.settings import Settings

EXPIRED = "2020-01-01T00:00:00Z"
LIVE = "2099-01-01T00:00:00Z"
REGION = "us-east-1"
@pytest.fixture
def first_runner(engine_env: str, tmp_path: Path, moto_url: str) -> PulumiAutomation:
    """envkit's boundary on the shared backend, as the runner that created the stacks."""
    settings = Settings.resolve({"home": tmp_path / "runner-1", "pulumi_backend": engine_env})
    return connect(settings, dict(os.environ), REGION, [])


def make_stack(
    boundary: PulumiAutomation, tmp_path: Path, name: str, files: tuple[str, ...], expires: str
) -> None:
    """A stack as the aws provider leaves one: tags, config, outputs with expiry and owner;
    without ``files``, its resources are a VPC and a security group on moto."""
    tags = {TAG_PIPELINE_ID: name, TAG_EXPIRES_AT: expires, TAG_OWNER: "ci"}
    program = (
        envkit_program(tmp_path, files, expires) if files else envkit_aws_program(tags, REGION)
    )
    boundary._program = program  # type: ignore[method-assign]
    stack = boundary.create_or_select(name)
    stack.set_config({"envkit:expiresAt": (expires, False), "envkit:owner": ("ci", False)})
    stack.set_tags(tags)
    stack.up(lambda _: None)


def reap_command(tmp_path: Path, backend: str, moto_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "envkit", "reap", "--provider", "aws", "--json", *extra]


def reap_env(tmp_path: Path, backend: str, moto_url: str) -> dict[str, str]:
    """A fresh ENVKIT_HOME; the same backend and passphrase (from the engine_env fixture)."""
    return {
        **os.environ,
        "ENVKIT_HOME": str(tmp_path / "reaper-home"),
        "ENVKIT_PULUMI_BACKEND": backend,
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }


def reap(tmp_path: Path, backend: str, moto_url: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        reap_command(tmp_path, backend, moto_url, *extra),
        env=reap_env(tmp_path, backend, moto_url), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def stacks_in(backend: str) -> set[str]:
    folder = Path(backend.removeprefix("file://")) / ".pulumi" / "stacks" / "envkit"
    return {p.name.removesuffix(".json") for p in folder.glob("*.json")}


def hashes(backend: str) -> dict[str, str]:
    root = Path(backend.removeprefix("file://"))
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def by_stack(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["stack"]: e for e in entries if e.get("kind") == "stack"}


def tagged(pipeline_id: str) -> dict[str, list[str]]:
    """What moto holds tagged with ``pipeline_id``: the tagging API, and EC2's own listings."""
    import boto3

    session = boto3.session.Session(region_name=REGION)
    ec2 = session.client("ec2")
    tag_filter = [{"Name": f"tag:{TAG_PIPELINE_ID}", "Values": [pipeline_id]}]
    mappings = session.client("resourcegroupstaggingapi").get_resources(
        TagFilters=[{"Key": TAG_PIPELINE_ID, "Values": [pipeline_id]}]
    )["ResourceTagMappingList"]
    return {
        "arns": sorted(m["ResourceARN"] for m in mappings),
        "vpcs": sorted(v["VpcId"] for v in ec2.describe_vpcs(Filters=tag_filter)["Vpcs"]),
        "groups": sorted(
            g["GroupId"]
            for g in ec2.describe_security_groups(Filters=tag_filter)["SecurityGroups"]
        ),
    }


def dynamic_providers(tmp_path: Path) -> list[str]:
    """This test's Pulumi dynamic provider processes still running (theirs is the PULUMI_HOME
    under ``tmp_path``: other tests may run providers meanwhile), after a grace period for
    the engine's shutdown of them."""
    deadline = time.monotonic() + 10
    while True:
        done = subprocess.run(["pgrep", "-f", "pulumi.dynamic"], capture_output=True, text=True)
        mine = []
        for pid in done.stdout.split():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:  # ended meanwhile, or another user's
                continue
            if str(tmp_path).encode() in environ:
                mine.append(pid)
        if not mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)


def test_reap_removes_expired_stacks_from_another_runner(
    first_runner: PulumiAutomation, engine_env: str, tmp_path: Path, moto_url: str
) -> None:
    make_stack(first_runner, tmp_path, "envkit-expired", (), EXPIRED)
    created = tagged("envkit-expired")
    assert len(created["vpcs"]) == 1 and len(created["groups"]) == 1
    assert len(created["arns"]) == 2
    make_stack(first_runner, tmp_path, "envkit-emptied", ("c",), EXPIRED)
    emptied = first_runner.select("envkit-emptied")
    emptied.destroy(lambda _: None)  # a `down` killed before `stack rm`: expiry in tags only
    assert emptied.outputs() == {}
    make_stack(first_runner, tmp_path, "envkit-live", ("d",), LIVE)
    before = hashes(engine_env)

    dry = reap(tmp_path, engine_env, moto_url, "--dry-run")

    assert hashes(engine_env) == before, "the dry run wrote to the backend"
    assert tagged("envkit-expired") == created, "the dry run changed AWS"
    assert dry["dry_run"] is True and dry["errors"] == []
    assert set(by_stack(dry["reaped"])) == {"envkit-expired", "envkit-emptied"}
    assert by_stack(dry["reaped"])["envkit-expired"]["resources"] == 3  # VPC, group, provider
    assert by_stack(dry["reaped"])["envkit-emptied"]["resources"] == 0
    assert by_stack(dry["kept"])["envkit-live"]["reason"] == f"until {LIVE}"

    real = reap(tmp_path, engine_env, moto_url)

    assert real["errors"] == []
    assert set(by_stack(real["reaped"])) == set(by_stack(dry["reaped"]))
    assert set(by_stack(real["kept"])) == {"envkit-live"}
    assert stacks_in(engine_env) == {"envkit-live"}
    assert tagged("envkit-expired") == {"arns": [], "vpcs": [], "groups": []}
    # The stack's destroy deleted them: the tag sweep after it found nothing of the pipeline.
    assert [e for e in real["reaped"] if e.get("kind") != "stack"] == []
    assert (tmp_path / "d.txt").exists()
    assert dynamic_providers(tmp_path) == [], "a dynamic provider process outlived the reap"


def test_a_reap_killed_in_a_destroy_is_completed_by_the_next(
    first_runner: PulumiAutomation, engine_env: str, tmp_path: Path, moto_url: str
) -> None:
    make_stack(first_runner, tmp_path, "envkit-killed", ("k",), EXPIRED)
    (tmp_path / "pause-delete").touch()
    proc = subprocess.Popen(
        reap_command(tmp_path, engine_env, moto_url),
        env=reap_env(tmp_path, engine_env, moto_url), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "deleting").exists():
            assert proc.poll() is None, "the reap ended before its destroy started"
            assert time.monotonic() < deadline, "the destroy never started"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_group_gone(proc.pid)
    root = Path(engine_env.removeprefix("file://"))
    assert list(root.rglob(".pulumi/locks/**/*.json")), "the killed destroy left no lock"
    assert stacks_in(engine_env) == {"envkit-killed"}

    report = reap(tmp_path, engine_env, moto_url)

    assert report["errors"] == []
    assert set(by_stack(report["reaped"])) == {"envkit-killed"}
    assert stacks_in(engine_env) == set()
    assert not (tmp_path / "k.txt").exists()
    assert not list(root.rglob(".pulumi/locks/**/*.json"))
    assert dynamic_providers(tmp_path) == [], "a dynamic provider process outlived the reap"
