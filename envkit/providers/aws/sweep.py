"""The tag-based leak sweep of the aws provider: boto3 only, no Pulumi state, no Pulumi CLI.

Everything envkit creates in AWS carries ``envkit:pipeline-id`` and ``envkit:expires-at``. The
sweep finds those resources through the Resource Groups Tagging API (plus per-service listings
for the types that API does not return: DB subnet groups, IAM roles), groups them by pipeline,
and deletes the pipelines whose latest ``expires-at`` has passed — in dependency order, in
waves (as aws-nuke does): every wave tries each remaining resource once, and waves repeat until
nothing is left or :data:`DEADLINE` passes, since ENIs of RDS and Fargate and Cloud Map
instances take many minutes to go. Tagged types envkit has no deleter for (``ecs:task``: tasks
stop with their service) are reported as ``skipped``, not as failures. Untagged resources are
never listed, so never touched.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from envkit.errors import TeardownError
from envkit.naming import TAG_EXPIRES_AT, TAG_PIPELINE_ID, parse_iso
from envkit.providers.aws import cache_sweep

log = logging.getLogger(__name__)

# Seconds between waves while AWS says a dependency still exists (the last repeats until the
# deadline); tests set them to zeros.
RETRY_DELAYS: tuple[float, ...] = (2, 4, 8, 15, 30, 60)
# How long one sweep keeps deleting: an ENI of a deleted Fargate task or RDS instance can take
# 20 minutes and more to be released.
DEADLINE = 45 * 60.0
# Tagged types that go with something else and have no delete call of their own.
_SKIPPED = {
    "ecs:task": "stops when its ECS service is deleted",
    "ec2:network-interface": "released by the service that created it",
    **cache_sweep.SKIPPED,
}
# RDS states in which a delete is refused but waiting helps (it is deleted, or deletable, later).
_RDS_WAIT_STATES = {"deleting"}
_RDS_LATER_STATES = {
    "creating", "modifying", "backing-up", "rebooting", "starting", "stopping", "upgrading",
    "configuring-enhanced-monitoring", "maintenance", "renaming", "resetting-master-credentials",
    "storage-optimization", "configuring-log-exports",
}  # fmt: skip
_RETRYABLE = {
    "DependencyViolation",
    "InvalidDBInstanceState",  # only raised on for the states where waiting helps
    "InvalidDBSubnetGroupStateFault",
    "InvalidDBSubnetGroupState",
    "ClusterContainsServicesException",
    "ClusterContainsTasksException",
    "ResourceInUse",
    "ResourceInUseException",
    "DeleteConflict",
    "ResourceInUseFault",
    *cache_sweep.RETRYABLE,
}
_GONE = {
    "InvalidVpcID.NotFound",
    "InvalidSubnetID.NotFound",
    "InvalidGroup.NotFound",
    "InvalidRouteTableID.NotFound",
    "InvalidInternetGatewayID.NotFound",
    "DBInstanceNotFound",
    "DBInstanceNotFoundFault",
    "DBSubnetGroupNotFoundFault",
    "ClusterNotFoundException",
    "ServiceNotFoundException",
    "ServiceNotActiveException",
    "ResourceNotFoundException",
    "NoSuchEntity",
    "NamespaceNotFound",
    "ServiceNotFound",
    "InvalidNatGatewayID.NotFound",
    "InvalidAllocationID.NotFound",
    "InvalidVpcEndpointId.NotFound",
    *cache_sweep.GONE,
}
# Deletion order: dependants first.
_ORDER = (
    "ecs:service",
    "ecs:task-definition",
    "ecs:cluster",
    "servicediscovery:service",
    "servicediscovery:namespace",
    "rds:db",
    "rds:subgrp",
    *cache_sweep.ORDER,
    "secretsmanager:secret",
    "logs:log-group",
    "iam:role",
    "ec2:vpc-endpoint",
    "ec2:natgateway",
    "ec2:elastic-ip",
    "ec2:security-group",
    "ec2:route-table",
    "ec2:internet-gateway",
    "ec2:subnet",
    "ec2:vpc",
)


@dataclass
class SweepReport:
    """What a sweep did: ``reaped``, ``kept``, ``errors`` and ``skipped``, one dict per pipeline
    ID each (``pipeline_id``, ``resources`` (ARNs), ``expires_at``; ``error`` in ``errors``,
    ``reason`` in ``skipped``)."""

    reaped: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[dict[str, Any]]]:
        """The ``reap --json`` shape."""
        shape = {"reaped": self.reaped, "kept": self.kept, "errors": self.errors}
        return {**shape, "skipped": self.skipped} if self.skipped else shape


@dataclass
class _Found:
    arn: str
    tags: dict[str, str]

    @property
    def kind(self) -> str:
        """``service:type`` from the ARN (``ec2:vpc``, ``rds:db``, ``ecs:cluster`` …)."""
        parts = self.arn.split(":", 6)
        service, rest = parts[2], parts[5]
        if service == "rds":
            return f"rds:{rest}"
        if service == "logs":
            return "logs:log-group"
        return f"{service}:{rest.split('/', 1)[0]}"


def sweep(
    *,
    region: str,
    dry_run: bool,
    now: datetime,
    older_than: timedelta | None = None,
    pipeline_id: str | None = None,
) -> SweepReport:
    """Delete the AWS resources of expired envkit pipelines, found by tag alone.

    A pipeline is expired when the latest ``envkit:expires-at`` among its resources is at or
    before ``now - older_than``; with ``pipeline_id`` only that pipeline is considered, and all
    of it is deleted whatever its expiry (the confirmation after ``down``). ``dry_run`` lists
    what would be deleted (as ``reaped``, each entry with ``"dry_run": True``) and deletes
    nothing. Resources without an ``envkit:pipeline-id`` tag are never looked at; a pipeline
    with a missing or unreadable expiry is kept. Credentials and endpoint come from the usual
    boto3 chain (``AWS_ENDPOINT_URL`` included). Failing to list raises ``TeardownError``;
    failing to delete a resource is reported in ``errors`` and the sweep goes on.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = boto3.session.Session(region_name=region)
    by_pipeline: dict[str, list[_Found]] = {}
    try:
        discovered = _live(session, list(_discover(session, pipeline_id)))
    except (BotoCoreError, ClientError) as exc:
        raise TeardownError(
            f"Listing envkit-tagged resources in {region} failed: {_describe(exc)}",
            hint="Check the AWS credentials and region (envkit doctor); the sweep needs "
            "tag:GetResources and the describe/delete permissions of each service.",
        ) from None
    for found in discovered:
        owner = found.tags.get(TAG_PIPELINE_ID)
        if owner and (pipeline_id is None or owner == pipeline_id):
            by_pipeline.setdefault(owner, []).append(found)
    cutoff = now - (older_than or timedelta(0))
    report = SweepReport()
    for pid, resources in sorted(by_pipeline.items()):
        expires = _latest_expiry(resources)
        entry: dict[str, Any] = {
            "pipeline_id": pid,
            "resources": sorted(r.arn for r in resources),
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ") if expires else None,
        }
        if pipeline_id is None and (expires is None or expires > cutoff):
            report.kept.append(entry)
            continue
        if dry_run:
            report.reaped.append({**entry, "dry_run": True})
            continue
        skipped = {r.arn: _SKIPPED[r.kind] for r in resources if r.kind in _SKIPPED}
        if skipped:
            report.skipped.append(
                {**entry, "resources": sorted(skipped), "reason": "; ".join(set(skipped.values()))}
            )
        failures = _delete_all(session, [r for r in resources if r.arn not in skipped])
        if failures:
            report.errors.append(
                {**entry, "resources": sorted(failures), "error": "; ".join(failures.values())}
            )
        else:
            report.reaped.append(entry)
    return report


