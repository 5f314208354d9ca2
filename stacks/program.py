"""The one Pulumi program of envkit, used by ``Pulumi.yaml`` (``stacks/__main__.py``) and by
the Automation API's inline program alike.

Tags reach every resource twice over: as the aws provider's ``default_tags`` (what AWS sees on
every taggable resource, even ones created outside these components) and through a stack-wide
transformation that writes them into each resource's own ``tags`` (visible in state, in
previews and to the Pulumi mocks, and immune to a resource type ignoring default tags).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pulumi
import pulumi_aws as aws

from .cluster import Cluster, ClusterArgs
from .config import ROLE_BASE, ServiceArgs, StackConfig
from .database import Database, DatabaseArgs
from .network import Network, NetworkArgs, NetworkRef

CONFIG_NAMESPACE = "envkit"
PASSWORD_KEY = "dbPassword"  # noqa: S105  (a config key, not a password)


def tag_transformation(tags: dict[str, str]) -> Any:
    """A stack transformation merging ``tags`` into every aws resource that takes tags."""

    def merge(current: Any) -> dict[str, str]:
        return {**(current or {}), **tags}  # envkit's tags win: the reaper relies on them

    def transform(args: pulumi.ResourceTransformationArgs) -> Any:
        if not args.type_.startswith("aws:") or "tags" not in args.props:
            return None
        props = dict(args.props)
        current = props.get("tags")
        if current is None or isinstance(current, dict):
            props["tags"] = merge(current)
        else:  # an Output or other awaitable
            props["tags"] = pulumi.Output.from_input(current).apply(merge)
        return pulumi.ResourceTransformationResult(props, args.opts)

    return transform


def _provider(config: StackConfig) -> aws.Provider:
    return aws.Provider(
        "aws",
        region=config.region,
        default_tags={"tags": config.tags()},
    )


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
        ),
        opts,
    )


_PLACEHOLDER = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")


def _with_outputs(service: ServiceArgs, values: dict[str, pulumi.Output[Any]]) -> ServiceArgs:
    """``service`` with ``{DATABASE_URL}``-style placeholders in its env filled from stack
    outputs once they resolve (unknown placeholders stay as written)."""

    def fill(template: Any) -> Any:
        if not isinstance(template, str) or not _PLACEHOLDER.search(template):
            return template
        return pulumi.Output.all(**values).apply(
            lambda resolved: _PLACEHOLDER.sub(
                lambda m: str(resolved.get(m.group(1), m.group(0))), template
            )
        )

    return dataclasses.replace(service, env={k: fill(v) for k, v in service.env.items()})


def build_base(config: StackConfig) -> dict[str, pulumi.Output[Any]]:
    """The long-lived base stack of shared-base mode: only the network."""
    pulumi.runtime.register_stack_transformation(tag_transformation(config.tags()))
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
    pulumi.runtime.register_stack_transformation(tag_transformation(config.tags()))
    opts = pulumi.ResourceOptions(providers=[_provider(config)])
    network: Network | NetworkRef
    if config.base_stack:
        network = NetworkRef.from_stack(config.base_stack)
    else:
        network = _network(config, opts)
    subnets = network.public_subnet_ids if config.public else network.private_subnet_ids
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
    cluster = Cluster(
        "cluster",
        ClusterArgs(
            config.pipeline_id,
            region=config.region,
            vpc_id=network.vpc_id,
            subnet_ids=subnets,
            security_group_ids=groups,
            services=tuple(_with_outputs(s, database_outputs) for s in config.services),
            assign_public_ip=config.public,
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
    }
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs


def config_from_pulumi() -> StackConfig:
    """The StackConfig stored in the current stack's ``envkit:*`` config (secret password too)."""
    cfg = pulumi.Config(CONFIG_NAMESPACE)
    keys = (
        "pipelineId", "expiresAt", "owner", "region", "role", "baseStack", "vpcCidr", "ciCidr",
        "public", "availabilityZones", "engineVersion", "instanceClass", "allocatedStorage",
        "spot", "services",
    )  # fmt: skip
    values = {key: value for key in keys if (value := cfg.get(key)) is not None}
    return StackConfig.from_config(values, db_password=cfg.get_secret(PASSWORD_KEY))


def main() -> None:
    """The program as Pulumi runs it: config from the stack, resources, outputs."""
    build(config_from_pulumi())
