"""The database of an environment: RDS PostgreSQL in its own DB subnet group."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_aws as aws

from envkit.naming import AWS_NAME_LIMIT, aws_name, pg_database_name, rds_identifier

MASTER_USER = "envkit"


@dataclass(frozen=True)
class DatabaseArgs:
    """What the database needs; small, cheap defaults."""

    pipeline_id: str
    subnet_ids: pulumi.Input[list[str]]
    security_group_ids: pulumi.Input[list[str]]
    engine_version: str = "16"
    instance_class: str = "db.t4g.micro"
    allocated_storage: int = 20
    publicly_accessible: bool = False
    password: Any = None  # a secret Output/str; generated (and kept a secret) when None


def generate_password() -> str:
    """A password RDS accepts (no '/', '@', '"' or spaces) with ~190 bits of entropy."""
    return secrets.token_urlsafe(24)


class Database(pulumi.ComponentResource):
    """One RDS PostgreSQL instance, no deletion protection, no final snapshot."""

    address: pulumi.Output[str]
    port: pulumi.Output[int]
    endpoint: pulumi.Output[str]
    name: pulumi.Output[str]
    username: pulumi.Output[str]
    password: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(
        self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("envkit:aws:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Generated here when the stack config has none: the provider stores one in config as a
        # secret so that updates keep it; either way it only ever travels as a secret Output.
        password = pulumi.Output.secret(
            args.password if args.password is not None else generate_password()
        )
        subnet_group = aws.rds.SubnetGroup(
            f"{name}-subnets",
            name=aws_name(args.pipeline_id, "db", limit=AWS_NAME_LIMIT),
            description=f"envkit {args.pipeline_id}",
            subnet_ids=args.subnet_ids,
            tags={},
            opts=child,
        )
        db_name = pg_database_name(args.pipeline_id)
        instance = aws.rds.Instance(
            f"{name}-instance",
            identifier=rds_identifier(args.pipeline_id),
            engine="postgres",
            engine_version=args.engine_version,
            instance_class=args.instance_class,
            allocated_storage=args.allocated_storage,
            storage_type="gp3",
            db_name=db_name,
            username=MASTER_USER,
            password=password,
            db_subnet_group_name=subnet_group.name,
            vpc_security_group_ids=args.security_group_ids,
            publicly_accessible=args.publicly_accessible,
            # Ephemeral: nothing may outlive the environment or block its destroy.
            skip_final_snapshot=True,
            deletion_protection=False,
            delete_automated_backups=True,
            backup_retention_period=0,  # no backups: creation is minutes faster
            apply_immediately=True,
            storage_encrypted=True,
            copy_tags_to_snapshot=True,
            multi_az=False,
            performance_insights_enabled=False,
            tags={},
            opts=child,
        )
        self.address = instance.address
        self.port = instance.port
        self.endpoint = instance.endpoint
        self.name = pulumi.Output.from_input(db_name)
        self.username = pulumi.Output.from_input(MASTER_USER)
        self.password = password
        self.url = pulumi.Output.secret(
            pulumi.Output.all(instance.address, instance.port, password).apply(
                lambda v: (
                    f"postgresql://{MASTER_USER}:{quote(str(v[2]), safe='')}@{v[0]}:"
                    f"{v[1]}/{db_name}"
                )
            )
        )
        self.register_outputs(
            {
                "address": self.address,
                "port": self.port,
                "endpoint": self.endpoint,
                "name": self.name,
                "url": self.url,
            }
        )