def _latest_expiry(resources: list[_Found]) -> datetime | None:
    moments = []
    for found in resources:
        raw = found.tags.get(TAG_EXPIRES_AT)
        if raw is None:
            continue
        try:
            moments.append(parse_iso(raw))
        except ValueError:
            return None  # unreadable: never guess in the deleting direction
    return max(moments) if moments else None


def _discover(session: Any, pipeline_id: str | None) -> Iterator[_Found]:
    """Every resource tagged ``envkit:pipeline-id`` (of ``pipeline_id`` when given)."""
    tag_filter: dict[str, Any] = {"Key": TAG_PIPELINE_ID}
    if pipeline_id is not None:
        tag_filter["Values"] = [pipeline_id]
    seen: set[str] = set()
    tagging = session.client("resourcegroupstaggingapi")
    for page in tagging.get_paginator("get_resources").paginate(TagFilters=[tag_filter]):
        for item in page.get("ResourceTagMappingList", []):
            arn = item["ResourceARN"]
            if arn not in seen:
                seen.add(arn)
                yield _Found(arn, {t["Key"]: t["Value"] for t in item.get("Tags", [])})
    # The tagging API does not return DB subnet groups everywhere, nor IAM (a global service).
    for found in _subnet_groups(session):
        if found.arn not in seen and _matches(found, pipeline_id):
            seen.add(found.arn)
            yield found
    for found in _roles(session):
        if found.arn not in seen and _matches(found, pipeline_id):
            seen.add(found.arn)
            yield found


