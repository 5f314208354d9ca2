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
        self.call_args: list[pulumi.runtime.MockCallArgs] = []
        self.transforms: list[Any] = []

    def register_transform(self, transform: Any) -> None:
        # The mock monitor does not run stack transforms; the engine does, so run them here.
        self.transforms.append(transform)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        for transform in self.transforms:
            result = transform(
                pulumi.ResourceTransformArgs(
                    custom=True, type_=args.typ, name=args.name, props=dict(args.inputs),
                    opts=pulumi.ResourceOptions(),
                )
            )  # fmt: skip
            if result is not None:
                args.inputs = result.props
        self.resources.append(args)
        state = dict(args.inputs)
        rid = f"{args.name}-id"
        if args.typ == "pulumi:pulumi:StackReference":
            state["outputs"] = BASE_OUTPUTS
        if args.typ == "aws:rds/instance:Instance":
            address = f"{args.inputs['identifier']}.abc123.us-east-1.rds.amazonaws.com"
            state.update(address=address, port=5432, endpoint=f"{address}:5432")
        if args.typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            rg = args.inputs["replicationGroupId"]
            state.update(primaryEndpointAddress=f"master.{rg}.abc123.use1.cache.amazonaws.com")
        if args.typ == "aws:secretsmanager/secret:Secret":
            state["arn"] = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{args.name}-AbC"
        state.setdefault("arn", f"arn:aws:mock:us-east-1:123456789012:{args.typ}/{args.name}")
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append(args.token)
        self.call_args.append(args)
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


def _definition(mocks: Recorder) -> dict[str, Any]:
    (task,) = mocks.of_type("aws:ecs/taskDefinition:TaskDefinition")
    definitions = task.inputs["containerDefinitions"]
    assert isinstance(definitions, str), "a task definition must hold no secret in clear"
    return json.loads(definitions)[0]  # type: ignore[no-any-return]


def test_service_env_placeholders_are_filled_and_the_password_is_a_secret_reference() -> None:
    # Defect 7: {DATABASE_URL} used to put the password in clear in the task definition.
    from envkit._stacks.config import ServiceArgs

    api = ServiceArgs(
        "api",
        "public.ecr.aws/nginx/nginx:1.27",
        8080,
        env={
            "DB": "{DATABASE_URL}",
            "HOSTNAME": "{DATABASE_HOST}",
            "KEEP": "{NOT_AN_OUTPUT}",
            "PLAIN": "x",
        },
    )
    mocks, values, _ = run(config(services=(api,)))
    container = _definition(mocks)
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert "DB" not in env and values["DATABASE_PASSWORD"] not in json.dumps(container)
    assert env["HOSTNAME"].endswith(".rds.amazonaws.com")
    assert env["KEEP"] == "{NOT_AN_OUTPUT}" and env["PLAIN"] == "x"
    (secret,) = mocks.of_type("aws:secretsmanager/secret:Secret")
    assert secret.inputs["recoveryWindowInDays"] == 0
    (db,) = container["secrets"]
    assert db["name"] == "DB" and db["valueFrom"].endswith(":url::")
    # Defect 5: the execution role may read exactly that secret.
    (policy,) = mocks.of_type("aws:iam/rolePolicy:RolePolicy")
    statements = json.loads(policy.inputs["policy"])["Statement"]
    assert statements[0]["Action"] == ["secretsmanager:GetSecretValue"]
    assert statements[0]["Resource"] == [db["valueFrom"].removesuffix(":url::")]


def test_a_password_embedded_in_other_text_is_refused() -> None:
    from envkit._stacks import program
    from envkit._stacks.config import ServiceArgs

    api = ServiceArgs("api", "nginx", 80, env={"DSN": "db={DATABASE_URL}"})
    with pytest.raises(ValueError, match="embeds a password"):
        program._with_outputs(api, {}, pulumi.Output.from_input("arn:x"))


