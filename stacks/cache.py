"""The Redis of an environment: one ElastiCache replication group (Redis OSS or Valkey) in the
private subnets, TLS in transit and an AUTH token, no snapshots unless persistence is asked for.

A node-based replication group rather than ElastiCache Serverless: a serverless cache has no
AUTH token (access control needs an ElastiCache user and user group, two more account-level
resources per pipeline, and its default user is open without them), while one small node with
``auth_token`` gives every pipeline its own password with the same URL shape as the local
provider's Redis; its price per hour is fixed by the node type (``cache.t4g.micro`` by default).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_aws as aws

from envkit.naming import AWS_NAME_LIMIT, aws_name

REDIS_PORT = 6379
ENGINES = ("redis", "valkey")
# ElastiCache names (replication group IDs, subnet groups): at most 40 characters.
CACHE_NAME_LIMIT = 40


@dataclass(frozen=True)
class CacheArgs:
    """What the cache needs; one small node by default."""

    pipeline_id: str
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    admitted_cidrs: pulumi.Input[list[str]]  # the VPC (its tasks) and the CI CIDR, if any
    engine: str = "redis"
    engine_version: str | None = None  # None: the engine's default version
    node_type: str = "cache.t4g.micro"
    persistence: bool = False
    auth_token: Any = None  # a secret Output/str; generated (and kept a secret) when None


# ElastiCache takes "major.minor" from Redis 7 on (and "6.x" for 6); a spec asks for a major.
_BARE_MAJOR = {("redis", "6"): "6.x", ("redis", "7"): "7.1", ("valkey", "7"): "7.2",
               ("valkey", "8"): "8.0"}  # fmt: skip


def engine_version(engine: str, version: str | None) -> str | None:
    """The version ElastiCache accepts for a spec's ``version`` (a bare major or major.minor)."""
    if not version:
        return None
    return _BARE_MAJOR.get((engine, version), version)


def generate_token() -> str:
    """An AUTH token ElastiCache accepts (16-128 printable characters, no '@', '"' or '/')."""
    return secrets.token_urlsafe(32)


def cache_name(pipeline_id: str, kind: str) -> str:
    """A name within ElastiCache's 40 characters (replication group, subnet group)."""
    return aws_name(pipeline_id, kind, limit=CACHE_NAME_LIMIT)


class Cache(pulumi.ComponentResource):
    """One ElastiCache replication group of a single node, its subnet and security groups."""

    host: pulumi.Output[str]
    port: pulumi.Output[int]
    token: pulumi.Output[str]
    url: pulumi.Output[str]
    replication_group_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: CacheArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("envkit:aws:Cache", name, None, opts)
        if args.engine not in ENGINES:
            raise ValueError(f"cache engine {args.engine!r}: use one of {', '.join(ENGINES)}")
        child = pulumi.ResourceOptions(parent=self)
        token = pulumi.Output.secret(
            args.auth_token if args.auth_token is not None else generate_token()
        )
        subnet_group = aws.elasticache.SubnetGroup(
            f"{name}-subnets",
            name=cache_name(args.pipeline_id, "redis"),
            description=f"envkit {args.pipeline_id}",
            subnet_ids=args.subnet_ids,
            tags={},
            opts=child,
        )
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            name=aws_name(args.pipeline_id, "redis", limit=AWS_NAME_LIMIT),
            description="envkit: Redis from inside the VPC (and the CI CIDR) only",
            vpc_id=args.vpc_id,
            ingress=[
                {
                    "protocol": "tcp",
                    "from_port": REDIS_PORT,
                    "to_port": REDIS_PORT,
                    "cidr_blocks": args.admitted_cidrs,
                    "description": "Redis",
                }
            ],
            revoke_rules_on_delete=True,
            tags={"Name": aws_name(args.pipeline_id, "redis", limit=AWS_NAME_LIMIT)},
            opts=child,
        )
        replication_group_id = cache_name(args.pipeline_id, "redis")
        extra: dict[str, Any] = {}
        version = engine_version(args.engine, args.engine_version)
        if version:
            extra["engine_version"] = version
        group_ = aws.elasticache.ReplicationGroup(
            f"{name}-group",
            replication_group_id=replication_group_id,
            description=f"envkit {args.pipeline_id}",
            engine=args.engine,
            node_type=args.node_type,
            num_cache_clusters=1,
            port=REDIS_PORT,
            subnet_group_name=subnet_group.name,
            security_group_ids=[group.id],
            transit_encryption_enabled=True,
            at_rest_encryption_enabled=True,
            auth_token=token,
            automatic_failover_enabled=False,
            multi_az_enabled=False,
            # Ephemeral: no snapshot outlives the environment; none is even taken without
            # persistence (one daily, kept a day, with it).
            snapshot_retention_limit=1 if args.persistence else 0,
            apply_immediately=True,
            tags={},
            opts=child,
            **extra,
        )
        self.host = group_.primary_endpoint_address
        self.port = group_.port.apply(lambda p: p or REDIS_PORT)
        self.token = token
        self.replication_group_id = group_.replication_group_id
        self.url = pulumi.Output.secret(
            pulumi.Output.all(self.host, self.port, token).apply(
                lambda v: f"rediss://:{quote(str(v[2]), safe='')}@{v[0]}:{v[1]}"
            )
        )
        self.register_outputs(
            {
                "host": self.host,
                "port": self.port,
                "url": self.url,
                "replication_group_id": self.replication_group_id,
            }
        )