def _live(session: Any, resources: list[_Found]) -> list[_Found]:
    """Drop ECS resources already deleted: AWS keeps INACTIVE clusters, services and task
    definitions describable (and tagged) for a while after their deletion."""
    ecs_kinds = {"ecs:cluster", "ecs:service", "ecs:task-definition"}
    if not any(r.kind in ecs_kinds for r in resources):
        return resources
    ecs = session.client("ecs")
    gone: set[str] = set()
    for found in resources:
        try:
            if found.kind == "ecs:cluster":
                clusters = ecs.describe_clusters(clusters=[found.arn])["clusters"]
                status = clusters[0]["status"] if clusters else "INACTIVE"
            elif found.kind == "ecs:service":
                cluster = found.arn.split(":", 5)[5].split("/")[1]
                services = ecs.describe_services(cluster=cluster, services=[found.arn])["services"]
                status = services[0]["status"] if services else "INACTIVE"
            elif found.kind == "ecs:task-definition":
                definition = ecs.describe_task_definition(taskDefinition=found.arn)
                status = definition["taskDefinition"]["status"]
            else:
                continue
        except Exception as exc:
            if _code(exc) in _GONE or _code(exc) == "ClientException":
                gone.add(found.arn)
            continue
        if status in ("INACTIVE", "DRAINING", "DELETE_IN_PROGRESS"):
            gone.add(found.arn)
    return [r for r in resources if r.arn not in gone]


def _matches(found: _Found, pipeline_id: str | None) -> bool:
    value = found.tags.get(TAG_PIPELINE_ID)
    return value is not None and (pipeline_id is None or value == pipeline_id)


def _subnet_groups(session: Any) -> Iterator[_Found]:
    rds = session.client("rds")
    for page in rds.get_paginator("describe_db_subnet_groups").paginate():
        for group in page.get("DBSubnetGroups", []):
            arn = group["DBSubnetGroupArn"]
            tags = rds.list_tags_for_resource(ResourceName=arn).get("TagList", [])
            yield _Found(arn, {t["Key"]: t["Value"] for t in tags})


def _roles(session: Any) -> Iterator[_Found]:
    iam = session.client("iam")
    for page in iam.get_paginator("list_roles").paginate(PathPrefix="/envkit/"):
        for role in page.get("Roles", []):
            tags = iam.list_role_tags(RoleName=role["RoleName"]).get("Tags", [])
            yield _Found(role["Arn"], {t["Key"]: t["Value"] for t in tags})


