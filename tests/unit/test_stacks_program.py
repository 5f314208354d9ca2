"""The Pulumi programs under Pulumi's own mocks (``pulumi.runtime.set_mocks``): tags, names,
deletion settings, secrets, outputs and shared-base mode, without a Pulumi CLI or AWS.

``set_mocks`` is global state of the Pulumi SDK: these tests live in their own module and set
fresh mocks before every program run.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import string
from datetime import UTC, datetime
from typing import Any

import pulumi
import pulumi_aws as aws
import pytest

from envkit.naming import (
    TAG_EXPIRES_AT,
    TAG_OWNER,
    TAG_PIPELINE_ID,
    is_valid_pg_database_name,
    is_valid_rds_identifier,
)
from envkit.outputs import CONTRACT_KEYS

pytestmark = pytest.mark.aws

BASE_OUTPUTS = {
    "vpc_id": "vpc-base",
    "vpc_cidr": "10.42.0.0/16",
    "private_subnet_ids": ["subnet-a", "subnet-b"],
    "public_subnet_ids": [],
    "security_group_id": "sg-base",
}
EXPIRES = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


class Recorder(pulumi.runtime.Mocks):
    """Records every resource registration and answers like AWS would (ids, arns, endpoints)."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        state = dict(args.inputs)
        rid = f"{args.name}-id"
        if args.typ == "pulumi:pulumi:StackReference":
            state["outputs"] = BASE_OUTPUTS
        if args.typ == "aws:rds/instance:Instance":
            address = f"{args.inputs['identifier']}.abc123.us-east-1.rds.amazonaws.com"
            state.update(address=address, port=5432, endpoint=f"{address}:5432")
        state.setdefault("arn", f"arn:aws:mock:us-east-1:123456789012:{args.typ}/{args.name}")
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append(args.token)
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": ["us-east-1a", "us-east-1b", "us-east-1c"], "zoneIds": []}
        return {}

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]


def config(pipeline_id: str = "pr-42", **changes: Any) -> Any:
    from envkit._stacks.config import ServiceArgs, StackConfig

    services = (
        ServiceArgs("api", "public.ecr.aws/nginx/nginx:1.27", 8080, env={"MODE": "test"}),
        ServiceArgs("worker", "public.ecr.aws/docker/library/busybox:1", 9000, desired_count=2),
    )
    values: dict[str, Any] = {
        "pipeline_id": pipeline_id,
        "expires_at": EXPIRES,
        "owner": "github:acme/shop/123",
        "services": services,
    }
    values.update(changes)
    return StackConfig(**values)


def run(cfg: Any) -> tuple[Recorder, dict[str, Any], dict[str, bool]]:
    """Run the program under fresh mocks; return registrations, output values, secretness."""
    from envkit._stacks import program

    mocks = Recorder()
    pulumi.runtime.set_mocks(mocks, project="envkit", stack=cfg.pipeline_id, preview=False)
    values: dict[str, Any] = {}
    secret: dict[str, bool] = {}

    @pulumi.runtime.test
    def body() -> Any:
        outputs = program.build(cfg)
        names = list(outputs)

        async def collect() -> None:
            for name in names:
                output = pulumi.Output.from_input(outputs[name])
                values[name] = await output.future()
                secret[name] = await output.is_secret()

        return pulumi.Output.from_input(asyncio.ensure_future(collect()))

    body()
    return mocks, values, secret


def _args_class(typ: str) -> type:
    """The pulumi_aws Args class of a type token such as 'aws:ec2/vpc:Vpc'."""
    module_path, cls = typ.split(":")[1].split("/", maxsplit=1)[0], typ.split(":")[2]
    module = getattr(aws, module_path)
    return getattr(module, f"{cls}Args")  # type: ignore[no-any-return]


def test_every_taggable_resource_of_every_component_carries_the_three_tags() -> None:
    mocks, _, _ = run(config(public=True, ci_cidr="203.0.113.7/32"))
    types = {r.typ for r in mocks.resources}
    # Every component and every kind of child is there (public mode adds IGW and routes).
    for expected in (
        "envkit:aws:Network", "envkit:aws:Database", "envkit:aws:Cluster",
        "aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet", "aws:ec2/securityGroup:SecurityGroup",
        "aws:ec2/internetGateway:InternetGateway", "aws:ec2/routeTable:RouteTable",
        "aws:rds/subnetGroup:SubnetGroup", "aws:rds/instance:Instance", "aws:ecs/cluster:Cluster",
        "aws:ecs/service:Service", "aws:ecs/taskDefinition:TaskDefinition",
        "aws:iam/role:Role", "aws:cloudwatch/logGroup:LogGroup",
    ):  # fmt: skip
        assert expected in types, expected
    untaggable = []
    for res in mocks.resources:
        if not res.typ.startswith("aws:"):
            continue
        takes_tags = "tags" in inspect.signature(_args_class(res.typ).__init__).parameters
        if not takes_tags:
            untaggable.append(res.typ)
            continue
        tags = res.inputs.get("tags") or {}
        assert tags.get(TAG_PIPELINE_ID) == "pr-42", res.typ
        assert tags.get(TAG_EXPIRES_AT) == "2030-01-02T03:04:05Z", res.typ
        assert tags.get(TAG_OWNER) == "github:acme/shop/123", res.typ
    # Only AWS types with no tags at all are exempt (associations, attachments).
    assert set(untaggable) <= {
        "aws:ec2/routeTableAssociation:RouteTableAssociation",
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        "aws:ecs/clusterCapacityProviders:ClusterCapacityProviders",
    }
    # ...and the provider puts the same tags on as default_tags (what AWS itself applies).
    (provider,) = mocks.of_type("pulumi:providers:aws")
    default_tags = provider.inputs["defaultTags"]
    assert "envkit:pipeline-id" in str(default_tags)


