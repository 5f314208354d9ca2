"""The aws provider's cheap liveness checks (``gone``): one describe call per component, and an
unanswerable call counts as alive (a network hiccup must not make envkit recreate anything)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def _describe(
    service: str, region: str, name: str, call: Callable[[Any], list[Any]], missing: str
) -> list[Any] | None:
    """What ``call(client)`` found; ``[]`` when AWS says ``missing``; ``None`` when unknown."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session(region_name=region).client(  # type: ignore[call-overload]
        service, config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2})
    )
    try:
        return call(client)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == missing:
            return []
        log.warning("cannot check %s (%s); assuming it is alive", name, exc)
    except BotoCoreError as exc:
        log.warning("cannot check %s (%s); assuming it is alive", name, exc)
    return None


def rds_alive(identifier: str, region: str) -> bool:
    """Whether the RDS instance exists and is not deleting or failed."""
    found = _describe(
        "rds", region, identifier,
        lambda c: c.describe_db_instances(DBInstanceIdentifier=identifier)["DBInstances"],
        "DBInstanceNotFound",
    )  # fmt: skip
    if found is None:
        return True
    return bool(found) and found[0].get("DBInstanceStatus") not in ("deleting", "failed")


def cache_alive(group_id: str, region: str) -> bool:
    """Whether the ElastiCache replication group exists and is not deleting or failed."""
    found = _describe(
        "elasticache", region, group_id,
        lambda c: c.describe_replication_groups(ReplicationGroupId=group_id)["ReplicationGroups"],
        "ReplicationGroupNotFoundFault",
    )  # fmt: skip
    if found is None:
        return True
    return bool(found) and found[0].get("Status") not in ("deleting", "create-failed")