# -- deletion -------------------------------------------------------------------------------
def _delete_all(
    session: Any, resources: list[_Found], deadline: float | None = None
) -> dict[str, str]:
    """Delete ``resources`` in dependency order, in waves until none is left, only errors
    other than "still in use" remain, or the deadline passes; return ARN -> error for the rest."""
    rank = {kind: i for i, kind in enumerate(_ORDER)}
    remaining = sorted(resources, key=lambda r: (rank.get(r.kind, len(_ORDER)), r.arn))
    failures: dict[str, str] = {}
    for found in [r for r in remaining if r.kind not in _DELETERS]:
        failures[found.arn] = f"{found.arn}: envkit does not know how to delete {found.kind}"
    remaining = [r for r in remaining if r.kind in _DELETERS]
    stop = time.monotonic() + (DEADLINE if deadline is None else deadline)
    wave = 0
    while remaining:
        waiting: list[_Found] = []
        for found in remaining:
            try:
                _once(functools.partial(_DELETERS[found.kind], session, found))
                log.info("deleted %s", found.arn)
                failures.pop(found.arn, None)
            except Exception as exc:  # report it and go on: other resources may still go
                failures[found.arn] = f"{found.arn}: {_describe(exc)}"
                if _code(exc) in _RETRYABLE:
                    waiting.append(found)
        if not waiting or time.monotonic() >= stop:
            break
        delay = RETRY_DELAYS[min(wave, len(RETRY_DELAYS) - 1)] if RETRY_DELAYS else 0
        log.info("%d resource(s) still in use; next wave in %ss", len(waiting), delay)
        time.sleep(max(0.0, min(delay, stop - time.monotonic())))
        remaining, wave = waiting, wave + 1
    return failures


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _once(action: Callable[[], None]) -> None:
    """Run ``action``, treating "already gone" as success."""
    try:
        action()
    except Exception as exc:
        if _code(exc) not in _GONE:
            raise


