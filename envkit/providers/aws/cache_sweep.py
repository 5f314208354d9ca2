"""The ElastiCache part of the tag-based sweep: deleting a replication group and its subnet group.

The replication group goes first and is waited for: its subnet group, security group and subnets
stay in use (``CacheSubnetGroupInUse``, ``DependencyViolation``) until its nodes are gone. Its
member clusters carry the group's tags but have no delete of their own (they go with it).
"""

from __future__ import annotations

from typing import Any

# Seconds between describe calls, and how many, while a replication group is deleting (AWS
# takes several minutes); tests make them small.
WAIT_DELAY = 15
WAIT_ATTEMPTS = 80

# In the sweep's deletion order, before the security groups and subnets they use.
ORDER = ("elasticache:replicationgroup", "elasticache:subnetgroup")
SKIPPED = {"elasticache:cluster": "deleted with its replication group"}
GONE = {"ReplicationGroupNotFoundFault", "CacheSubnetGroupNotFoundFault"}
RETRYABLE = {"InvalidReplicationGroupState", "CacheSubnetGroupInUse"}
# Replication group states in which a delete is refused but waiting helps.
_LATER_STATES = {"creating", "modifying", "snapshotting"}


def client(session: Any) -> Any:
    """The ElastiCache client of ``session`` (one place, so tests can wrap it)."""
    return session.client("elasticache")


def name_of(arn: str) -> str:
    """``arn:aws:elasticache:<region>:<account>:<type>:<name>`` -> ``<name>``."""
    return arn.rsplit(":", 1)[-1]


def delete_replication_group(session: Any, arn: str) -> None:
    """Delete the group (no final snapshot), then wait until it is gone."""
    elasticache = client(session)
    group_id = name_of(arn)
    try:
        elasticache.delete_replication_group(ReplicationGroupId=group_id)
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code != "InvalidReplicationGroupState":
            raise
        found = elasticache.describe_replication_groups(ReplicationGroupId=group_id)
        groups = found.get("ReplicationGroups") or []
        if groups and groups[0].get("Status") in _LATER_STATES:
            raise  # retryable: a later wave deletes it once the operation ends
        # already "deleting": wait for it like for one this call deleted
    elasticache.get_waiter("replication_group_deleted").wait(
        ReplicationGroupId=group_id,
        WaiterConfig={"Delay": WAIT_DELAY, "MaxAttempts": WAIT_ATTEMPTS},
    )


def delete_subnet_group(session: Any, arn: str) -> None:
    """Delete the cache subnet group (refused while a replication group still uses it)."""
    client(session).delete_cache_subnet_group(CacheSubnetGroupName=name_of(arn))
