"""The tag-based leak sweep against moto in server mode (real HTTP, real boto3 paths)."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from envkit.providers.aws import sweep as cloudsweep

pytestmark = pytest.mark.aws

REGION = "us-east-1"
NOW = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port, with boto3 pointed at it (and fake credentials)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _AWS_ENV}
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }
    )
    try:
        yield url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_AWS_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
)  # fmt: skip


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A clean moto account per test, and no backoff sleeps."""
    import boto3

    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()
    monkeypatch.setattr(cloudsweep, "RETRY_DELAYS", (0, 0, 0))
    yield boto3.session.Session(region_name=REGION)


def tags(pipeline_id: str, expires: datetime) -> list[dict[str, str]]:
    return [
        {"Key": "envkit:pipeline-id", "Value": pipeline_id},
        {"Key": "envkit:expires-at", "Value": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        {"Key": "envkit:owner", "Value": "test"},
    ]


def create_environment(session: Any, pipeline_id: str, expires: datetime) -> dict[str, str]:
    """What the stacks create, in miniature: VPC, subnets, SG, RDS, ECS, IAM role."""
    ec2, rds, ecs, iam = (session.client(s) for s in ("ec2", "rds", "ecs", "iam"))
    t = tags(pipeline_id, expires)

    def spec(kind: str) -> list[dict[str, Any]]:
        return [{"ResourceType": kind, "Tags": t}]

    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=spec("vpc"))["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(
            VpcId=vpc, CidrBlock=block, AvailabilityZone=zone, TagSpecifications=spec("subnet")
        )["Subnet"]["SubnetId"]
        for block, zone in (("10.42.0.0/20", "us-east-1a"), ("10.42.16.0/20", "us-east-1b"))
    ]
    group = ec2.create_security_group(
        GroupName=f"envkit-{pipeline_id}-pg",
        Description="pg",
        VpcId=vpc,
        TagSpecifications=spec("security-group"),
    )["GroupId"]
    rds.create_db_subnet_group(
        DBSubnetGroupName=f"envkit-{pipeline_id}-db",
        DBSubnetGroupDescription="x",
        SubnetIds=subnets,
        Tags=t,
    )
    rds.create_db_instance(
        DBInstanceIdentifier=f"envkit-{pipeline_id}-db",
        Engine="postgres",
        DBInstanceClass="db.t4g.micro",
        AllocatedStorage=20,
        MasterUsername="envkit",
        MasterUserPassword="secret-password-1",
        DBSubnetGroupName=f"envkit-{pipeline_id}-db",
        VpcSecurityGroupIds=[group],
        Tags=t,
    )
    ecs_tags = [{"key": x["Key"], "value": x["Value"]} for x in t]
    cluster = ecs.create_cluster(clusterName=f"envkit-{pipeline_id}", tags=ecs_tags)["cluster"]
    task = ecs.register_task_definition(
        family=f"envkit-{pipeline_id}-api",
        containerDefinitions=[{"name": "api", "image": "nginx", "memory": 512}],
        tags=ecs_tags,
    )["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(
        cluster=cluster["clusterName"],
        serviceName=f"envkit-{pipeline_id}-api",
        taskDefinition=task,
        desiredCount=0,
        tags=ecs_tags,
    )
    iam.create_role(
        RoleName=f"envkit-{pipeline_id}-exec",
        Path="/envkit/",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        Tags=t,
    )
    return {"vpc": vpc, "group": group, "cluster": cluster["clusterArn"]}


def inventory(session: Any) -> dict[str, set[str]]:
    ec2, rds, ecs, iam = (session.client(s) for s in ("ec2", "rds", "ecs", "iam"))
    return {
        "vpcs": {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if not v.get("IsDefault")},
        "subnets": {
            s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if not s.get("DefaultForAz")
        },
        "groups": {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]},
        "dbs": {d["DBInstanceIdentifier"] for d in rds.describe_db_instances()["DBInstances"]},
        "subnet_groups": {
            g["DBSubnetGroupName"] for g in rds.describe_db_subnet_groups()["DBSubnetGroups"]
        },
        "clusters": {
            c["clusterName"]
            for c in ecs.describe_clusters(clusters=ecs.list_clusters()["clusterArns"])["clusters"]
            if c["status"] == "ACTIVE"
        },
        "roles": {r["RoleName"] for r in iam.list_roles(PathPrefix="/envkit/")["Roles"]},
    }


