"""The aws provider's readiness probes (boto3): RDS instance available, ElastiCache replication
group available, ECS services stable.

They plug into :func:`envkit.health.wait_until_healthy` like any probe; boto3 is imported
inside the check, and nothing on the local path imports this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import quote

from envkit.health.engine import ProbeError, TransientError, describe
from envkit.health.network import tcp_refusal
from envkit.health.postgres import PostgresProbe

log = logging.getLogger(__name__)

# RDS instance statuses that cannot turn into "available" by waiting.
RDS_FATAL_STATUSES = frozenset(
    {
        "failed",
        "deleting",
        "stopped",
        "stopping",
        "storage-full",
        "restore-error",
        "incompatible-network",
        "incompatible-option-group",
        "incompatible-parameters",
        "incompatible-restore",
        "inaccessible-encryption-credentials",
        "inaccessible-encryption-credentials-recoverable",
        "insufficient-capacity",
    }
)
_AWS_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def _aws_call(what: str, call: Callable[[], Any], not_found: Collection[str] = ()) -> Any:
    """Run one boto3 call, turning network trouble, throttling and (given) "not found yet"
    codes into ``TransientError``; other API errors (credentials, access) are fatal."""
    import botocore.exceptions as bx

    try:
        return call()
    except bx.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        text = str(exc.response.get("Error", {}).get("Message", "")) or code
        if code in not_found:
            # Just-created resources can take a moment to show up in describe calls.
            raise TransientError(f"{what}: not found (yet): {text}") from None
        if code in _AWS_TRANSIENT_CODES:
            raise TransientError(f"{what}: {code}: {text}") from None
        raise ProbeError(f"{what}: {code}: {text}") from None
    except (bx.EndpointConnectionError, bx.ConnectionError, bx.HTTPClientError) as exc:
        raise TransientError(f"{what}: {describe(exc)}") from None
    except bx.NoCredentialsError:
        raise ProbeError(
            f"{what}: no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID)"
        ) from None


def _boto_client(service: str, region: str | None) -> Any:
    import boto3

    # A session per probe: boto3's default session is not safe to share across threads.
    return boto3.session.Session(region_name=region).client(service)  # type: ignore[call-overload]


def judge_rds_status(instance_id: str, status: str) -> None:
    """Return when ``status`` is ``available``; raise ``TransientError`` or ``ProbeError``."""
    if status == "available":
        return
    if status in RDS_FATAL_STATUSES:
        raise ProbeError(f"RDS instance {instance_id} is {status!r}; it will not become available")
    raise TransientError(f"RDS instance {instance_id} is {status!r}")


@dataclass
class RdsInstanceProbe:
    """aws-rds: the RDS instance is ``available`` (boto3), then a postgres probe on its endpoint.

    The postgres probe runs when ``user`` is given and the endpoint is reachable from here; a
    CI runner outside the VPC often cannot reach it, so an unreachable endpoint passes on the
    RDS status alone unless ``require_reachable``. Polls every few seconds at most (AWS rate
    limits). ``client`` may be an existing boto3 RDS client; else one is made (``region``,
    ``AWS_ENDPOINT_URL`` and the usual credential chain apply).
    """

    instance_id: str
    component: str = "database"
    name: str = "aws-rds"
    region: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    dbname: str | None = None
    require_reachable: bool = False
    reach_timeout: float = 2.0
    max_delay: float = 5.0
    client: Any = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """``describe_db_instances``, then the database itself when reachable."""
        if self.client is None:
            self.client = _boto_client("rds", self.region)
        what = f"RDS instance {self.instance_id}"
        answer = _aws_call(
            what,
            lambda: self.client.describe_db_instances(DBInstanceIdentifier=self.instance_id),
            not_found=("DBInstanceNotFound", "DBInstanceNotFoundFault"),
        )
        instances = answer.get("DBInstances") or []
        if not instances:
            raise TransientError(f"{what}: not found (yet)")
        instance = instances[0]
        judge_rds_status(self.instance_id, str(instance.get("DBInstanceStatus", "")))
        endpoint = instance.get("Endpoint") or {}
        host, port = endpoint.get("Address"), int(endpoint.get("Port") or 5432)
        if not host:
            raise TransientError(f"{what} is available but has no endpoint yet")
        if self.user is None:
            return
        if not reachable(what, host, port, self.reach_timeout, required=self.require_reachable):
            return
        dbname = self.dbname or str(instance.get("DBName") or "postgres")
        conninfo = (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password or '', safe='')}"
            f"@{host}:{port}/{quote(dbname, safe='')}"
        )
        PostgresProbe(conninfo, component=self.component, client="psycopg").check()


def reachable(what: str, host: str, port: int, timeout: float, *, required: bool) -> bool:
    """Whether the endpoint of an available ``what`` answers from here; when it does not, a
    ``TransientError`` if ``required``, else ``False`` (a runner outside the VPC often cannot
    reach it: the AWS status alone then says it is ready)."""
    refused = tcp_refusal(host, port, timeout)
    if refused is None:
        return True
    if required:
        raise TransientError(f"{what} endpoint not reachable: {refused}")
    log.info("%s is available; its endpoint is not reachable from here (%s)", what, refused)
    return False


# ElastiCache replication group statuses that cannot turn into "available" by waiting.
CACHE_FATAL_STATUSES = frozenset({"deleting", "create-failed"})


def judge_cache_status(group_id: str, status: str) -> None:
    """Return when ``status`` is ``available``; raise ``TransientError`` or ``ProbeError``."""
    if status == "available":
        return
    if status in CACHE_FATAL_STATUSES:
        raise ProbeError(
            f"ElastiCache replication group {group_id} is {status!r}; it will not become available"
        )
    raise TransientError(f"ElastiCache replication group {group_id} is {status!r}")


@dataclass
class ElastiCacheProbe:
    """aws-elasticache: the Redis replication group is ``available`` and has its primary
    endpoint (boto3), then ``AUTH`` + ``PING`` over TLS when ``url`` is given and the endpoint
    is reachable from here (like :class:`RdsInstanceProbe`: a runner outside the VPC often
    cannot reach it). Polls every few seconds at most (AWS rate limits); ``client`` may be an
    existing boto3 ElastiCache client, else one is made (``region``, ``AWS_ENDPOINT_URL``)."""

    replication_group_id: str
    component: str = "redis"
    name: str = "aws-elasticache"
    region: str | None = None
    url: str | None = field(default=None, repr=False)  # REDIS_URL: holds the AUTH token
    require_reachable: bool = False
    reach_timeout: float = 2.0
    max_delay: float = 5.0
    client: Any = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """``describe_replication_groups`` for this group."""
        if self.client is None:
            self.client = _boto_client("elasticache", self.region)
        client = self.client
        what = f"ElastiCache replication group {self.replication_group_id}"
        answer = _aws_call(
            what,
            lambda: client.describe_replication_groups(
                ReplicationGroupId=self.replication_group_id
            ),
            not_found=("ReplicationGroupNotFoundFault",),
        )
        groups = answer.get("ReplicationGroups") or []
        if not groups:
            raise TransientError(f"{what}: not found (yet)")
        judge_cache_status(self.replication_group_id, str(groups[0].get("Status", "")))
        endpoints = [g.get("PrimaryEndpoint") or {} for g in groups[0].get("NodeGroups") or []]
        primary = next((e for e in endpoints if e.get("Address")), None)
        if primary is None:
            raise TransientError(f"{what} is available but has no primary endpoint yet")
        if self.url is None:
            return
        from envkit.health.keyvalue import RedisProbe

        host, port = str(primary["Address"]), int(primary.get("Port") or 6379)
        if not reachable(what, host, port, self.reach_timeout, required=self.require_reachable):
            return
        RedisProbe(self.url, component=self.component, timeout=self.reach_timeout).check()


# ECS service statuses and rollout states that waiting will not fix.
_ECS_FATAL_SERVICE_STATUSES = frozenset({"DRAINING", "INACTIVE"})
_ECS_FATAL_CLUSTER_STATUSES = frozenset({"INACTIVE", "DEPROVISIONING", "FAILED"})


def judge_ecs(cluster: Mapping[str, Any], services: Sequence[Mapping[str, Any]]) -> None:
    """Return when the cluster is ACTIVE and every service stable (running == desired, one
    deployment, nothing pending); raise ``TransientError`` or ``ProbeError`` naming what is not.
    The same rule as boto3's ``services_stable`` waiter, plus fatal states it would wait out."""
    name = cluster.get("clusterName", "?")
    status = str(cluster.get("status", ""))
    if status in _ECS_FATAL_CLUSTER_STATUSES:
        raise ProbeError(f"ECS cluster {name} is {status}")
    if status != "ACTIVE":
        raise TransientError(f"ECS cluster {name} is {status or 'unknown'}")
    waiting = []
    for service in services:
        service_name = service.get("serviceName", "?")
        service_status = str(service.get("status", ""))
        if service_status in _ECS_FATAL_SERVICE_STATUSES:
            raise ProbeError(f"ECS service {service_name} is {service_status}")
        deployments = service.get("deployments") or []
        if any(d.get("rolloutState") == "FAILED" for d in deployments):
            raise ProbeError(f"ECS service {service_name}: its deployment failed")
        running, desired = service.get("runningCount", 0), service.get("desiredCount", 0)
        pending = service.get("pendingCount", 0)
        if running != desired or pending:
            waiting.append(f"{service_name} running {running}/{desired}, pending {pending}")
        elif len(deployments) > 1:
            waiting.append(f"{service_name} has {len(deployments)} deployments in progress")
    if waiting:
        raise TransientError("ECS services not stable: " + "; ".join(waiting))


