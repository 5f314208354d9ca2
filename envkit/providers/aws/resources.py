"""What the aws provider records of an environment: typed, stored in ``record.resources`` under
the keys envkit has always used (records of older envkits load and tear down).

Loading tolerates absent keys (``up`` killed before the stack existed) and values of the wrong
type (a hand-edited file): both read as unset, never an error. Saving writes only the fields that
are set and leaves every other key (the lifecycle's) as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from envkit.naming import aws_name, rds_identifier

if TYPE_CHECKING:
    from envkit.state import Record

_FIELDS = (
    "stack", "project", "region", "rds_identifier", "ecs_cluster", "redis_group", "shared_base",
)  # fmt: skip


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass
class AwsResources:
    """The stack of an environment and the names of what it holds."""

    pipeline_id: str
    stack: str | None = None
    project: str | None = None
    region: str | None = None
    rds_identifier: str | None = None
    ecs_cluster: str | None = None
    redis_group: str | None = None  # the ElastiCache replication group, when Redis was asked for
    # The base stack holding the shared RDS instance the pipeline's database is on (a reference:
    # the admin DSN is read from that stack's secret outputs when needed, never recorded).
    shared_base: str | None = None
    stack_outputs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, record: Record) -> AwsResources:
        """What ``record`` holds of this provider's resources (absent or bad values: unset)."""
        stored = record.resources
        outputs = stored.get("stack_outputs")
        return cls(
            record.pipeline_id,
            stack=_str(stored.get("stack")),
            project=_str(stored.get("project")),
            region=_str(stored.get("region")),
            rds_identifier=_str(stored.get("rds_identifier")),
            ecs_cluster=_str(stored.get("ecs_cluster")),
            redis_group=_str(stored.get("redis_group")),
            shared_base=_str(stored.get("shared_base")),
            stack_outputs=(
                {k: str(v) for k, v in outputs.items() if isinstance(k, str)}
                if isinstance(outputs, dict)
                else {}
            ),
        )

    def save(self, record: Record) -> None:
        """Write the fields that are set into ``record.resources`` (other keys untouched)."""
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None:
                record.resources[name] = value
        if self.stack_outputs:
            record.resources["stack_outputs"] = dict(self.stack_outputs)

    @property
    def database(self) -> str:
        """The RDS instance identifier (derived from the pipeline ID when not recorded); on the
        shared instance, that instance's."""
        return self.rds_identifier or rds_identifier(self.pipeline_id)

    @property
    def cluster(self) -> str:
        """The ECS cluster name (derived from the pipeline ID when not recorded)."""
        return self.ecs_cluster or aws_name(self.pipeline_id, limit=255)
