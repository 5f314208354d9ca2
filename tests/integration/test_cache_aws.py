"""ElastiCache on aws against moto in server mode: the tag sweep deletes a pipeline's
replication group, then its subnet group, before the security group, subnets and VPC; the
readiness probe and the liveness check read the group's status.

moto (5.2) lacks two things AWS does: it never finishes deleting a replication group (the group
stays ``deleting``), and it has no ``DeleteCacheSubnetGroup``. The fixture ``aws_finishes``
makes moto's in-process backend drop a group when it is deleted (what AWS does minutes later),
and ``subnet_group_delete`` answers ``DeleteCacheSubnetGroup`` from a botocore ``before-call``
hook on the sweep's ElastiCache client, against moto's own state: refused with
``CacheSubnetGroupInUse`` while a replication group uses the subnet group, as AWS refuses it.
Every other call is moto's real HTTP API.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from envkit.health import HealthCheckFailedError, wait_until_healthy
from envkit.providers.aws import cache_sweep
from envkit.providers.aws import sweep as cloudsweep
from envkit.providers.aws.liveness import cache_alive
from envkit.providers.aws.probes import ElastiCacheProbe

pytestmark = [pytest.mark.aws, pytest.mark.integration]

REGION = "us-east-1"
ACCOUNT = "123456789012"
NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def session(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import urllib.request

    import boto3

    urllib.request.urlopen(  # a clean account per test
        urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10
    ).close()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_ENDPOINT_URL", moto_url), ("AWS_ACCESS_KEY_ID", "testing"),
                        ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", REGION),
                        ("AWS_REGION", REGION)):  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cloudsweep, "RETRY_DELAYS", (0, 0, 0))
    monkeypatch.setattr(cache_sweep, "WAIT_DELAY", 1)
    monkeypatch.setattr(cache_sweep, "WAIT_ATTEMPTS", 5)
    assert os.environ["AWS_ENDPOINT_URL"] == moto_url
    yield boto3.session.Session(region_name=REGION)


def _backend() -> Any:
    from moto.elasticache.models import elasticache_backends

    return elasticache_backends[ACCOUNT][REGION]


@pytest.fixture
def aws_finishes(session: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """moto's replication groups finish deleting (AWS's few minutes, at once); the names."""
    from moto.elasticache.models import ElastiCacheBackend

    deleted: list[str] = []
    original = ElastiCacheBackend.delete_replication_group

    def delete(self: Any, replication_group_id: str, retain_primary_cluster: Any) -> Any:
        group = original(self, replication_group_id, retain_primary_cluster)
        self.replication_groups.pop(replication_group_id, None)
        deleted.append(replication_group_id)
        return group

    monkeypatch.setattr(ElastiCacheBackend, "delete_replication_group", delete)
    return deleted


@pytest.fixture
def subnet_group_delete(session: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``DeleteCacheSubnetGroup`` answered from moto's state (moto lacks it); the calls made."""
    from botocore.awsrequest import AWSResponse

    calls: list[str] = []
    make_client = cache_sweep.client

    def answer(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        name = params["CacheSubnetGroupName"]
        backend = _backend()
        users = [g for g in backend.replication_groups.values()
                 if g.cache_subnet_group_name == name]  # fmt: skip
        calls.append(f"{name}:{'in-use' if users else 'deleted'}")
        if users:
            error = {"Code": "CacheSubnetGroupInUse", "Message": f"{name} is in use"}
            return AWSResponse("", 400, {}, None), {"Error": error, "ResponseMetadata": {}}
        if backend.cache_subnet_groups.pop(name, None) is None:
            error = {"Code": "CacheSubnetGroupNotFoundFault", "Message": name}
            return AWSResponse("", 404, {}, None), {"Error": error, "ResponseMetadata": {}}
        return AWSResponse("", 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}

    def client(session_: Any) -> Any:
        made = make_client(session_)
        made.meta.events.register(
            "before-call.elasticache.DeleteCacheSubnetGroup",
            lambda params, **kw: answer(params.get("body", params)),
        )
        return made

    monkeypatch.setattr(cache_sweep, "client", client)
    return calls


def tags(pipeline_id: str, expires: datetime) -> list[dict[str, str]]:
    return [
        {"Key": "envkit:pipeline-id", "Value": pipeline_id},
        {"Key": "envkit:expires-at", "Value": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        {"Key": "envkit:owner", "Value": "test"},
    ]


def create_cache_environment(session: Any, pipeline_id: str, expires: datetime) -> str:
    """What the stacks create for Redis, in miniature: VPC, subnets, SG, subnet group, group."""
    ec2, elasticache = session.client("ec2"), session.client("elasticache")
    t = tags(pipeline_id, expires)

    def spec(kind: str) -> list[dict[str, Any]]:
        return [{"ResourceType": kind, "Tags": t}]

    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=spec("vpc"))["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=block, AvailabilityZone=zone,
                          TagSpecifications=spec("subnet"))["Subnet"]["SubnetId"]
        for block, zone in (("10.42.0.0/20", "us-east-1a"), ("10.42.16.0/20", "us-east-1b"))
    ]  # fmt: skip
    group = ec2.create_security_group(
        GroupName=f"envkit-{pipeline_id}-redis", Description="redis", VpcId=vpc,
        TagSpecifications=spec("security-group"),
    )["GroupId"]  # fmt: skip
    name = f"envkit-{pipeline_id}-redis"
    elasticache.create_cache_subnet_group(
        CacheSubnetGroupName=name, CacheSubnetGroupDescription="x", SubnetIds=subnets, Tags=t
    )
    elasticache.create_replication_group(
        ReplicationGroupId=name, ReplicationGroupDescription="x", Engine="redis",
        CacheNodeType="cache.t4g.micro", NumCacheClusters=1, CacheSubnetGroupName=name,
        SecurityGroupIds=[group], TransitEncryptionEnabled=True, AuthToken="t" * 32, Tags=t,
    )  # fmt: skip
    return name