def test_dry_run_lists_expired_resources_and_deletes_nothing(aws: Any) -> None:
    create_environment(aws, "old-1", NOW - timedelta(hours=1))
    create_environment(aws, "fresh-1", NOW + timedelta(hours=3))
    before = inventory(aws)
    report = cloudsweep.sweep(region=REGION, dry_run=True, now=NOW)
    assert [e["pipeline_id"] for e in report.reaped] == ["old-1"]
    assert report.reaped[0]["dry_run"] is True
    kinds = {
        arn.split(":")[2] + ":" + arn.split(":")[5].split("/")[0]
        for arn in report.reaped[0]["resources"]
    }
    assert {"ec2:vpc", "ec2:subnet", "ec2:security-group", "rds:db", "rds:subgrp", "ecs:cluster",
            "ecs:service", "iam:role"} <= kinds  # fmt: skip
    assert [e["pipeline_id"] for e in report.kept] == ["fresh-1"]
    assert report.errors == []
    assert inventory(aws) == before


def test_real_run_deletes_expired_in_dependency_order_and_keeps_the_rest(aws: Any) -> None:
    create_environment(aws, "old-1", NOW - timedelta(hours=1))
    fresh = create_environment(aws, "fresh-1", NOW + timedelta(hours=3))
    untagged = aws.client("ec2").create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    report = cloudsweep.sweep(region=REGION, dry_run=False, now=NOW)
    assert report.errors == [], report.errors
    assert [e["pipeline_id"] for e in report.reaped] == ["old-1"]
    assert "dry_run" not in report.reaped[0]
    after = inventory(aws)
    assert after["vpcs"] == {fresh["vpc"], untagged}
    assert after["dbs"] == {"envkit-fresh-1-db"}
    assert after["subnet_groups"] == {"envkit-fresh-1-db"}
    assert after["clusters"] == {"envkit-fresh-1"}
    assert after["roles"] == {"envkit-fresh-1-exec"}
    assert "envkit-old-1-pg" not in after["groups"] and "envkit-fresh-1-pg" in after["groups"]
    assert len(after["subnets"]) == 2
    # A second sweep finds nothing more to do.
    again = cloudsweep.sweep(region=REGION, dry_run=False, now=NOW)
    assert again.reaped == [] and [e["pipeline_id"] for e in again.kept] == ["fresh-1"]


def test_older_than_keeps_recently_expired_pipelines(aws: Any) -> None:
    create_environment(aws, "old-1", NOW - timedelta(hours=1))
    report = cloudsweep.sweep(region=REGION, dry_run=True, now=NOW, older_than=timedelta(hours=2))
    assert report.reaped == [] and [e["pipeline_id"] for e in report.kept] == ["old-1"]


def test_pipeline_mode_deletes_all_of_one_pipeline_whatever_its_expiry(aws: Any) -> None:
    create_environment(aws, "fresh-1", NOW + timedelta(hours=3))
    create_environment(aws, "fresh-2", NOW + timedelta(hours=3))
    report = cloudsweep.sweep(region=REGION, dry_run=False, now=NOW, pipeline_id="fresh-1")
    assert [e["pipeline_id"] for e in report.reaped] == ["fresh-1"] and report.kept == []
    after = inventory(aws)
    assert after["dbs"] == {"envkit-fresh-2-db"} and after["clusters"] == {"envkit-fresh-2"}
    assert report.as_dict().keys() == {"reaped", "kept", "errors"}


def test_provider_alive_and_probes_use_boto3_against_the_same_server(
    aws: Any, tmp_path: Any
) -> None:
    from envkit.health import wait_until_healthy
    from envkit.providers.aws.provider import AwsProvider
    from envkit.settings import Settings
    from envkit.state import Record, Status

    create_environment(aws, "pr-7", NOW + timedelta(hours=3))
    settings = Settings.resolve({"home": tmp_path / "home", "aws_region": REGION}, env={})
    provider = AwsProvider(settings, automation=object())  # type: ignore[arg-type]
    record = Record(
        "pr-7", "aws", Status.READY, "2030-01-01T00:00:00Z", "2030-01-01T04:00:00Z", "t"
    )
    record.outputs = {"DATABASE_USER": "envkit", "DATABASE_PASSWORD": "secret-password-1"}
    assert provider.gone(record) == []
    report = wait_until_healthy(provider.probes(record), timeout=30)
    assert {r.name for r in report.results} == {"aws-rds", "aws-ecs"}
    cloudsweep.sweep(region=REGION, dry_run=False, now=NOW, pipeline_id="pr-7")
    assert provider.gone(record)


