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
import json
import re
from typing import Any
from urllib.parse import quote

import pulumi
import pulumi_aws as aws

from envkit.naming import AWS_NAME_LIMIT, aws_name, rds_identifier

from .cache import Cache, CacheArgs
from .cluster import Cluster, ClusterArgs
from .config import ROLE_BASE, ServiceArgs, StackConfig
from .database import Database, DatabaseArgs
from .network import Network, NetworkArgs, NetworkRef

DatabaseOutputs = dict[str, pulumi.Output[Any]]

CONFIG_NAMESPACE = "envkit"
PASSWORD_KEY = "dbPassword"  # noqa: S105  (a config key, not a password)
REDIS_TOKEN_KEY = "redisToken"  # noqa: S105  (a config key, not a token)

# Placeholders that carry a secret -> their key in the environment's Secrets Manager secret.
SECRET_PLACEHOLDERS = {
    "DATABASE_URL": "url",
    "DATABASE_PASSWORD": "password",
    "REDIS_URL": "redis_url",
}


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
    """Whether an env value of ``service`` asks for a secret output (database password, the
    database or Redis URL)."""
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
                f"service {service.name!r}: env {key} embeds a password; give it a variable "
                "of its own ({DATABASE_URL}, {DATABASE_PASSWORD} or {REDIS_URL} as the whole "
                "value), which ECS fills from Secrets Manager"
            )
        else:
            env[key] = fill(template)
    return dataclasses.replace(service, env=env, secrets=secrets)


def _value_from(json_key: str) -> Any:
    """ECS's ``valueFrom`` of one JSON key of a Secrets Manager secret, from its ARN."""
    return lambda arn: f"{arn}:{json_key}::"


def _database_secret(
    config: StackConfig, values: dict[str, pulumi.Output[Any]], opts: pulumi.ResourceOptions
) -> pulumi.Output[str]:
    """A Secrets Manager secret ``{"url", "password"[, "redis_url"]}`` for the services."""
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
        secret_string=pulumi.Output.json_dumps(values),
        opts=opts,
    )
    arn: pulumi.Output[str] = secret.arn
    return arn


def _database(
    config: StackConfig,
    subnets: pulumi.Input[list[str]],
    groups: pulumi.Input[list[str]],
    opts: pulumi.ResourceOptions,
) -> DatabaseOutputs:
    """The pipeline's own RDS instance, as the ``DATABASE_*`` outputs."""
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
    return {
        "DATABASE_URL": database.url,
        "DATABASE_HOST": database.address,
        "DATABASE_PORT": database.port.apply(str),
        "DATABASE_NAME": database.name,
        "DATABASE_USER": database.username,
        "DATABASE_PASSWORD": database.password,
    }


def _external_database(config: StackConfig) -> DatabaseOutputs:
    """The database envkit made for the pipeline on the shared instance (no RDS resource)."""
    given = dict(config.external_database or {})
    missing = {"host", "port", "name", "user"} - set(given)
    if missing or config.db_password is None:
        raise ValueError(
            "external_database needs host, port, name, user and the password as db_password; "
            f"missing: {', '.join(sorted(missing)) or 'db_password'}"
        )
    password = pulumi.Output.secret(config.db_password)
    host, port, name, user = (given[k] for k in ("host", "port", "name", "user"))
    return {
        "DATABASE_URL": pulumi.Output.secret(
            password.apply(
                lambda p: f"postgresql://{quote(user, safe='')}:{quote(str(p), safe='')}"
                f"@{host}:{port}/{quote(name, safe='')}"
            )
        ),
        "DATABASE_HOST": pulumi.Output.from_input(host),
        "DATABASE_PORT": pulumi.Output.from_input(str(port)),
        "DATABASE_NAME": pulumi.Output.from_input(name),
        "DATABASE_USER": pulumi.Output.from_input(user),
        "DATABASE_PASSWORD": password,
    }


def _cache(
    config: StackConfig, network: Network | NetworkRef, opts: pulumi.ResourceOptions
) -> DatabaseOutputs:
    """The pipeline's ElastiCache replication group, as the ``REDIS_*`` outputs."""
    admitted: pulumi.Input[list[str]] = network.vpc_cidr.apply(
        lambda cidr: [cidr] + ([config.ci_cidr] if config.ci_cidr else [])
    )
    cache = Cache(
        "cache",
        CacheArgs(
            config.pipeline_id,
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            admitted_cidrs=admitted,
            engine=config.redis_engine,
            engine_version=config.redis_version,
            node_type=config.redis_node_type,
            persistence=config.redis_persistence,
            auth_token=config.redis_token,
        ),
        opts,
    )
    return {
        "REDIS_URL": cache.url,
        "REDIS_HOST": cache.host,
        "REDIS_PORT": cache.port.apply(str),
    }


