"""The one Pulumi program of envkit, used by ``Pulumi.yaml`` (``stacks/__main__.py``) and by
the Automation API's inline program alike.

Tags reach every resource twice over: as the aws provider's ``default_tags`` (what AWS sees on
every taggable resource, even ones created outside these components) and through a stack
transform that writes them into each resource's own ``tags`` (visible in state, in previews,
and immune to a resource type ignoring default tags).

The database password never appears in a task definition: services that ask for
``{DATABASE_URL}`` or ``{DATABASE_PASSWORD}`` get a reference to a Secrets Manager secret that
ECS resolves when the task starts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pulumi
import pulumi_aws as aws

from envkit.naming import AWS_NAME_LIMIT, aws_name

from .cluster import Cluster, ClusterArgs
from .config import ROLE_BASE, ServiceArgs, StackConfig
from .database import Database, DatabaseArgs
from .network import Network, NetworkArgs, NetworkRef

CONFIG_NAMESPACE = "envkit"
PASSWORD_KEY = "dbPassword"  # noqa: S105  (a config key, not a password)


SECRET_PLACEHOLDERS = {"DATABASE_URL": "url", "DATABASE_PASSWORD": "password"}


def tag_transform(tags: dict[str, str]) -> Any:
    """A stack transform merging ``tags`` into every aws resource that takes tags."""

    def merge(current: Any) -> dict[str, str]:
        return {**(current or {}), **tags}  # envkit's tags win: the reaper relies on them

    def transform(args: pulumi.ResourceTransformArgs) -> Any:
        if not args.type_.startswith("aws:") or "tags" not in args.props:
            return None
        props = dict(args.props)
        current = props.get("tags")
        if current is None or isinstance(current, dict):
            props["tags"] = merge(current)
        else:  # an Output or other awaitable
            props["tags"] = pulumi.Output.from_input(current).apply(merge)
        return pulumi.ResourceTransformResult(props, args.opts)

    return transform


def _provider(config: StackConfig) -> aws.Provider:
    return aws.Provider(
        "aws",
        region=config.region,
        default_tags={"tags": config.tags()},
    )


def _register_tags(config: StackConfig) -> None:
    pulumi.runtime.register_resource_transform(tag_transform(config.tags()))


def _network(config: StackConfig, opts: pulumi.ResourceOptions) -> Network:
    """The pipeline's (or the shared base's) own VPC, subnets and security group."""
    return Network(
        "network",
        NetworkArgs(
            config.pipeline_id,
            cidr=config.vpc_cidr,
            availability_zones=config.availability_zones,
            public=config.public,
            ci_cidr=config.ci_cidr,
            egress=config.egress,
            region=config.region,
        ),
        opts,
    )


_PLACEHOLDER = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")


def uses_secret_outputs(service: ServiceArgs) -> bool:
    """Whether an env value of ``service`` asks for the database password (URL included)."""
    return any(
        isinstance(v, str) and set(_PLACEHOLDER.findall(v)) & set(SECRET_PLACEHOLDERS)
        for v in service.env.values()
    )


def _with_outputs(
    service: ServiceArgs,
    values: dict[str, pulumi.Output[Any]],
    secret_arn: pulumi.Output[str] | None = None,
) -> ServiceArgs:
    """``service`` with ``{DATABASE_URL}``-style placeholders in its env filled from stack
    outputs once they resolve (unknown placeholders stay as written); a value that is exactly
    ``{DATABASE_URL}`` or ``{DATABASE_PASSWORD}`` becomes a secret reference instead."""

    def fill(template: Any) -> Any:
        if not isinstance(template, str) or not _PLACEHOLDER.search(template):
            return template
        # Only the outputs it names: one secret among them would make the whole definition one.
        named = {k: v for k, v in values.items() if k in _PLACEHOLDER.findall(template)}
        if not named:
            return template
        return pulumi.Output.all(**named).apply(
            lambda resolved: _PLACEHOLDER.sub(
                lambda m: str(resolved.get(m.group(1), m.group(0))), template
            )
        )

    env: dict[str, Any] = {}
    secrets: dict[str, Any] = dict(service.secrets)
    for key, template in service.env.items():
        whole = _PLACEHOLDER.fullmatch(template) if isinstance(template, str) else None
        if whole and whole.group(1) in SECRET_PLACEHOLDERS and secret_arn is not None:
            secrets[key] = secret_arn.apply(_value_from(SECRET_PLACEHOLDERS[whole.group(1)]))
        elif isinstance(template, str) and set(_PLACEHOLDER.findall(template)) & set(
            SECRET_PLACEHOLDERS
        ):
            raise ValueError(
                f"service {service.name!r}: env {key} embeds the database password; give it "
                "a variable of its own ({DATABASE_URL} or {DATABASE_PASSWORD} as the whole "
                "value), which ECS fills from Secrets Manager"
            )
        else:
            env[key] = fill(template)
    return dataclasses.replace(service, env=env, secrets=secrets)


def _value_from(json_key: str) -> Any:
    """ECS's ``valueFrom`` of one JSON key of a Secrets Manager secret, from its ARN."""
    return lambda arn: f"{arn}:{json_key}::"


