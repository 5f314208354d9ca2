"""The spec's services as ECS services: which specs the aws provider can run, and the
``ServiceArgs`` keyword arguments of the Pulumi program (``stacks/config.py``)."""

from __future__ import annotations

import re
from typing import Any

from envkit.spec_model import EnvSpec, render_known, spec_error

DEFAULT_PORT = 8080  # each Fargate task has its own network interface: a fixed port is fine
# ECS service names derived from these must stay within AWS's limits and character set.
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")


def check_spec(spec: EnvSpec) -> None:
    """``ConfigError`` (exit 2) when a service of ``spec`` cannot run on ECS: it needs an
    image, and a name ECS accepts."""
    for service in spec.services:
        if service.image is None:
            raise spec_error(
                spec.source,
                f"services.{service.name}.image",
                "is missing: the aws provider runs an image for every service.",
                hint='Add image = "registry/name:tag".',
            )
        if not _NAME.fullmatch(service.name):
            raise spec_error(
                spec.source,
                f"services.{service.name}",
                "cannot be an ECS service name: use 1-32 lower-case letters, digits and '-'.",
            )


def aws_services(spec: EnvSpec) -> list[dict[str, Any]]:
    """Keyword arguments of ``stacks.config.ServiceArgs`` for every service of ``spec``.

    ``env`` values keep their ``{PLACEHOLDER}``s: outputs such as ``{DATABASE_URL}`` exist only
    as Pulumi Outputs inside the program, which renders them when they resolve. ``HOST``/``PORT``
    are filled here (a task listens on all interfaces of its own ENI).
    """
    check_spec(spec)
    found = []
    for service in spec.services:
        port = service.port or DEFAULT_PORT
        fixed = {"HOST": "0.0.0.0", "PORT": str(port), "SERVICE_NAME": service.name}  # noqa: S104
        env = {k: render_known(v, fixed) for k, v in service.env.items()}
        env.update({"HOST": fixed["HOST"], "PORT": fixed["PORT"]})
        found.append({"name": service.name, "image": service.image, "port": port, "env": env})
    return found