def test_components_are_parents_and_children_are_named_from_the_pipeline() -> None:
    mocks, _, _ = run(config())
    (instance,) = mocks.of_type("aws:rds/instance:Instance")
    assert instance.inputs["identifier"] == "envkit-pr-42-db"
    assert instance.inputs["dbName"] == "envkitpr42"
    (cluster,) = mocks.of_type("aws:ecs/cluster:Cluster")
    assert cluster.inputs["name"] == "envkit-pr-42"
    (group,) = mocks.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert group.inputs["revokeRulesOnDelete"] is True


def test_database_has_no_deletion_protection_no_final_snapshot_and_is_encrypted() -> None:
    mocks, _, _ = run(config())
    (instance,) = mocks.of_type("aws:rds/instance:Instance")
    inputs = instance.inputs
    assert inputs["deletionProtection"] is False
    assert inputs["skipFinalSnapshot"] is True
    assert inputs["storageEncrypted"] is True
    assert inputs["copyTagsToSnapshot"] is True
    assert inputs["engine"] == "postgres"
    assert inputs["instanceClass"] == "db.t4g.micro"
    assert inputs["publiclyAccessible"] is False


def test_security_group_admits_postgres_only_from_the_vpc_and_the_ci_cidr() -> None:
    mocks, _, _ = run(config(ci_cidr="203.0.113.7/32"))
    (group,) = mocks.of_type("aws:ec2/securityGroup:SecurityGroup")
    pg_rules = [r for r in group.inputs["ingress"] if r.get("fromPort") == 5432]
    assert len(pg_rules) == 1
    assert sorted(pg_rules[0]["cidrBlocks"]) == ["10.42.0.0/16", "203.0.113.7/32"]
    others = [r for r in group.inputs["ingress"] if r.get("fromPort") != 5432]
    assert all(r.get("self") is True and not r.get("cidrBlocks") for r in others)
    subnets = mocks.of_type("aws:ec2/subnet:Subnet")
    assert {s.inputs["availabilityZone"] for s in subnets} == {"us-east-1a", "us-east-1b"}


def test_password_and_url_are_secrets_and_outputs_follow_the_contract() -> None:
    _, values, secret = run(config())
    for key in CONTRACT_KEYS:
        assert key in values, key
    for key in ("database_endpoint", "database_name", "ecs_cluster", "vpc_id"):
        assert key in values, key
    assert secret["DATABASE_PASSWORD"] and secret["DATABASE_URL"]
    assert not secret["DATABASE_HOST"] and not secret["CLUSTER_NAME"]
    password = values["DATABASE_PASSWORD"]
    assert len(password) >= 24
    assert values["DATABASE_URL"] == (
        f"postgresql://envkit:{password}@envkit-pr-42-db.abc123.us-east-1.rds.amazonaws.com"
        ":5432/envkitpr42"
    )
    assert values["DATABASE_PORT"] == "5432"
    assert values["ENVKIT_PROVIDER"] == "aws"
    assert values["ENVKIT_PIPELINE_ID"] == "pr-42"
    assert values["NETWORK_ID"] == values["vpc_id"] == "network-vpc-id"
    assert values["CLUSTER_NAME"] == values["ecs_cluster"] == "envkit-pr-42"
    assert values["SERVICE_API_URL"] == "http://api.envkit-pr-42.internal:8080"
    assert values["SERVICE_WORKER_URL"] == "http://worker.envkit-pr-42.internal:9000"


def test_password_from_stack_config_is_used_and_stays_secret() -> None:
    given = pulumi.Output.secret("from-config-Secret_1")
    _, values, secret = run(config(db_password=given, services=()))
    assert values["DATABASE_PASSWORD"] == "from-config-Secret_1"
    assert secret["DATABASE_PASSWORD"]
    assert not any(k.startswith("SERVICE_") for k in values)


def test_shared_base_mode_references_the_base_stack_instead_of_creating_a_vpc() -> None:
    mocks, values, _ = run(config(base_stack="acme/envkit/base"))
    assert not mocks.of_type("aws:ec2/vpc:Vpc")
    assert not mocks.of_type("aws:ec2/subnet:Subnet")
    assert not mocks.of_type("aws:ec2/securityGroup:SecurityGroup")
    (ref,) = mocks.of_type("pulumi:pulumi:StackReference")
    assert ref.name == "acme/envkit/base"
    (group,) = mocks.of_type("aws:rds/subnetGroup:SubnetGroup")
    assert group.inputs["subnetIds"] == ["subnet-a", "subnet-b"]
    (instance,) = mocks.of_type("aws:rds/instance:Instance")
    assert instance.inputs["vpcSecurityGroupIds"] == ["sg-base"]
    assert values["NETWORK_ID"] == "vpc-base"