def _database_secret(
    config: StackConfig, database: Database, opts: pulumi.ResourceOptions
) -> pulumi.Output[str]:
    """A Secrets Manager secret ``{"url", "password"}`` for the services to reference."""
    secret = aws.secretsmanager.Secret(
        "database-secret",
        name=aws_name(config.pipeline_id, "db", limit=AWS_NAME_LIMIT),
        description=f"envkit {config.pipeline_id}: the database URL and password",
        recovery_window_in_days=0,  # deleted at once: ephemeral, and the name is reused
        tags={},
        opts=opts,
    )
    aws.secretsmanager.SecretVersion(
        "database-secret-value",
        secret_id=secret.id,
        secret_string=pulumi.Output.json_dumps(
            {"url": database.url, "password": database.password}
        ),
        opts=opts,
    )
    arn: pulumi.Output[str] = secret.arn
    return arn


def build_base(config: StackConfig) -> dict[str, pulumi.Output[Any]]:
    """The long-lived base stack of shared-base mode: only the network."""
    _register_tags(config)
    opts = pulumi.ResourceOptions(providers=[_provider(config)])
    network = _network(config, opts)
    outputs: dict[str, pulumi.Output[Any]] = {
        "vpc_id": network.vpc_id,
        "vpc_cidr": network.vpc_cidr,
        "private_subnet_ids": network.private_subnet_ids,
        "public_subnet_ids": network.public_subnet_ids,
        "security_group_id": network.security_group_id,
    }
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs


def build(config: StackConfig) -> dict[str, pulumi.Output[Any]]:
    """Create an environment's stack and export the outputs contract (see DESIGN.md)."""
    if config.role == ROLE_BASE:
        return build_base(config)
    _register_tags(config)
    opts = pulumi.ResourceOptions(providers=[_provider(config)])
    network: Network | NetworkRef
    if config.base_stack:
        network = NetworkRef.from_stack(config.base_stack)
    else:
        network = _network(config, opts)
    subnets = network.public_subnet_ids if config.public else network.private_subnet_ids
    # Tasks run where their egress is: public subnets with a public IP, or private ones behind
    # the NAT gateway or the VPC endpoints.
    public_tasks = config.egress == "public"
    task_subnets = network.public_subnet_ids if public_tasks else network.private_subnet_ids
    groups = network.security_group_id.apply(lambda g: [g])
    database = Database(
        "database",
        DatabaseArgs(
            config.pipeline_id,
            subnet_ids=subnets,
            security_group_ids=groups,
            engine_version=config.engine_version,
            instance_class=config.instance_class,
            allocated_storage=config.allocated_storage,
            publicly_accessible=config.public,
            password=config.db_password,
        ),
        opts,
    )
    database_outputs = {
        "DATABASE_URL": database.url,
        "DATABASE_HOST": database.address,
        "DATABASE_PORT": database.port.apply(str),
        "DATABASE_NAME": database.name,
        "DATABASE_USER": database.username,
        "DATABASE_PASSWORD": database.password,
    }
    secret_arn = (
        _database_secret(config, database, opts)
        if any(uses_secret_outputs(s) for s in config.services)
        else None
    )
    cluster = Cluster(
        "cluster",
        ClusterArgs(
            config.pipeline_id,
            region=config.region,
            vpc_id=network.vpc_id,
            subnet_ids=task_subnets,
            security_group_ids=groups,
            services=tuple(_with_outputs(s, database_outputs, secret_arn) for s in config.services),
            assign_public_ip=public_tasks,
            spot=config.spot,
        ),
        opts,
    )
    outputs: dict[str, pulumi.Output[Any]] = {
        **database_outputs,
        "ENVKIT_PIPELINE_ID": pulumi.Output.from_input(config.pipeline_id),
        "ENVKIT_PROVIDER": pulumi.Output.from_input("aws"),
        "NETWORK_ID": network.vpc_id,
        "CLUSTER_NAME": cluster.name,
        **cluster.service_urls,
        # The Terraform-style names CI scripts already use.
        "database_endpoint": database.endpoint,
        "database_name": database.name,
        "ecs_cluster": cluster.name,
        "vpc_id": network.vpc_id,
        # Expiry and owner in the backend's state, on every backend (DIY ones have no stack
        # tags, and stack config lives on the runner's disk): what a later reap reads.
        "envkit_expires_at": pulumi.Output.from_input(config.tags()["envkit:expires-at"]),
        "envkit_owner": pulumi.Output.from_input(config.tags()["envkit:owner"]),
    }
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs


def config_from_pulumi(db_password: str | None = None) -> StackConfig:
    """The StackConfig stored in the current stack's ``envkit:*`` config; the password is
    ``db_password`` (handed over in-process by envkit) or the secret ``envkit:dbPassword``."""
    cfg = pulumi.Config(CONFIG_NAMESPACE)
    keys = (
        "pipelineId", "expiresAt", "owner", "region", "role", "baseStack", "vpcCidr", "ciCidr",
        "public", "availabilityZones", "engineVersion", "instanceClass", "allocatedStorage",
        "spot", "services", "egress",
    )  # fmt: skip
    values = {key: value for key in keys if (value := cfg.get(key)) is not None}
    password: Any = pulumi.Output.secret(db_password) if db_password else None
    if password is None:
        password = cfg.get_secret(PASSWORD_KEY)
    if password is None and values.get("role") != ROLE_BASE:
        # A password generated here would differ on every `pulumi up` and rotate it on RDS.
        raise pulumi.RunError(
            "envkit:dbPassword is not set: run 'pulumi config set --secret envkit:dbPassword' "
            "and type the password (or pipe it on stdin, never as an argument), or let envkit "
            "run the stack ('envkit up --provider aws')."
        )
    return StackConfig.from_config(values, db_password=password)


def main(db_password: str | None = None) -> None:
    """The program as Pulumi runs it: config from the stack, resources, outputs."""
    build(config_from_pulumi(db_password))