def _order(session: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every successful delete call of the sweep, in order (botocore ``after-call`` events)."""
    import boto3

    seen: list[str] = []
    original = boto3.session.Session.client

    def client(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)

        def record(http_response: Any, parsed: Any, model: Any, **_: Any) -> None:
            if model.name.startswith("Delete") and http_response.status_code < 300:
                seen.append(model.name)

        made.meta.events.register("after-call", record)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return seen


def test_the_sweep_deletes_the_cache_before_its_subnet_group_and_the_network(
    session: Any, aws_finishes: list[str], subnet_group_delete: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    old = create_cache_environment(session, "old-1", NOW - timedelta(hours=1))
    fresh = create_cache_environment(session, "fresh-1", NOW + timedelta(hours=3))
    dry = cloudsweep.sweep(region=REGION, dry_run=True, now=NOW)
    (listed,) = dry.reaped
    arns = listed["resources"]
    assert f"arn:aws:elasticache:{REGION}:{ACCOUNT}:replicationgroup:{old}" in arns
    assert f"arn:aws:elasticache:{REGION}:{ACCOUNT}:subnetgroup:{old}" in arns
    assert aws_finishes == [] and subnet_group_delete == []  # a dry run deletes nothing
    seen = _order(session, monkeypatch)
    report = cloudsweep.sweep(region=REGION, dry_run=False, now=NOW)
    assert report.errors == [], report.errors
    assert [e["pipeline_id"] for e in report.reaped] == ["old-1"]
    assert [e["pipeline_id"] for e in report.kept] == ["fresh-1"]
    assert aws_finishes == [old]
    assert subnet_group_delete == [f"{old}:deleted"]  # never tried while the group still stood
    first = {name: seen.index(name) for name in reversed(seen)}
    assert (first["DeleteReplicationGroup"] < first["DeleteCacheSubnetGroup"]
            < first["DeleteSecurityGroup"] < first["DeleteSubnet"] < first["DeleteVpc"]), seen
    elasticache = session.client("elasticache")
    groups = elasticache.describe_replication_groups()["ReplicationGroups"]
    assert [g["ReplicationGroupId"] for g in groups] == [fresh]
    subnet_groups = elasticache.describe_cache_subnet_groups()["CacheSubnetGroups"]
    assert [g["CacheSubnetGroupName"] for g in subnet_groups] == [fresh]


def test_a_subnet_group_in_use_is_retried_until_the_deadline_and_reported(
    session: Any, subnet_group_delete: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the group's deletion finishing (moto's own behaviour), the wait for it gives up
    # and the subnet group stays in use: retried in waves, then both reported as errors.
    monkeypatch.setattr(cloudsweep, "DEADLINE", 2.0)
    monkeypatch.setattr(cache_sweep, "WAIT_ATTEMPTS", 2)
    old = create_cache_environment(session, "old-2", NOW - timedelta(hours=1))
    report = cloudsweep.sweep(region=REGION, dry_run=False, now=NOW)
    (failed,) = report.errors
    prefix = f"arn:aws:elasticache:{REGION}:{ACCOUNT}"
    assert {f"{prefix}:replicationgroup:{old}", f"{prefix}:subnetgroup:{old}"} <= set(
        failed["resources"]
    )
    assert len(subnet_group_delete) >= 2  # retried wave after wave
    assert set(subnet_group_delete) == {f"{old}:in-use"}
    groups = session.client("elasticache").describe_replication_groups()["ReplicationGroups"]
    assert groups[0]["Status"] == "deleting"


def test_the_probe_passes_on_an_available_group_and_fails_fast_on_a_deleting_one(
    session: Any,
) -> None:
    name = create_cache_environment(session, "pr-7", NOW + timedelta(hours=1))
    probe = ElastiCacheProbe(name, region=REGION, max_delay=0.05)
    report = wait_until_healthy([probe], timeout=30)
    assert report.ok and report.results[0].component == "redis"
    assert cache_alive(name, REGION)
    session.client("elasticache").delete_replication_group(ReplicationGroupId=name)
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([probe], timeout=30)
    (result,) = caught.value.report.failing
    error = result.error or ""
    assert "deleting" in error and "will not become available" in error
    assert not cache_alive(name, REGION)


def test_the_probe_waits_for_a_group_not_there_yet_and_liveness_says_missing(
    session: Any,
) -> None:
    probe = ElastiCacheProbe("envkit-missing-redis", region=REGION, max_delay=0.05)
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([probe], timeout=1.0)
    (result,) = caught.value.report.failing
    assert result.status == "not ready" and "not found" in (result.error or "")
    assert not cache_alive("envkit-missing-redis", REGION)
