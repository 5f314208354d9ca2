"""The cluster of an environment: ECS with Fargate capacity, and optional Fargate services."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from envkit.naming import AWS_NAME_LIMIT, IAM_ROLE_NAME_LIMIT, aws_name

from .config import ServiceArgs

EXECUTION_POLICY = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
LOG_RETENTION_DAYS = 1


@dataclass(frozen=True)
class ClusterArgs:
    """What the cluster needs."""

    pipeline_id: str
    region: str
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    security_group_ids: pulumi.Input[list[str]]
    services: Sequence[ServiceArgs] = ()
    assign_public_ip: bool = False
    spot: bool = False


class Cluster(pulumi.ComponentResource):
    """An ECS cluster (FARGATE + FARGATE_SPOT) and one Fargate service per ``ServiceArgs``."""

    name: pulumi.Output[str]
    arn: pulumi.Output[str]
    service_urls: dict[str, pulumi.Output[str]]

    def __init__(
        self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("envkit:aws:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        pid = args.pipeline_id
        cluster = aws.ecs.Cluster(
            f"{name}-ecs",
            name=aws_name(pid, limit=AWS_NAME_LIMIT),
            settings=[{"name": "containerInsights", "value": "disabled"}],
            tags={},
            opts=child,
        )
        capacity = aws.ecs.ClusterCapacityProviders(
            f"{name}-capacity",
            cluster_name=cluster.name,
            capacity_providers=["FARGATE", "FARGATE_SPOT"],
            default_capacity_provider_strategies=[
                {"capacity_provider": "FARGATE_SPOT" if args.spot else "FARGATE", "weight": 1}
            ],
            opts=child,
        )
        self.name = cluster.name
        self.arn = cluster.arn
        self.service_urls = {}
        if args.services:
            self._services(name, args, cluster, capacity, child)
        self.register_outputs({"name": self.name, "arn": self.arn, **self.service_urls})

    def _services(
        self,
        name: str,
        args: ClusterArgs,
        cluster: aws.ecs.Cluster,
        capacity: aws.ecs.ClusterCapacityProviders,
        child: pulumi.ResourceOptions,
    ) -> None:
        pid = args.pipeline_id
        role = aws.iam.Role(
            f"{name}-execution",
            name=aws_name(pid, "exec", limit=IAM_ROLE_NAME_LIMIT),
            path="/envkit/",  # lets the tag sweep list envkit's roles (IAM is not regional)
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
            tags={},
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            f"{name}-execution-policy", role=role.name, policy_arn=EXECUTION_POLICY, opts=child
        )
        logs = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=f"/envkit/{aws_name(pid, limit=AWS_NAME_LIMIT)}",
            retention_in_days=LOG_RETENTION_DAYS,
            tags={},
            opts=child,
        )
        namespace_name = f"{aws_name(pid)}.internal"
        namespace = aws.servicediscovery.PrivateDnsNamespace(
            f"{name}-dns",
            name=namespace_name,
            vpc=args.vpc_id,
            description=f"envkit {pid}",
            tags={},
            opts=child,
        )
        for service in args.services:
            self._service(
                name, args, service, cluster, capacity, role, logs, namespace, namespace_name, child
            )

    def _service(
        self,
        name: str,
        args: ClusterArgs,
        service: ServiceArgs,
        cluster: aws.ecs.Cluster,
        capacity: aws.ecs.ClusterCapacityProviders,
        role: aws.iam.Role,
        logs: aws.cloudwatch.LogGroup,
        namespace: aws.servicediscovery.PrivateDnsNamespace,
        namespace_name: str,
        child: pulumi.ResourceOptions,
    ) -> None:
        pid = args.pipeline_id
        full = aws_name(pid, service.name, limit=AWS_NAME_LIMIT)
        env_names = sorted(service.env)
        definitions = pulumi.Output.all(logs.name, *[service.env[k] for k in env_names]).apply(
            lambda values: _container_definitions(service, args.region, values[0], values[1:])
        )
        task = aws.ecs.TaskDefinition(
            f"{name}-{service.name}-task",
            family=full,
            cpu=str(service.cpu),
            memory=str(service.memory),
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            execution_role_arn=role.arn,
            container_definitions=definitions,
            tags={},
            opts=child,
        )
        registry = aws.servicediscovery.Service(
            f"{name}-{service.name}-dns",
            name=service.name,
            namespace_id=namespace.id,
            dns_config={
                "namespace_id": namespace.id,
                "dns_records": [{"ttl": 10, "type": "A"}],
                "routing_policy": "MULTIVALUE",
            },
            force_destroy=True,  # deregister the tasks' instances on destroy
            tags={},
            opts=child,
        )
        aws.ecs.Service(
            f"{name}-{service.name}",
            name=full,
            cluster=cluster.arn,
            task_definition=task.arn,
            desired_count=service.desired_count,
            capacity_provider_strategies=[
                {"capacity_provider": "FARGATE_SPOT" if args.spot else "FARGATE", "weight": 1}
            ],
            network_configuration={
                "subnets": args.subnet_ids,
                "security_groups": args.security_group_ids,
                "assign_public_ip": args.assign_public_ip,
            },
            service_registries={"registry_arn": registry.arn},
            propagate_tags="SERVICE",  # the tasks carry the envkit tags too
            enable_ecs_managed_tags=True,
            force_delete=True,  # delete without scaling to zero first
            wait_for_steady_state=False,  # readiness is envkit's job (boto3 waiters)
            tags={},
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[capacity])),
        )
        self.service_urls[service.output_key] = pulumi.Output.from_input(
            f"http://{service.name}.{namespace_name}:{service.port}"
        )


def _container_definitions(
    service: ServiceArgs, region: str, log_group: str, env_values: Sequence[Any]
) -> str:
    env_names = sorted(service.env)
    return json.dumps(
        [
            {
                "name": service.name,
                "image": service.image,
                "essential": True,
                "portMappings": [{"containerPort": service.port, "protocol": "tcp"}],
                "environment": [
                    {"name": k, "value": str(v)} for k, v in zip(env_names, env_values, strict=True)
                ],
                "secrets": [
                    {"name": k, "valueFrom": v} for k, v in sorted(service.secrets.items())
                ],
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": log_group,
                        "awslogs-region": region,
                        "awslogs-stream-prefix": service.name,
                    },
                },
            }
        ]
    )
