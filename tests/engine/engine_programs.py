"""Pulumi programs for the engine tier: resources that need no downloaded provider plugin.

The dynamic provider is pickled by reference, so it lives in this importable module (the
conftest puts its folder on the provider process's PYTHONPATH).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pulumi
from pulumi import dynamic


class FileProvider(dynamic.ResourceProvider):
    """Creates a file with the given text; deletes it on destroy."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        path = Path(props["path"])
        path.write_text(props["text"])
        return dynamic.CreateResult(id_=uuid.uuid4().hex, outs=dict(props))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        Path(props["path"]).unlink(missing_ok=True)


class File(dynamic.Resource):
    """A file on this machine, standing in for a cloud resource."""

    path: pulumi.Output[str]
    text: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        path: str,
        text: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(FileProvider(), name, {"path": path, "text": text}, opts)


class Environment(pulumi.ComponentResource):
    """A component that owns one file, as envkit's stacks own their resources."""

    def __init__(self, name: str, directory: str, text: pulumi.Input[str]) -> None:
        super().__init__("envkit:test:Environment", name)
        self.file = File(
            f"{name}-file", str(Path(directory) / f"{name}.txt"), text,
            pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"path": self.file.path})


def file_program(directory: Path, name: str = "env") -> Any:
    """An inline program: one component with one file; exports its path and a config value."""

    def program() -> None:
        config = pulumi.Config()
        text = config.get("text") or "hello"
        env = Environment(name, str(directory), text)
        pulumi.export("path", env.file.path)
        pulumi.export("text", env.file.text)
        pulumi.export("secret", config.get_secret("password"))

    return program


class SlowFileProvider(FileProvider):
    """Announces its create with a marker file, then blocks: the test kills the run there."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        import os
        import time

        parent = os.getppid()
        Path(props["path"]).with_name("creating").touch()
        # Block until the run is killed; then leave too, rather than outlive the test.
        deadline = time.monotonic() + 600
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.2)
        _exit_if_orphaned(parent)
        return super().create(props)


def _exit_if_orphaned(parent: int) -> None:
    """End this provider process when the engine that started it is gone: the CLI runs its
    plugins in their own process groups, so a SIGKILL of the run's group leaves them idle for
    good otherwise."""
    import os

    if os.getppid() != parent:
        os._exit(1)


class SlowFile(dynamic.Resource):
    """A :class:`File` whose create never finishes in time."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(SlowFileProvider(), name, {"path": path, "text": "slow"}, None)


def slow_program(directory: Path) -> Any:
    """An inline program whose only resource blocks in its create."""

    def program() -> None:
        SlowFile("env-file", str(directory / "env.txt"))

    return program


def wait_group_gone(pgid: int, timeout: float = 30) -> None:
    """Wait until no process of the group is left (killed ones linger until reaped), as the
    next run of a killed CI job only starts after the kill."""
    import os
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} outlived SIGKILL by {timeout} s")


# -- AWS stand-ins: dynamic resources whose create/delete call boto3 (against moto in server
# mode, through AWS_ENDPOINT_URL), tagged as envkit tags everything. ----------------------------
def _ec2(props: dict[str, Any]) -> Any:
    import boto3

    return boto3.session.Session(region_name=props["region"]).client("ec2")


def _tag_spec(kind: str, tags: dict[str, str]) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


def _pause_if_asked(props: dict[str, Any]) -> None:
    """After the AWS call, before the create returns: announce it with a marker file, then
    sleep (the test kills the run there); once the engine is gone, end the process too."""
    import os
    import time

    marker = props.get("pause_marker")
    if not marker:
        return
    parent = os.getppid()
    Path(marker).touch()
    deadline = time.monotonic() + float(props.get("pause_seconds", 30))
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.2)
    _exit_if_orphaned(parent)


def _unless_gone(action: Any, *gone: str) -> None:
    from botocore.exceptions import ClientError

    try:
        action()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in gone:
            raise


class VpcProvider(dynamic.ResourceProvider):
    """An EC2 VPC (the aws plugin's ``ec2.Vpc``, in miniature)."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        vpc = _ec2(props).create_vpc(
            CidrBlock=props["cidr"], TagSpecifications=_tag_spec("vpc", props["tags"])
        )["Vpc"]["VpcId"]
        _pause_if_asked(props)
        return dynamic.CreateResult(id_=vpc, outs=dict(props))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        _unless_gone(lambda: _ec2(props).delete_vpc(VpcId=id_), "InvalidVpcID.NotFound")


class SecurityGroupProvider(dynamic.ResourceProvider):
    """An EC2 security group in a VPC, auto-named as the aws plugin names it (a random suffix),
    so a create retried after a killed run does not collide with its orphan."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        name = f"{props['name']}-{uuid.uuid4().hex[:7]}"
        group = _ec2(props).create_security_group(
            GroupName=name, Description="envkit engine tier", VpcId=props["vpc_id"],
            TagSpecifications=_tag_spec("security-group", props["tags"]),
        )["GroupId"]
        _pause_if_asked(props)
        return dynamic.CreateResult(id_=group, outs={**props, "group_name": name})

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        _unless_gone(
            lambda: _ec2(props).delete_security_group(GroupId=id_), "InvalidGroup.NotFound"
        )


class Vpc(dynamic.Resource):
    """A :class:`VpcProvider` resource."""

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(VpcProvider(), name, props, opts)


class SecurityGroup(dynamic.Resource):
    """A :class:`SecurityGroupProvider` resource."""

    group_name: pulumi.Output[str]

    def __init__(
        self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(SecurityGroupProvider(), name, {"group_name": None, **props}, opts)


def aws_program(
    tags: dict[str, str], region: str, pause_marker: Path | None = None
) -> Any:
    """An inline program of a VPC and a security group in it, both tagged with ``tags``; with
    ``pause_marker`` the group's create pauses after its AWS call (see ``_pause_if_asked``)."""

    def program() -> None:
        common = {"region": region, "tags": tags}
        vpc = Vpc("vpc", {**common, "cidr": "10.42.0.0/16"})
        pause = {"pause_marker": str(pause_marker)} if pause_marker else {}
        group = SecurityGroup(
            "pg", {**common, **pause, "name": "envkit-pg", "vpc_id": vpc.id}
        )
        pulumi.export("vpc_id", vpc.id)
        pulumi.export("group_id", group.id)

    return program