def build_base(config: StackConfig) -> dict[str, pulumi.Output[Any]]:
    """The long-lived base stack of shared-base mode: the network, and with
    ``shared_database`` the one RDS instance on which envkit gives each pipeline a database."""
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
    if config.shared_database:
        subnets = network.public_subnet_ids if config.public else network.private_subnet_ids
        shared = Database(
            "shared-database",
            DatabaseArgs(
                config.pipeline_id,
                subnet_ids=subnets,
                security_group_ids=network.security_group_id.apply(lambda g: [g]),
                engine_version=config.engine_version,
                instance_class=config.shared_instance_class,
                allocated_storage=config.allocated_storage,
                publicly_accessible=config.public,
                password=config.db_password,
            ),
            opts,
        )
        # What envkit builds the admin DSN from (the password stays a secret in the state).
        outputs.update(
            shared_database_identifier=pulumi.Output.from_input(
                rds_identifier(config.pipeline_id)
            ),
            shared_database_address=shared.address,
            shared_database_port=shared.port,
            shared_database_user=shared.username,
            shared_database_password=shared.password,
        )
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
    if config.external_database is not None:
        database_outputs = _external_database(config)
    else:
        database_outputs = _database(config, subnets, groups, opts)
    cache_outputs = _cache(config, network, opts) if config.redis else {}
    placeholders = {**database_outputs, **cache_outputs}
    secret_arn = (
        _database_secret(
            config,
            {key: placeholders[name] for name, key in SECRET_PLACEHOLDERS.items()
             if name in placeholders},
            opts,
        )
        if any(uses_secret_outputs(s) for s in config.services)
        else None
    )  # fmt: skip
    cluster = Cluster(
        "cluster",
        ClusterArgs(
            config.pipeline_id,
            region=config.region,
            vpc_id=network.vpc_id,
            subnet_ids=task_subnets,
            security_group_ids=groups,
            services=tuple(_with_outputs(s, placeholders, secret_arn) for s in config.services),
            assign_public_ip=public_tasks,
            spot=config.spot,
        ),
        opts,
    )
    outputs: dict[str, pulumi.Output[Any]] = {
        **database_outputs,
        **cache_outputs,
        "ENVKIT_PIPELINE_ID": pulumi.Output.from_input(config.pipeline_id),
        "ENVKIT_PROVIDER": pulumi.Output.from_input("aws"),
        "NETWORK_ID": network.vpc_id,
        "CLUSTER_NAME": cluster.name,
        **cluster.service_urls,
        # The Terraform-style names CI scripts already use.
        "database_endpoint": pulumi.Output.concat(
            database_outputs["DATABASE_HOST"], ":", database_outputs["DATABASE_PORT"]
        ),
        "database_name": database_outputs["DATABASE_NAME"],
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


def config_from_pulumi(
    db_password: str | None = None, redis_token: str | None = None
) -> StackConfig:
    """The StackConfig stored in the current stack's ``envkit:*`` config; the password is
    ``db_password`` (handed over in-process by envkit) or the secret ``envkit:dbPassword``, the
    Redis AUTH token ``redis_token`` or the secret ``envkit:redisToken``."""
    cfg = pulumi.Config(CONFIG_NAMESPACE)
    keys = (
        "pipelineId", "expiresAt", "owner", "region", "role", "baseStack", "vpcCidr", "ciCidr",
        "public", "availabilityZones", "engineVersion", "instanceClass", "allocatedStorage",
        "spot", "services", "egress", "redis", "redisEngine", "redisVersion", "redisNodeType",
        "redisPersistence", "sharedDatabase", "sharedInstanceClass", "externalDatabase",
    )  # fmt: skip
    values = {key: value for key in keys if (value := cfg.get(key)) is not None}
    password: Any = pulumi.Output.secret(db_password) if db_password else None
    if password is None:
        password = cfg.get_secret(PASSWORD_KEY)
    shared = json.loads(values.get("sharedDatabase", "false"))
    if password is None and (values.get("role") != ROLE_BASE or shared):
        # A password generated here would differ on every `pulumi up` and rotate it on RDS.
        raise pulumi.RunError(
            "envkit:dbPassword is not set: run 'pulumi config set --secret envkit:dbPassword' "
            "and type the password (or pipe it on stdin, never as an argument), or let envkit "
            "run the stack ('envkit up --provider aws')."
        )
    token: Any = pulumi.Output.secret(redis_token) if redis_token else None
    if token is None:
        token = cfg.get_secret(REDIS_TOKEN_KEY)
    if token is None and json.loads(values.get("redis", "false")):
        raise pulumi.RunError(
            "envkit:redisToken is not set: run 'pulumi config set --secret envkit:redisToken' "
            "and type a token of 16-128 characters (no '@', '\"' or '/'), or let envkit run "
            "the stack ('envkit up --provider aws')."
        )
    return StackConfig.from_config(values, db_password=password, redis_token=token)


def main(db_password: str | None = None, redis_token: str | None = None) -> None:
    """The program as Pulumi runs it: config from the stack, resources, outputs."""
    build(config_from_pulumi(db_password, redis_token))