def test_execution_role_reads_the_referenced_secrets_and_parameters() -> None:
    # Defect 5: AmazonECSTaskExecutionRolePolicy has no secretsmanager/ssm/kms actions.
    from envkit._stacks.config import ServiceArgs

    sm = "arn:aws:secretsmanager:us-east-1:123456789012:secret:api-key-AbCdEf"
    ssm = "arn:aws:ssm:us-east-1:123456789012:parameter/envkit/token"
    api = ServiceArgs("api", "nginx", 80, secrets={"KEY": f"{sm}:key::", "TOKEN": ssm,
                                                    "NAMED": "shared/flag"})  # fmt: skip
    mocks, _, _ = run(config(services=(api,)))
    (policy,) = mocks.of_type("aws:iam/rolePolicy:RolePolicy")
    by_action = {s["Action"][0]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    assert by_action["secretsmanager:GetSecretValue"]["Resource"] == [sm]
    assert sorted(by_action["ssm:GetParameters"]["Resource"]) == [
        "arn:aws:ssm:us-east-1:*:parameter/shared/flag", ssm,
    ]  # fmt: skip
    kms = by_action["kms:Decrypt"]["Condition"]["StringEquals"]["kms:ViaService"]
    assert kms == ["secretsmanager.us-east-1.amazonaws.com", "ssm.us-east-1.amazonaws.com"]
    # Without secrets there is no extra policy.
    mocks, _, _ = run(config())
    assert not mocks.of_type("aws:iam/rolePolicy:RolePolicy")


@pytest.mark.parametrize("egress", ["public", "nat", "endpoints"])
def test_every_egress_mode_gives_tasks_a_way_to_ecr_and_logs(egress: str) -> None:
    # Defect 3: private subnets without NAT or endpoints and no public IP: tasks cannot start.
    mocks, _, _ = run(config(egress=egress))
    types = [r.typ for r in mocks.resources]
    subnets = {r.name: r for r in mocks.of_type("aws:ec2/subnet:Subnet")}
    services = mocks.of_type("aws:ecs/service:Service")
    for service in services:
        network = service.inputs["networkConfiguration"]
        used = {name for name in subnets if f"{name}-id" in network["subnets"]}
        if egress == "public":
            assert network["assignPublicIp"] is True
            assert used == {"network-public-0", "network-public-1"}
        else:
            assert network["assignPublicIp"] is False
            assert used == {"network-private-0", "network-private-1"}
        assert service.inputs["waitForSteadyState"] is True
        assert service.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": False}
    assert ("aws:ec2/natGateway:NatGateway" in types) == (egress == "nat")
    assert ("aws:ec2/internetGateway:InternetGateway" in types) == (egress != "endpoints")
    endpoints = {r.inputs["serviceName"] for r in mocks.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")}
    if egress == "endpoints":
        names = ("s3", "ecr.api", "ecr.dkr", "logs", "secretsmanager", "ssm")
        assert endpoints == {f"com.amazonaws.us-east-1.{s}" for s in names}
    else:
        assert not endpoints
    if egress != "public":
        routes = [r for r in mocks.of_type("aws:ec2/routeTable:RouteTable")
                  if r.name == "network-private"]  # fmt: skip
        assert routes and (egress == "endpoints") == (routes[0].inputs.get("routes") in ([], None))


def test_zones_exclude_local_zones_that_need_an_opt_in() -> None:
    # Defect 7: without the filter an opted-in Local Zone can be a "first available zone".
    mocks, _, _ = run(config())
    (call,) = [c for c in mocks.call_args if "getAvailabilityZones" in c.token]
    assert call.args["filters"] == [{"name": "opt-in-status", "values": ["opt-in-not-required"]}]


def test_database_settings_and_expiry_outputs_reach_the_program() -> None:
    # Defects 1/4: public + CIDR allow-list, engine, class; expiry and owner in the state.
    mocks, values, _ = run(config(public=True, ci_cidr="203.0.113.7/32", engine_version="17",
                                  instance_class="db.t4g.small", services=()))  # fmt: skip
    (instance,) = mocks.of_type("aws:rds/instance:Instance")
    assert instance.inputs["publiclyAccessible"] is True
    assert instance.inputs["engineVersion"] == "17"
    assert instance.inputs["instanceClass"] == "db.t4g.small"
    (group,) = mocks.of_type("aws:rds/subnetGroup:SubnetGroup")
    assert group.inputs["subnetIds"] == ["network-public-0-id", "network-public-1-id"]
    assert values["envkit_expires_at"] == "2030-01-02T03:04:05Z"
    assert values["envkit_owner"] == "github:acme/shop/123"


def test_fargate_cpu_memory_pairs_are_checked() -> None:
    from envkit._stacks.config import ServiceArgs

    ServiceArgs("api", "nginx", 80, cpu=1024, memory=8192)
    with pytest.raises(ValueError, match="memory is one of 512, 1024, 2048"):
        ServiceArgs("api", "nginx", 80, cpu=256, memory=4096)
    with pytest.raises(ValueError, match="cpu is one of"):
        ServiceArgs("api", "nginx", 80, cpu=300, memory=512)


def test_pulumi_up_without_a_password_in_config_refuses_to_generate_one() -> None:
    # Defect 7: a password generated per `pulumi up` from Pulumi.yaml rotated it every run.
    from envkit._stacks import program

    pulumi.runtime.set_mocks(Recorder(), project="envkit", stack="pr-42", preview=False)
    pulumi.runtime.set_all_config({"envkit:pipelineId": "pr-42",
                                   "envkit:expiresAt": "2030-01-02T03:04:05Z"})  # fmt: skip
    try:
        with pytest.raises(pulumi.RunError, match="envkit:dbPassword is not set"):
            program.config_from_pulumi()
        assert program.config_from_pulumi("given-Secret_1").db_password is not None
    finally:
        pulumi.runtime.set_all_config({})


# -- Redis (ElastiCache) ------------------------------------------------------------------------
def _secret_input(value: Any) -> Any:
    """The value of an input the mock monitor received as a secret (asserting it was one)."""
    assert isinstance(value, dict) and "value" in value, f"not a secret: {value!r}"
    return value["value"]


def test_redis_is_one_tagged_encrypted_replication_group_in_the_private_subnets() -> None:
    mocks, values, secret = run(
        config(redis=True, redis_version="7.1", ci_cidr="203.0.113.7/32", public=True)
    )
    (group,) = mocks.of_type("aws:elasticache/replicationGroup:ReplicationGroup")
    inputs = group.inputs
    assert inputs["replicationGroupId"] == "envkit-pr-42-redis"
    assert inputs["engine"] == "redis" and inputs["engineVersion"] == "7.1"
    assert inputs["nodeType"] == "cache.t4g.micro" and inputs["numCacheClusters"] == 1
    assert inputs["transitEncryptionEnabled"] is True and inputs["atRestEncryptionEnabled"] is True
    assert inputs["snapshotRetentionLimit"] == 0  # no persistence: no snapshot at all
    assert inputs["port"] == 6379 and len(_secret_input(inputs["authToken"])) >= 32
    (subnets,) = mocks.of_type("aws:elasticache/subnetGroup:SubnetGroup")
    # Private subnets even in public mode: ElastiCache is never reachable from the internet.
    assert subnets.inputs["subnetIds"] == ["network-private-0-id", "network-private-1-id"]
    assert inputs["subnetGroupName"] == subnets.inputs["name"]
    (cache_sg,) = [g for g in mocks.of_type("aws:ec2/securityGroup:SecurityGroup")
                   if g.name == "cache-sg"]  # fmt: skip
    (rule,) = cache_sg.inputs["ingress"]
    assert (rule["fromPort"], rule["toPort"]) == (6379, 6379)
    assert sorted(rule["cidrBlocks"]) == ["10.42.0.0/16", "203.0.113.7/32"]
    assert inputs["securityGroupIds"] == ["cache-sg-id"]
    for res in (group, subnets, cache_sg):
        assert res.inputs["tags"][TAG_PIPELINE_ID] == "pr-42", res.typ
        assert res.inputs["tags"][TAG_EXPIRES_AT] == "2030-01-02T03:04:05Z", res.typ
    token = _secret_input(inputs["authToken"])
    host = "master.envkit-pr-42-redis.abc123.use1.cache.amazonaws.com"
    assert values["REDIS_URL"] == f"rediss://:{token}@{host}:6379"
    assert values["REDIS_HOST"] == host and values["REDIS_PORT"] == "6379"
    assert secret["REDIS_URL"] and not secret["REDIS_HOST"] and not secret["REDIS_PORT"]


def test_redis_options_token_and_persistence_reach_the_replication_group() -> None:
    token = pulumi.Output.secret("given-token-0123456789abcdef")
    mocks, values, secret = run(config(redis=True, redis_engine="valkey", redis_persistence=True,
                                       redis_node_type="cache.t4g.small", redis_token=token,
                                       services=()))  # fmt: skip
    (group,) = mocks.of_type("aws:elasticache/replicationGroup:ReplicationGroup")
    assert group.inputs["engine"] == "valkey" and "engineVersion" not in group.inputs
    assert group.inputs["nodeType"] == "cache.t4g.small"
    assert group.inputs["snapshotRetentionLimit"] == 1
    assert _secret_input(group.inputs["authToken"]) == "given-token-0123456789abcdef"
    assert values["REDIS_URL"].startswith("rediss://:given-token-0123456789abcdef@")
    assert secret["REDIS_URL"]


def test_a_bare_major_version_becomes_one_elasticache_accepts() -> None:
    from envkit._stacks.cache import engine_version

    assert engine_version("redis", "7") == "7.1" and engine_version("valkey", "8") == "8.0"
    assert engine_version("redis", "6") == "6.x" and engine_version("redis", "7.0") == "7.0"
    assert engine_version("valkey", None) is None
    mocks, _, _ = run(config(redis=True, redis_version="7", services=()))
    (group,) = mocks.of_type("aws:elasticache/replicationGroup:ReplicationGroup")
    assert group.inputs["engineVersion"] == "7.1"


def test_without_redis_there_is_no_cache_and_no_redis_output() -> None:
    mocks, values, _ = run(config(services=()))
    assert not any(r.typ.startswith("aws:elasticache") for r in mocks.resources)
    assert not any(k.startswith("REDIS_") for k in values)


def test_a_service_asking_for_the_redis_url_gets_a_secret_reference() -> None:
    from envkit._stacks.config import ServiceArgs

    api = ServiceArgs("api", "nginx", 80, env={"CACHE": "{REDIS_URL}", "CH": "{REDIS_HOST}"})
    mocks, values, _ = run(config(redis=True, services=(api,)))
    container = _definition(mocks)
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["CH"] == values["REDIS_HOST"] and "CACHE" not in env
    assert values["REDIS_URL"] not in json.dumps(container)
    (ref,) = [s for s in container["secrets"] if s["name"] == "CACHE"]
    assert ref["valueFrom"].endswith(":redis_url::")
    (version,) = mocks.of_type("aws:secretsmanager/secretVersion:SecretVersion")
    stored = json.loads(_secret_input(version.inputs["secretString"]))
    assert stored["redis_url"] == values["REDIS_URL"]


def test_redis_in_shared_base_mode_uses_the_base_network() -> None:
    mocks, _, _ = run(config(base_stack="acme/envkit/base", redis=True, services=()))
    (subnets,) = mocks.of_type("aws:elasticache/subnetGroup:SubnetGroup")
    assert subnets.inputs["subnetIds"] == ["subnet-a", "subnet-b"]
    (group,) = mocks.of_type("aws:ec2/securityGroup:SecurityGroup")
    assert group.inputs["vpcId"] == "vpc-base"
    assert group.inputs["ingress"][0]["cidrBlocks"] == ["10.42.0.0/16"]


def test_redis_config_round_trips_and_pulumi_up_without_a_token_refuses() -> None:
    from envkit._stacks import program
    from envkit._stacks.config import StackConfig

    cfg = config(redis=True, redis_engine="valkey", redis_version="8.0", services=())
    plain = {k.removeprefix("envkit:"): v for k, v in cfg.to_config().items()}
    back = StackConfig.from_config(plain)
    assert (back.redis, back.redis_engine, back.redis_version) == (True, "valkey", "8.0")
    pulumi.runtime.set_mocks(Recorder(), project="envkit", stack="pr-42", preview=False)
    pulumi.runtime.set_all_config({f"envkit:{k}": v for k, v in plain.items()})
    try:
        with pytest.raises(pulumi.RunError, match="envkit:redisToken is not set"):
            program.config_from_pulumi("db-Secret_1")
        assert program.config_from_pulumi("db-Secret_1", "tok" * 6).redis_token is not None
    finally:
        pulumi.runtime.set_all_config({})


# -- the shared RDS instance (issue 17) ---------------------------------------------------------
def test_the_base_stack_can_hold_one_shared_rds_instance_with_a_secret_password() -> None:
    password = pulumi.Output.secret("base-Secret_1")
    mocks, values, secret = run(config("base", role="base", services=(), shared_database=True,
                                       shared_instance_class="db.t4g.medium",
                                       db_password=password))  # fmt: skip
    (instance,) = mocks.of_type("aws:rds/instance:Instance")
    assert instance.inputs["identifier"] == "envkit-base-db"
    assert instance.inputs["instanceClass"] == "db.t4g.medium"
    assert instance.inputs["deletionProtection"] is False
    assert instance.inputs["tags"][TAG_PIPELINE_ID] == "base"
    assert values["shared_database_identifier"] == "envkit-base-db"
    assert values["shared_database_address"].startswith("envkit-base-db.")
    assert values["shared_database_port"] == 5432 and values["shared_database_user"] == "envkit"
    assert values["shared_database_password"] == "base-Secret_1"
    assert secret["shared_database_password"] and not secret["shared_database_address"]
    assert not mocks.of_type("aws:ecs/cluster:Cluster")


def test_a_pipeline_on_the_shared_instance_creates_no_rds_instance() -> None:
    from envkit._stacks.config import ServiceArgs

    api = ServiceArgs("api", "nginx", 80, env={"DB": "{DATABASE_URL}", "H": "{DATABASE_HOST}"})
    external = {"host": "envkit-base-db.x.rds.amazonaws.com", "port": "5432",
                "name": "envkit_pr_42", "user": "envkit_pr_42"}  # fmt: skip
    mocks, values, secret = run(config(base_stack="acme/envkit/base", shared_database=True,
                                       external_database=external, services=(api,),
                                       db_password=pulumi.Output.secret("pipe-Secret_1")))
    assert not mocks.of_type("aws:rds/instance:Instance")
    assert not mocks.of_type("aws:rds/subnetGroup:SubnetGroup")
    assert values["DATABASE_URL"] == (
        "postgresql://envkit_pr_42:pipe-Secret_1@envkit-base-db.x.rds.amazonaws.com:5432/envkit_pr_42"
    )
    assert values["DATABASE_HOST"] == external["host"] and values["DATABASE_PORT"] == "5432"
    assert secret["DATABASE_URL"] and secret["DATABASE_PASSWORD"]
    assert values["database_endpoint"] == f"{external['host']}:5432"
    container = _definition(mocks)
    assert "pipe-Secret_1" not in json.dumps(container)
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["H"] == external["host"]


def test_shared_database_config_round_trips_and_the_base_needs_a_stored_password() -> None:
    from envkit._stacks import program
    from envkit._stacks.config import StackConfig

    external = {"host": "h", "port": "5432", "name": "n", "user": "u"}
    cfg = config(shared_database=True, external_database=external, services=())
    plain = {k.removeprefix("envkit:"): v for k, v in cfg.to_config().items()}
    back = StackConfig.from_config(plain)
    assert back.shared_database and back.external_database == external
    pulumi.runtime.set_mocks(Recorder(), project="envkit", stack="base", preview=False)
    pulumi.runtime.set_all_config({"envkit:pipelineId": "base", "envkit:role": "base",
                                   "envkit:expiresAt": "2030-01-02T03:04:05Z",
                                   "envkit:sharedDatabase": "true"})  # fmt: skip
    try:
        # A password generated per `pulumi up` would rotate the shared instance's master one.
        with pytest.raises(pulumi.RunError, match="envkit:dbPassword is not set"):
            program.config_from_pulumi()
    finally:
        pulumi.runtime.set_all_config({})
