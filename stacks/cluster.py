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
        referenced = [v for service in args.services for v in service.secrets.values()]
        if referenced:
            # The managed policy above has no secretsmanager/ssm/kms: without this a task whose
            # definition references secrets stops with ResourceInitializationError.
            aws.iam.RolePolicy(
                f"{name}-execution-secrets",
                role=role.name,
                policy=pulumi.Output.from_input(referenced).apply(
                    lambda arns: secrets_policy(arns, args.region)
                ),
                opts=child,
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
        definitions = pulumi.Output.all(
            logs.name,
            pulumi.Output.from_input(dict(service.env)),
            pulumi.Output.from_input(dict(service.secrets)),
        ).apply(lambda v: _container_definitions(service, args.region, v[0], v[1], v[2]))
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
            # `up` succeeds only once the tasks run; the circuit breaker fails a deployment
            # whose tasks keep stopping (a bad image, no egress) instead of looping until the
            # timeout.
            wait_for_steady_state=True,
            deployment_circuit_breaker={"enable": True, "rollback": False},
            tags={},
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[capacity])),
        )
        self.service_urls[service.output_key] = pulumi.Output.from_input(
            f"http://{service.name}.{namespace_name}:{service.port}"
        )


def secret_resource(value_from: str, region: str) -> str:
    """The IAM resource of an ECS ``valueFrom``: a Secrets Manager ARN without its JSON-key
    suffix, an SSM parameter ARN, or an SSM parameter name of this region."""
    if value_from.startswith("arn:"):
        parts = value_from.split(":")
        return ":".join(parts[:7]) if parts[2] == "secretsmanager" else value_from
    return f"arn:aws:ssm:{region}:*:parameter/{value_from.lstrip('/')}"


def secrets_policy(value_froms: Sequence[str], region: str) -> str:
    """An execution-role policy reading exactly the referenced secrets and parameters."""
    resources = sorted({secret_resource(v, region) for v in value_froms})
    managers = [r for r in resources if ":secretsmanager:" in r]
    parameters = [r for r in resources if ":ssm:" in r]
    statements: list[dict[str, Any]] = []
    if managers:
        statements.append(
            {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": managers}
        )
    if parameters:
        statements.append(
            {"Effect": "Allow", "Action": ["ssm:GetParameters"], "Resource": parameters}
        )
    # Customer-managed keys of those secrets: decrypt only through these two services.
    statements.append(
        {
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {
                    "kms:ViaService": [
                        f"secretsmanager.{region}.amazonaws.com",
                        f"ssm.{region}.amazonaws.com",
                    ]
                }
            },
        }
    )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def _container_definitions(
    service: ServiceArgs,
    region: str,
    log_group: str,
    env: dict[str, Any],
    secrets: dict[str, Any],
) -> str:
    return json.dumps(
        [
            {
                "name": service.name,
                "image": service.image,
                "essential": True,
                "portMappings": [{"containerPort": service.port, "protocol": "tcp"}],
                "environment": [{"name": k, "value": str(v)} for k, v in sorted(env.items())],
                "secrets": [{"name": k, "valueFrom": str(v)} for k, v in sorted(secrets.items())],
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
