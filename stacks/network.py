"""The network of an environment: VPC, private subnets in two AZs, public ones when egress or
the database need them, the egress path of the tasks, and a security group admitting PostgreSQL
only from inside the VPC (and an optional CI CIDR).

Egress (``NetworkArgs.egress``) decides how Fargate tasks reach ECR, CloudWatch Logs and the
rest of the internet; without one they fail with ``CannotPullContainerError``:

* ``public`` — an internet gateway, public subnets, a public IP per task (no hourly network cost
  beyond AWS's public-IPv4 charge per task);
* ``nat`` — tasks in private subnets behind one NAT gateway in the first zone (hourly + per GB);
* ``endpoints`` — no internet: interface endpoints for ECR (api, dkr), CloudWatch Logs, Secrets
  Manager and SSM, and an S3 gateway endpoint (images must come from ECR).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from envkit.naming import AWS_NAME_LIMIT, aws_name

POSTGRES_PORT = 5432
# Interface endpoints a Fargate task needs to start without internet: image pulls, logs, and
# the secrets its task definition references.
INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "logs", "secretsmanager", "ssm")


@dataclass(frozen=True)
class NetworkArgs:
    """What the network needs."""

    pipeline_id: str
    cidr: str = "10.42.0.0/16"
    availability_zones: tuple[str, ...] = ()  # empty: the region's first two available
    public: bool = False
    ci_cidr: str | None = None
    egress: str = "public"
    region: str = "us-east-1"  # the endpoints' service names


def subnet_cidrs(cidr: str) -> tuple[list[str], list[str]]:
    """Two private and two public /20-sized (or smaller) blocks carved from ``cidr``."""
    network = ipaddress.ip_network(cidr)
    blocks = list(network.subnets(new_prefix=min(network.prefixlen + 4, 28)))
    return [str(b) for b in blocks[:2]], [str(b) for b in blocks[8:10]]


def _nth(index: int) -> Callable[[list[str]], str]:
    """Pick zone ``index`` (wrapping when the region has fewer)."""
    return lambda zones: zones[index % len(zones)]


class Network(pulumi.ComponentResource):
    """VPC + subnets + the PostgreSQL security group of one environment (or of a shared base)."""

    vpc_id: pulumi.Output[str]
    vpc_cidr: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    public_subnet_ids: pulumi.Output[list[str]]
    security_group_id: pulumi.Output[str]

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("envkit:aws:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        base = aws_name(args.pipeline_id, limit=AWS_NAME_LIMIT - 8)
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            enable_dns_hostnames=True,  # RDS endpoints and Cloud Map names must resolve
            enable_dns_support=True,
            tags={"Name": base},
            opts=child,
        )
        zones: pulumi.Input[list[str]]
        if args.availability_zones:
            zones = list(args.availability_zones)
        else:
            # Local and Wavelength Zones are opt-in: without the filter an account that opted in
            # gets one as a "first available zone", where RDS and Fargate do not run.
            zones = aws.get_availability_zones_output(
                state="available",
                filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
                opts=pulumi.InvokeOutputOptions(parent=self),
            ).names
        zone_list = pulumi.Output.from_input(zones)
        private_cidrs, public_cidrs = subnet_cidrs(args.cidr)
        private = [
            aws.ec2.Subnet(
                f"{name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=block,
                availability_zone=zone_list.apply(_nth(i)),
                map_public_ip_on_launch=False,
                tags={"Name": f"{base}-private-{i}"},
                opts=child,
            )
            for i, block in enumerate(private_cidrs)
        ]
        public: list[aws.ec2.Subnet] = []
        if args.public or args.egress in ("public", "nat"):
            gateway = aws.ec2.InternetGateway(
                f"{name}-igw", vpc_id=vpc.id, tags={"Name": base}, opts=child
            )
            table = aws.ec2.RouteTable(
                f"{name}-public",
                vpc_id=vpc.id,
                routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}],
                tags={"Name": f"{base}-public"},
                opts=child,
            )
            for i, block in enumerate(public_cidrs):
                subnet = aws.ec2.Subnet(
                    f"{name}-public-{i}",
                    vpc_id=vpc.id,
                    cidr_block=block,
                    availability_zone=zone_list.apply(_nth(i)),
                    map_public_ip_on_launch=True,
                    tags={"Name": f"{base}-public-{i}"},
                    opts=child,
                )
                aws.ec2.RouteTableAssociation(
                    f"{name}-public-{i}", subnet_id=subnet.id, route_table_id=table.id, opts=child
                )
                public.append(subnet)
        if args.egress in ("nat", "endpoints"):
            self._private_egress(name, base, args, vpc, private, public, child)
        admitted = [args.cidr] + ([args.ci_cidr] if args.ci_cidr else [])
        group = aws.ec2.SecurityGroup(
            f"{name}-sg",
            name=aws_name(args.pipeline_id, "pg", limit=AWS_NAME_LIMIT),
            description="envkit: PostgreSQL from inside the VPC (and the CI CIDR) only",
            vpc_id=vpc.id,
            ingress=[
                {
                    "protocol": "tcp",
                    "from_port": POSTGRES_PORT,
                    "to_port": POSTGRES_PORT,
                    "cidr_blocks": admitted,
                    "description": "PostgreSQL",
                },
                {
                    # Services of the same environment talk to each other on any TCP port.
                    "protocol": "tcp",
                    "from_port": 0,
                    "to_port": 65535,
                    "self": True,
                    "description": "between the environment's tasks",
                },
            ],
            egress=[
                {
                    "protocol": "-1",
                    "from_port": 0,
                    "to_port": 0,
                    "cidr_blocks": ["0.0.0.0/0"],
                    "description": "image pulls, AWS APIs",
                }
            ],
            # Without this a destroy can hang on rules that reference the group itself.
            revoke_rules_on_delete=True,
            tags={"Name": base},
            opts=child,
        )
        self.vpc_id = vpc.id
        self.vpc_cidr = vpc.cidr_block
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private])
        self.public_subnet_ids = pulumi.Output.all(*[s.id for s in public])
        self.security_group_id = group.id
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "vpc_cidr": self.vpc_cidr,
                "private_subnet_ids": self.private_subnet_ids,
                "public_subnet_ids": self.public_subnet_ids,
                "security_group_id": self.security_group_id,
            }
        )

    def _private_egress(
        self,
        name: str,
        base: str,
        args: NetworkArgs,
        vpc: aws.ec2.Vpc,
        private: list[aws.ec2.Subnet],
        public: list[aws.ec2.Subnet],
        child: pulumi.ResourceOptions,
    ) -> None:
        """The route out of the private subnets: one NAT gateway, or VPC endpoints."""
        routes: list[dict[str, pulumi.Input[str]]] = []
        if args.egress == "nat":
            address = aws.ec2.Eip(f"{name}-nat-ip", domain="vpc", tags={"Name": base}, opts=child)
            nat = aws.ec2.NatGateway(
                f"{name}-nat",
                allocation_id=address.id,
                subnet_id=public[0].id,
                tags={"Name": base},
                opts=child,
            )
            routes.append({"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id})
        table = aws.ec2.RouteTable(
            f"{name}-private",
            vpc_id=vpc.id,
            routes=routes,
            tags={"Name": f"{base}-private"},
            opts=child,
        )
        for i, subnet in enumerate(private):
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{i}", subnet_id=subnet.id, route_table_id=table.id, opts=child
            )
        if args.egress != "endpoints":
            return
        region = args.region
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[table.id],  # ECR keeps image layers in S3
            tags={"Name": f"{base}-s3"},
            opts=child,
        )
        group = aws.ec2.SecurityGroup(
            f"{name}-endpoints",
            name=aws_name(args.pipeline_id, "vpce", limit=AWS_NAME_LIMIT),
            description="envkit: HTTPS to the VPC endpoints from inside the VPC",
            vpc_id=vpc.id,
            ingress=[{"protocol": "tcp", "from_port": 443, "to_port": 443,
                      "cidr_blocks": [args.cidr], "description": "HTTPS"}],
            tags={"Name": f"{base}-vpce"},
            opts=child,
        )  # fmt: skip
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=[s.id for s in private],
                security_group_ids=[group.id],
                tags={"Name": f"{base}-{service}"},
                opts=child,
            )


@dataclass(frozen=True)
class NetworkRef:
    """The outputs of a Network that lives in another (the shared base) stack."""

    vpc_id: pulumi.Output[str]
    vpc_cidr: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    public_subnet_ids: pulumi.Output[list[str]]
    security_group_id: pulumi.Output[str]

    @classmethod
    def from_stack(cls, base_stack: str, opts: pulumi.ResourceOptions | None = None) -> NetworkRef:
        """Reference the network exported by the base stack (``build_base``'s outputs)."""
        ref = pulumi.StackReference(base_stack, opts=opts)
        return cls(
            vpc_id=ref.require_output("vpc_id"),
            vpc_cidr=ref.require_output("vpc_cidr"),
            private_subnet_ids=ref.require_output("private_subnet_ids"),
            public_subnet_ids=ref.get_output("public_subnet_ids").apply(lambda v: v or []),
            security_group_id=ref.require_output("security_group_id"),
        )
