"""aws-rds and aws-ecs probes against moto in server mode (boto3 via AWS_ENDPOINT_URL)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from envkit.health import HealthCheckFailedError, wait_until_healthy
from envkit.providers.aws.probes import EcsServicesProbe, RdsInstanceProbe

pytestmark = [pytest.mark.aws, pytest.mark.integration]

PASSWORD = "Moto-Pa55word-xyz"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server on a free local port; boto3 pointed at it with fake credentials."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield endpoint
    finally:
        server.stop()


def client(service: str) -> Any:
    import boto3

    return boto3.session.Session(region_name="us-east-1").client(service)


def create_rds(instance_id: str) -> None:
    client("rds").create_db_instance(
        DBInstanceIdentifier=instance_id,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="app",
        MasterUserPassword=PASSWORD,
        AllocatedStorage=20,
        DBName="app",
    )


def test_rds_available_passes(moto_endpoint: str) -> None:
    create_rds("envkit-pr-1")
    # moto's endpoint (*.rds.amazonaws.com) is not reachable from here: the RDS status decides.
    rds = RdsInstanceProbe("envkit-pr-1", user="app", password=PASSWORD, reach_timeout=0.5)
    report = wait_until_healthy([rds], timeout=30)
    assert report.ok and report.results[0].component == "database"
    assert PASSWORD not in repr(rds)


def test_rds_missing_times_out_naming_the_instance(moto_endpoint: str) -> None:
    rds = RdsInstanceProbe("envkit-missing", max_delay=0.05)
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([rds], timeout=1.0)
    (result,) = caught.value.report.failing
    assert result.status == "not ready" and "envkit-missing" in (result.error or "")
    assert "not found" in (result.error or "")


def test_rds_stopped_fails_at_once(moto_endpoint: str) -> None:
    create_rds("envkit-stopped")
    client("rds").stop_db_instance(DBInstanceIdentifier="envkit-stopped")
    started = time.monotonic()
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([RdsInstanceProbe("envkit-stopped")], timeout=60)
    assert time.monotonic() - started < 15
    assert caught.value.fatal and "stopped" in (caught.value.report.results[0].error or "")


def test_rds_unreachable_endpoint_is_retried_when_required(moto_endpoint: str) -> None:
    create_rds("envkit-private")
    rds = RdsInstanceProbe(
        "envkit-private",
        user="app",
        password=PASSWORD,
        require_reachable=True,
        reach_timeout=0.2,
        max_delay=0.05,
    )
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([rds], timeout=1.0, secrets=[PASSWORD])
    (result,) = caught.value.report.results
    assert result.status == "not ready" and "not reachable" in (result.error or "")
    assert PASSWORD not in str(caught.value)


def make_ecs_service(cluster: str, name: str, desired: int) -> None:
    ecs = client("ecs")
    ecs.register_task_definition(
        family=name,
        containerDefinitions=[{"name": name, "image": "nginx", "memory": 64}],
    )
    ecs.create_service(cluster=cluster, serviceName=name, taskDefinition=name, desiredCount=desired)


def test_ecs_stable_services_pass(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "2")  # moto: services start with 2 running
    client("ecs").create_cluster(clusterName="envkit-pr-2")
    make_ecs_service("envkit-pr-2", "api", 2)
    make_ecs_service("envkit-pr-2", "worker", 2)
    named = EcsServicesProbe("envkit-pr-2", services=["api"])
    every = EcsServicesProbe("envkit-pr-2", name="aws-ecs all")  # every service of the cluster
    report = wait_until_healthy([named, every], timeout=30)
    assert report.ok and {r.component for r in report.results} == {"cluster"}


def test_ecs_unstable_service_times_out_naming_it(moto_endpoint: str) -> None:
    client("ecs").create_cluster(clusterName="envkit-pr-3")
    make_ecs_service("envkit-pr-3", "api", 2)  # moto default: 0 running, 2 pending
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([EcsServicesProbe("envkit-pr-3", max_delay=0.05)], timeout=1.0)
    (result,) = caught.value.report.failing
    assert result.component == "cluster" and "api running 0/2" in (result.error or "")


def test_ecs_missing_cluster_and_service_are_not_ready(moto_endpoint: str) -> None:
    client("ecs").create_cluster(clusterName="envkit-pr-4")
    probes = [
        EcsServicesProbe("envkit-nowhere", max_delay=0.05, name="no cluster"),
        EcsServicesProbe("envkit-pr-4", services=["ghost"], max_delay=0.05, name="no service"),
    ]
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy(probes, timeout=1.0)
    errors = {r.name: r.error or "" for r in caught.value.report.results}
    assert all(not r.fatal for r in caught.value.report.results)
    assert "envkit-nowhere" in errors["no cluster"]
    assert "ghost" in errors["no service"]


def test_ecs_inactive_cluster_fails_at_once(moto_endpoint: str) -> None:
    ecs = client("ecs")
    ecs.create_cluster(clusterName="envkit-gone")
    ecs.delete_cluster(cluster="envkit-gone")
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([EcsServicesProbe("envkit-gone")], timeout=60)
    # moto either reports it INACTIVE (fatal) or forgets it (not found: retried to the deadline
    # would take 60 s, so insist on the fatal path moto 5 takes).
    assert caught.value.fatal, caught.value.report.as_dict()


def test_bad_credentials_fail_at_once(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(HealthCheckFailedError) as caught:
        wait_until_healthy([RdsInstanceProbe("envkit-x")], timeout=60)
    assert caught.value.fatal and "credentials" in (caught.value.report.results[0].error or "")
