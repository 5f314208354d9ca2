"""Typed configuration of envkit's Pulumi programs (no Pulumi import: the spec maps onto it)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from envkit.naming import Tags, parse_iso
from envkit.spec_model import output_key

ROLE_PIPELINE = "pipeline"
ROLE_BASE = "base"
_SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
EGRESS_MODES = ("public", "nat", "endpoints")


def fargate_memory_choices(cpu: int) -> tuple[int, ...]:
    """The memory sizes (MiB) Fargate accepts with ``cpu`` units; empty for an unknown cpu."""
    gib = 1024
    table: dict[int, tuple[int, ...]] = {
        256: (512, 1024, 2048),
        512: tuple(range(1 * gib, 4 * gib + 1, gib)),
        1024: tuple(range(2 * gib, 8 * gib + 1, gib)),
        2048: tuple(range(4 * gib, 16 * gib + 1, gib)),
        4096: tuple(range(8 * gib, 30 * gib + 1, gib)),
        8192: tuple(range(16 * gib, 60 * gib + 1, 4 * gib)),
        16384: tuple(range(32 * gib, 120 * gib + 1, 8 * gib)),
    }
    return table.get(cpu, ())


@dataclass(frozen=True)
class ServiceArgs:
    """One container service run on ECS Fargate in the environment's subnets.

    ``env`` values may be plain strings or Pulumi Outputs (e.g. the database URL); they end up
    in the task definition in clear, so pass real secrets through ``secrets`` instead: a map of
    variable name to a Secrets Manager or SSM parameter ARN, resolved by ECS at task start.
    The service is reachable inside the VPC at ``http://<name>.<namespace>:<port>``.
    """

    name: str
    image: str
    port: int
    cpu: int = 256
    memory: int = 512
    env: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, Any] = field(default_factory=dict)
    desired_count: int = 1

    def __post_init__(self) -> None:
        if not _SERVICE_NAME.fullmatch(self.name):
            raise ValueError(
                f"service name {self.name!r}: use 1-32 lower-case letters, digits and '-', "
                "starting with a letter"
            )
        choices = fargate_memory_choices(self.cpu)
        if self.memory not in choices:
            raise ValueError(
                f"service {self.name!r}: Fargate has no size with cpu={self.cpu} and "
                f"memory={self.memory}; "
                + (
                    f"with cpu={self.cpu} memory is one of {', '.join(map(str, choices))} MiB"
                    if choices
                    else "cpu is one of 256, 512, 1024, 2048, 4096, 8192, 16384"
                )
            )

    @property
    def output_key(self) -> str:
        """``SERVICE_<NAME>_URL`` (the outputs contract key of this service)."""
        return f"SERVICE_{output_key(self.name)}_URL"


@dataclass(frozen=True)
class StackConfig:
    """Everything one stack of envkit needs; the same object drives the CLI and Automation."""

    pipeline_id: str
    expires_at: datetime
    owner: str
    region: str = "us-east-1"
    role: str = ROLE_PIPELINE
    base_stack: str | None = None  # shared-base mode: "org/envkit/<base>" or "<base>"
    vpc_cidr: str = "10.42.0.0/16"
    ci_cidr: str | None = None  # also admitted to PostgreSQL (e.g. the runner's egress /32)
    public: bool = False  # public subnets + IGW: database reachable from ci_cidr, no NAT needed
    availability_zones: tuple[str, ...] = ()  # empty: the region's first two available
    engine_version: str = "16"
    instance_class: str = "db.t4g.micro"
    allocated_storage: int = 20
    spot: bool = False  # run services on FARGATE_SPOT (cheaper, may be interrupted)
    # How tasks reach ECR, CloudWatch Logs and the internet: "public" (public subnets and a
    # public IP per task), "nat" (one NAT gateway), "endpoints" (VPC endpoints, ECR images only).
    egress: str = "public"
    services: tuple[ServiceArgs, ...] = ()
    db_password: Any = None  # a secret Output from config; generated when None
    # Redis (ElastiCache): engine "redis" or "valkey", its version (None: the engine's default).
    redis: bool = False
    redis_engine: str = "redis"
    redis_version: str | None = None
    redis_node_type: str = "cache.t4g.micro"
    redis_persistence: bool = False
    redis_token: Any = None  # a secret Output; generated when None
    # The shared RDS instance: the base stack holds it; a pipeline stack creates no RDS instance
    # and gets its database on it from envkit (host, port, name, user; the password as
    # db_password) in ``external_database``.
    shared_database: bool = False
    shared_instance_class: str = "db.t4g.small"
    external_database: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.egress not in EGRESS_MODES:
            raise ValueError(f"egress {self.egress!r}: use one of {', '.join(EGRESS_MODES)}")

    def tags(self) -> dict[str, str]:
        """The envkit tags every resource of the stack carries (values AWS accepts)."""
        return Tags(self.pipeline_id, self.expires_at, self.owner).as_aws_tags()

    def to_config(self) -> dict[str, str]:
        """Plain (non-secret) stack config values under the ``envkit:`` namespace."""
        values: dict[str, Any] = {
            "pipelineId": self.pipeline_id,
            "expiresAt": Tags(self.pipeline_id, self.expires_at, self.owner).as_dict()[
                "envkit:expires-at"
            ],
            "owner": self.owner,
            "region": self.region,
            "role": self.role,
            "vpcCidr": self.vpc_cidr,
            "public": json.dumps(self.public),
            "engineVersion": self.engine_version,
            "instanceClass": self.instance_class,
            "allocatedStorage": str(self.allocated_storage),
            "spot": json.dumps(self.spot),
            "egress": self.egress,
            "services": json.dumps([_plain_service(s) for s in self.services]),
            "redis": json.dumps(self.redis),
            "redisEngine": self.redis_engine,
            "redisNodeType": self.redis_node_type,
            "redisPersistence": json.dumps(self.redis_persistence),
            "sharedDatabase": json.dumps(self.shared_database),
            "sharedInstanceClass": self.shared_instance_class,
        }
        if self.redis_version:
            values["redisVersion"] = self.redis_version
        if self.external_database:
            values["externalDatabase"] = json.dumps(dict(self.external_database), sort_keys=True)
        if self.base_stack:
            values["baseStack"] = self.base_stack
        if self.ci_cidr:
            values["ciCidr"] = self.ci_cidr
        if self.availability_zones:
            values["availabilityZones"] = ",".join(self.availability_zones)
        return {f"envkit:{key}": str(value) for key, value in values.items()}

    @classmethod
    def from_config(
        cls, get: Mapping[str, str], db_password: Any = None, redis_token: Any = None
    ) -> StackConfig:
        """Read what :meth:`to_config` wrote (keys without the ``envkit:`` namespace)."""
        zones = get.get("availabilityZones")
        external = get.get("externalDatabase")
        return cls(
            pipeline_id=get["pipelineId"],
            expires_at=parse_iso(get["expiresAt"]),
            owner=get.get("owner", ""),
            region=get.get("region", "us-east-1"),
            role=get.get("role", ROLE_PIPELINE),
            base_stack=get.get("baseStack") or None,
            vpc_cidr=get.get("vpcCidr", "10.42.0.0/16"),
            ci_cidr=get.get("ciCidr") or None,
            public=json.loads(get.get("public", "false")),
            availability_zones=tuple(zones.split(",")) if zones else (),
            engine_version=get.get("engineVersion", "16"),
            instance_class=get.get("instanceClass", "db.t4g.micro"),
            allocated_storage=int(get.get("allocatedStorage", "20")),
            spot=json.loads(get.get("spot", "false")),
            egress=get.get("egress", "public"),
            services=tuple(ServiceArgs(**s) for s in json.loads(get.get("services", "[]"))),
            db_password=db_password,
            redis=json.loads(get.get("redis", "false")),
            redis_engine=get.get("redisEngine", "redis"),
            redis_version=get.get("redisVersion") or None,
            redis_node_type=get.get("redisNodeType", "cache.t4g.micro"),
            redis_persistence=json.loads(get.get("redisPersistence", "false")),
            redis_token=redis_token,
            shared_database=json.loads(get.get("sharedDatabase", "false")),
            shared_instance_class=get.get("sharedInstanceClass", "db.t4g.small"),
            external_database=json.loads(external) if external else None,
        )


def _plain_service(service: ServiceArgs) -> dict[str, Any]:
    data = asdict(service)
    # Stack config holds text only; Output-valued env entries are wired by the program itself.
    data["env"] = {k: v for k, v in service.env.items() if isinstance(v, str)}
    data["secrets"] = {k: v for k, v in service.secrets.items() if isinstance(v, str)}
    return data