def _dependency_violation() -> Exception:
    from botocore.exceptions import ClientError

    error = {"Error": {"Code": "DependencyViolation", "Message": "has dependencies"}}
    return ClientError(error, "DeleteVpc")  # type: ignore[arg-type]


def test_a_tagged_type_without_a_deleter_is_skipped_not_a_failure(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect 6: ECS tasks carry the tags through propagate_tags and have no delete call.
    create_environment(aws, "pr-9", NOW - timedelta(hours=1))
    task = "arn:aws:ecs:us-east-1:123456789012:task/envkit-pr-9/0123456789abcdef"
    discover = cloudsweep._discover

    def with_task(session: Any, pipeline_id: str | None) -> Any:
        yield from discover(session, pipeline_id)
        yield cloudsweep._Found(task, {"envkit:pipeline-id": "pr-9"})

    monkeypatch.setattr(cloudsweep, "_discover", with_task)
    report = cloudsweep.sweep(region=REGION, dry_run=False, now=NOW, pipeline_id="pr-9")
    assert report.errors == []
    assert report.skipped[0]["resources"] == [task]
    assert "stops when its ECS service is deleted" in report.skipped[0]["reason"]
    assert inventory(aws)["vpcs"] == set()


def test_the_sweep_goes_on_in_waves_until_a_slow_dependency_clears(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect 6: ENIs take longer to go than a fixed retry budget; waves run to the deadline.
    create_environment(aws, "pr-8", NOW - timedelta(hours=1))
    real, failures = cloudsweep._DELETERS["ec2:vpc"], [0]

    def slow_vpc(session: Any, found: Any) -> None:
        if failures[0] < 15:
            failures[0] += 1
            raise _dependency_violation()
        real(session, found)

    monkeypatch.setitem(cloudsweep._DELETERS, "ec2:vpc", slow_vpc)
    monkeypatch.setattr(cloudsweep, "DEADLINE", 60.0, raising=False)
    report = cloudsweep.sweep(region=REGION, dry_run=False, now=NOW, pipeline_id="pr-8")
    assert report.errors == [] and failures[0] == 15
    assert inventory(aws)["vpcs"] == set()


def test_the_sweep_stops_at_its_deadline_and_reports_what_is_left(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_environment(aws, "pr-7", NOW - timedelta(hours=1))

    def never(session: Any, found: Any) -> None:
        raise _dependency_violation()

    monkeypatch.setitem(cloudsweep._DELETERS, "ec2:vpc", never)
    monkeypatch.setattr(cloudsweep, "DEADLINE", 0.3, raising=False)
    monkeypatch.setattr(cloudsweep, "RETRY_DELAYS", (0.05,))
    report = cloudsweep.sweep(region=REGION, dry_run=False, now=NOW, pipeline_id="pr-7")
    (error,) = report.errors
    assert "DependencyViolation" in error["error"] and error["resources"][0].endswith(
        error["resources"][0].rsplit("/", 1)[-1]
    )
    assert inventory(aws)["dbs"] == set()  # everything else went


def test_rds_in_a_state_where_waiting_does_not_help_is_an_error(aws: Any) -> None:
    # Defect 7: InvalidDBInstanceState was swallowed for every state, then waited on.
    from unittest import mock

    from botocore.exceptions import ClientError

    session = mock.Mock()
    rds = session.client.return_value
    rds.delete_db_instance.side_effect = ClientError(
        {"Error": {"Code": "InvalidDBInstanceState", "Message": "x"}},  # type: ignore[typeddict-item]
        "DeleteDBInstance",
    )
    found = cloudsweep._Found("arn:aws:rds:us-east-1:123456789012:db:envkit-pr-6-db", {})
    for state, outcome in (("failed", "error"), ("modifying", "retry"), ("deleting", "wait")):
        rds.describe_db_instances.return_value = {"DBInstances": [{"DBInstanceStatus": state}]}
        rds.get_waiter.reset_mock()
        if outcome == "wait":
            cloudsweep._rds_db(session, found)
            rds.get_waiter.assert_called_once_with("db_instance_deleted")
            continue
        with pytest.raises(Exception) as info:
            cloudsweep._rds_db(session, found)
        assert (cloudsweep._code(info.value) == "InvalidDBInstanceState") == (outcome == "retry")
        rds.get_waiter.assert_not_called()