def test_base_stack_holds_only_the_network() -> None:
    mocks, values, _ = run(config("base", role="base", services=()))
    assert mocks.of_type("aws:ec2/vpc:Vpc")
    assert not mocks.of_type("aws:rds/instance:Instance")
    assert not mocks.of_type("aws:ecs/cluster:Cluster")
    assert set(values) == set(BASE_OUTPUTS)


def _random_ids(count: int) -> list[str]:
    rng = random.Random(6)
    alphabet = string.ascii_lowercase + string.digits + "-"
    ids = []
    for i in range(count):
        length = 40 if i % 4 == 0 else (63 if i % 7 == 0 else rng.randint(1, 63))
        first = rng.choice(string.ascii_lowercase + string.digits)
        ids.append(first + "".join(rng.choice(alphabet) for _ in range(length - 1)))
    ids += ["pr--42", "trailing-", "9starts-with-digit"]
    return ids


@pytest.mark.slow  # ~40 s: the mock monitor costs ~10 ms per resource, 3,400 resources
def test_names_are_valid_aws_names_for_200_random_pipeline_ids() -> None:
    from envkit._stacks.cluster import Cluster, ClusterArgs
    from envkit._stacks.config import ServiceArgs
    from envkit._stacks.database import Database, DatabaseArgs
    from envkit._stacks.network import Network, NetworkArgs

    from envkit.naming import validate_pipeline_id

    ids = [validate_pipeline_id(p) for p in _random_ids(200)]
    assert sum(len(p) == 40 for p in ids) >= 40
    mocks = Recorder()
    pulumi.runtime.set_mocks(mocks, project="envkit", stack="names", preview=False)

    @pulumi.runtime.test
    def body() -> Any:
        # One program run building every component for every ID (fast: one mock session).
        for i, pid in enumerate(ids):
            net = Network(f"n{i}", NetworkArgs(pid, availability_zones=("a", "b")))
            groups = net.security_group_id.apply(lambda g: [g])
            Database(f"d{i}", DatabaseArgs(pid, net.private_subnet_ids, groups))
            service = ServiceArgs("api", "nginx", 80)
            Cluster(
                f"c{i}",
                ClusterArgs(
                    pid, "us-east-1", net.vpc_id, net.private_subnet_ids, groups, [service]
                ),
            )
        return pulumi.Output.from_input(1)

    body()
    identifiers = [r.inputs["identifier"] for r in mocks.of_type("aws:rds/instance:Instance")]
    assert len(identifiers) == len(ids)
    assert all(is_valid_rds_identifier(name) for name in identifiers), identifiers
    # Distinct pipelines never share a database identifier.
    assert len(set(identifiers)) == len(set(ids))
    for res in mocks.of_type("aws:rds/instance:Instance"):
        assert is_valid_pg_database_name(res.inputs["dbName"]), res.inputs["dbName"]
    for res in mocks.of_type("aws:iam/role:Role"):
        assert len(res.inputs["name"]) <= 64
    for res in mocks.resources:
        name = res.inputs.get("name")
        if res.typ.startswith("aws:") and isinstance(name, str) and not name.startswith("/"):
            assert len(name) <= 255 and "--" not in name and not name.endswith("-"), name
        for value in (res.inputs.get("tags") or {}).values():
            assert len(value) <= 256
    for res in mocks.of_type("aws:servicediscovery/privateDnsNamespace:PrivateDnsNamespace"):
        assert all(0 < len(label) <= 63 for label in res.inputs["name"].split("."))


def test_service_env_placeholders_are_filled_from_stack_outputs() -> None:
    from envkit._stacks.config import ServiceArgs

    api = ServiceArgs("api", "public.ecr.aws/nginx/nginx:1.27", 8080,
                      env={"DB": "{DATABASE_URL}", "HOSTNAME": "{DATABASE_HOST}",
                           "KEEP": "{NOT_AN_OUTPUT}", "PLAIN": "x"})
    mocks, _, _ = run(config(services=(api,)))
    (task,) = mocks.of_type("aws:ecs/taskDefinition:TaskDefinition")
    definitions = task.inputs["containerDefinitions"]
    # The URL carries the database password, so the whole definition is a secret: the mock
    # engine hands it over wrapped as {<secret sig>: ..., "value": ...}.
    assert isinstance(definitions, dict)
    definitions = definitions["value"]
    env = {e["name"]: e["value"] for e in json.loads(definitions)[0]["environment"]}
    assert env["DB"].startswith("postgresql://") and "{" not in env["DB"]
    assert env["HOSTNAME"].endswith(".rds.amazonaws.com")
    assert env["KEEP"] == "{NOT_AN_OUTPUT}" and env["PLAIN"] == "x"