@dataclass
class EcsServicesProbe:
    """aws-ecs: the ECS cluster is ``ACTIVE`` and its services are stable (boto3).

    ``services`` names the services to wait for; empty means every service of the cluster.
    Polls every few seconds at most (AWS rate limits). ``client`` may be an existing boto3 ECS
    client; else one is made (``region``, ``AWS_ENDPOINT_URL`` and credentials apply).
    """

    cluster: str
    services: Sequence[str] = ()
    component: str = "cluster"
    name: str = "aws-ecs"
    region: str | None = None
    max_delay: float = 5.0
    client: Any = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """``describe_clusters`` + ``describe_services`` (10 at a time, the API's limit)."""
        if self.client is None:
            self.client = _boto_client("ecs", self.region)
        client = self.client
        what = f"ECS cluster {self.cluster}"
        answer = _aws_call(what, lambda: client.describe_clusters(clusters=[self.cluster]))
        clusters = answer.get("clusters") or []
        if not clusters:
            raise TransientError(f"{what}: not found (yet)")
        names = list(self.services)
        if not names and clusters[0].get("status") == "ACTIVE":
            pages = client.get_paginator("list_services").paginate(cluster=self.cluster)
            names = _aws_call(
                what, lambda: [arn for page in pages for arn in page.get("serviceArns", [])]
            )
        described: list[Mapping[str, Any]] = []
        for start in range(0, len(names), 10):
            batch = names[start : start + 10]
            answer = _aws_call(
                what, partial(client.describe_services, cluster=self.cluster, services=batch)
            )
            missing = [f.get("arn", "?") for f in answer.get("failures") or []]
            if missing:
                raise TransientError(f"{what}: service(s) not found (yet): {', '.join(missing)}")
            described.extend(answer.get("services") or [])
        judge_ecs(clusters[0], described)


__all__ = [
    "CACHE_FATAL_STATUSES",
    "RDS_FATAL_STATUSES",
    "EcsServicesProbe",
    "ElastiCacheProbe",
    "RdsInstanceProbe",
    "judge_cache_status",
    "judge_ecs",
    "judge_rds_status",
]