def _last(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def _ecs_service(session: Any, found: _Found) -> None:
    # arn:aws:ecs:region:acct:service/<cluster>/<service>
    _, cluster, name = found.arn.split(":", 5)[5].split("/")
    session.client("ecs").delete_service(cluster=cluster, service=name, force=True)


def _ecs_task_definition(session: Any, found: _Found) -> None:
    ecs = session.client("ecs")
    ecs.deregister_task_definition(taskDefinition=found.arn)
    if hasattr(ecs, "delete_task_definitions"):
        try:
            ecs.delete_task_definitions(taskDefinitions=[found.arn])
        except Exception as exc:  # older endpoints (and moto) lack it: deregistered is enough
            log.debug("delete_task_definitions: %s", exc)


def _ecs_cluster(session: Any, found: _Found) -> None:
    session.client("ecs").delete_cluster(cluster=found.arn)


def _sd_service(session: Any, found: _Found) -> None:
    session.client("servicediscovery").delete_service(Id=_last(found.arn))


def _sd_namespace(session: Any, found: _Found) -> None:
    session.client("servicediscovery").delete_namespace(Id=_last(found.arn))


def _rds_db(session: Any, found: _Found) -> None:
    rds = session.client("rds")
    identifier = found.arn.rsplit(":", 1)[-1]
    try:
        rds.delete_db_instance(
            DBInstanceIdentifier=identifier, SkipFinalSnapshot=True, DeleteAutomatedBackups=True
        )
    except Exception as exc:
        if _code(exc) != "InvalidDBInstanceState":
            raise
        found_ = rds.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"]
        state = found_[0].get("DBInstanceStatus", "") if found_ else "deleting"
        if state in _RDS_LATER_STATES:
            raise  # retryable: a later wave deletes it once the operation ends
        if state not in _RDS_WAIT_STATES:
            raise TeardownError(
                f"RDS instance {identifier} is {state!r}: envkit cannot delete it in that state"
            ) from None
    # The subnet group and security group stay "in use" until the instance is gone.
    rds.get_waiter("db_instance_deleted").wait(
        DBInstanceIdentifier=identifier, WaiterConfig={"Delay": 15, "MaxAttempts": 80}
    )


def _rds_subnet_group(session: Any, found: _Found) -> None:
    session.client("rds").delete_db_subnet_group(DBSubnetGroupName=found.arn.rsplit(":", 1)[-1])


def _log_group(session: Any, found: _Found) -> None:
    name = found.arn.split(":log-group:", 1)[1].removesuffix(":*")
    session.client("logs").delete_log_group(logGroupName=name)


def _iam_role(session: Any, found: _Found) -> None:
    iam = session.client("iam")
    name = _last(found.arn)
    for policy in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
        iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
    for policy in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    iam.delete_role(RoleName=name)


def _security_group(session: Any, found: _Found) -> None:
    session.client("ec2").delete_security_group(GroupId=_last(found.arn))


def _route_table(session: Any, found: _Found) -> None:
    ec2 = session.client("ec2")
    table_id = _last(found.arn)
    tables = ec2.describe_route_tables(RouteTableIds=[table_id])["RouteTables"]
    for assoc in tables[0].get("Associations", []) if tables else []:
        if assoc.get("Main"):
            return  # the VPC's main table goes with the VPC
        ec2.disassociate_route_table(AssociationId=assoc["RouteTableAssociationId"])
    ec2.delete_route_table(RouteTableId=table_id)


def _internet_gateway(session: Any, found: _Found) -> None:
    ec2 = session.client("ec2")
    gateway_id = _last(found.arn)
    gateways = ec2.describe_internet_gateways(InternetGatewayIds=[gateway_id])["InternetGateways"]
    for attachment in gateways[0].get("Attachments", []) if gateways else []:
        ec2.detach_internet_gateway(InternetGatewayId=gateway_id, VpcId=attachment["VpcId"])
    ec2.delete_internet_gateway(InternetGatewayId=gateway_id)


def _secret(session: Any, found: _Found) -> None:
    session.client("secretsmanager").delete_secret(
        SecretId=found.arn, ForceDeleteWithoutRecovery=True
    )


def _vpc_endpoint(session: Any, found: _Found) -> None:
    session.client("ec2").delete_vpc_endpoints(VpcEndpointIds=[_last(found.arn)])


def _nat_gateway(session: Any, found: _Found) -> None:
    ec2 = session.client("ec2")
    gateway_id = _last(found.arn)
    ec2.delete_nat_gateway(NatGatewayId=gateway_id)
    # Its elastic IP and subnet stay in use until it is gone.
    ec2.get_waiter("nat_gateway_deleted").wait(
        NatGatewayIds=[gateway_id], WaiterConfig={"Delay": 10, "MaxAttempts": 60}
    )


def _elastic_ip(session: Any, found: _Found) -> None:
    session.client("ec2").release_address(AllocationId=_last(found.arn))


def _subnet(session: Any, found: _Found) -> None:
    session.client("ec2").delete_subnet(SubnetId=_last(found.arn))


def _vpc(session: Any, found: _Found) -> None:
    session.client("ec2").delete_vpc(VpcId=_last(found.arn))


_DELETERS: dict[str, Callable[[Any, _Found], None]] = {
    "ecs:service": _ecs_service,
    "ecs:task-definition": _ecs_task_definition,
    "ecs:cluster": _ecs_cluster,
    "servicediscovery:service": _sd_service,
    "servicediscovery:namespace": _sd_namespace,
    "rds:db": _rds_db,
    "rds:subgrp": _rds_subnet_group,
    "elasticache:replicationgroup": lambda s, f: cache_sweep.delete_replication_group(s, f.arn),
    "elasticache:subnetgroup": lambda s, f: cache_sweep.delete_subnet_group(s, f.arn),
    "secretsmanager:secret": _secret,
    "logs:log-group": _log_group,
    "ec2:vpc-endpoint": _vpc_endpoint,
    "ec2:natgateway": _nat_gateway,
    "ec2:elastic-ip": _elastic_ip,
    "iam:role": _iam_role,
    "ec2:security-group": _security_group,
    "ec2:route-table": _route_table,
    "ec2:internet-gateway": _internet_gateway,
    "ec2:subnet": _subnet,
    "ec2:vpc": _vpc,
}
