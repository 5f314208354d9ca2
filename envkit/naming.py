"""Pipeline IDs, names derived from them, and the tags put on everything envkit creates.

This is the one place that knows the shape of a pipeline ID and the length limits of the places
names derived from it go to (SQL identifiers, AWS resource names). Names that would not fit are
cut and given a hash suffix of the *full* ID, so two long IDs never collapse into one name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from envkit.errors import ConfigError

MAX_ID_LENGTH = 63
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_INVALID_RUN = re.compile(r"[^a-z0-9]+")

TAG_PIPELINE_ID = "envkit:pipeline-id"
TAG_EXPIRES_AT = "envkit:expires-at"
TAG_OWNER = "envkit:owner"
TAG_PRESERVE = "envkit:preserve"


def validate_pipeline_id(raw: str) -> str:
    """Return ``raw`` as a valid pipeline ID (upper case lowered) or raise ``ConfigError``."""
    candidate = raw.lower() if raw.isascii() else raw
    if not candidate:
        raise ConfigError(
            "The pipeline ID is empty.",
            hint="Pass an ID such as 'pr-42', or run inside a CI job so it can be detected.",
        )
    if len(candidate) > MAX_ID_LENGTH:
        raise ConfigError(
            f"The pipeline ID is {len(candidate)} characters long; at most {MAX_ID_LENGTH} "
            "are allowed.",
            hint="Use a shorter ID; envkit shortens derived names itself.",
        )
    if not _ID_RE.fullmatch(candidate):
        shown = ascii(raw) if len(raw) <= 80 else ascii(raw[:80]) + "…"
        raise ConfigError(
            f"The pipeline ID {shown} is not valid: use lower-case letters, digits and '-', "
            "starting with a letter or digit (for example 'pr-42').",
        )
    return candidate


def is_pipeline_id(text: str) -> bool:
    """Whether ``text`` already is a valid pipeline ID, exactly as given (no case folding):
    the check for IDs read back from file names, records and reservations."""
    return len(text) <= MAX_ID_LENGTH and _ID_RE.fullmatch(text) is not None


def normalise(raw: str) -> str:
    """Turn any CI-provided string into a valid pipeline ID (lower-cased, runs of other
    characters become '-', cut with a hash suffix when too long)."""
    folded = _INVALID_RUN.sub("-", raw.lower()).strip("-")
    if not folded:
        raise ConfigError(f"Cannot make a pipeline ID from {raw!r}: it has no letters or digits.")
    if len(folded) > MAX_ID_LENGTH:
        folded = shorten(folded, MAX_ID_LENGTH, digest_of=raw)
    return folded


@dataclass(frozen=True)
class _CiSource:
    """Where a CI system keeps the ID of the running pipeline: ``key`` is the same in every job
    and every re-run of a job of one pipeline; ``scope`` (optional) names the repository or
    project, so that runners shared by several of them never see two pipelines share an ID."""

    system: str
    key: str
    scope: str | None = None

    def describe(self) -> str:
        names = f"{self.scope} + {self.key}" if self.scope else self.key
        return f"{self.system} ({names})"


# First match wins. Nothing that changes between the jobs of a pipeline or between attempts of a
# job belongs here: GitHub's GITHUB_RUN_ATTEMPT grows on "Re-run failed jobs" (whose provision
# job is not run again), GitLab's CI_JOB_ID differs per job and per retry, and CircleCI's
# "Rerun workflow from failed" starts a new workflow ID while keeping its workspace ID.
_CI_SOURCES: tuple[_CiSource, ...] = (
    _CiSource("GitHub Actions", "GITHUB_RUN_ID", "GITHUB_REPOSITORY"),
    _CiSource("GitLab CI", "CI_PIPELINE_ID", "CI_PROJECT_PATH"),
    _CiSource("Buildkite", "BUILDKITE_BUILD_ID"),
    _CiSource("CircleCI", "CIRCLE_WORKFLOW_WORKSPACE_ID"),
    _CiSource("CircleCI", "CIRCLE_WORKFLOW_ID"),
    _CiSource("Jenkins", "BUILD_TAG"),  # jenkins-<job>-<build number>: one per build
)


def detect_pipeline_id(env: Mapping[str, str]) -> str | None:
    """The pipeline ID a CI system implies through its variables, normalised, or ``None``."""
    for source in _CI_SOURCES:
        key = env.get(source.key, "").strip()
        if not key:
            continue
        scope = env.get(source.scope, "").strip() if source.scope else ""
        return _scoped(scope, key) if scope else normalise(key)
    return None


def _scoped(scope: str, key: str) -> str:
    """``<scope>-<key>`` as a pipeline ID; when too long, the scope is cut (with a hash of it)
    rather than the key, so the run or pipeline number stays readable in ``envkit list``."""
    folded_scope = _INVALID_RUN.sub("-", scope.lower()).strip("-")
    folded_key = _INVALID_RUN.sub("-", key.lower()).strip("-")
    room = MAX_ID_LENGTH - len(folded_key) - 1
    if len(folded_scope) <= room or not folded_scope or not folded_key or room < 16:
        return normalise(f"{scope}-{key}")
    return f"{shorten(folded_scope, room, digest_of=scope)}-{folded_key}"


def resolve_pipeline_id(explicit: str | None, env: Mapping[str, str]) -> str:
    """An explicit ID, else ``ENVKIT_PIPELINE_ID`` (both validated), else the one detected from
    CI variables; ``ConfigError`` if none."""
    if explicit is not None:
        return validate_pipeline_id(explicit)
    named = env.get("ENVKIT_PIPELINE_ID", "").strip()
    if named:
        return validate_pipeline_id(named)
    detected = detect_pipeline_id(env)
    if detected is None:
        systems = ", ".join(source.describe() for source in _CI_SOURCES)
        raise ConfigError(
            "No pipeline ID was given and none could be detected.",
            hint="Pass one (e.g. 'envkit up pr-42'), set ENVKIT_PIPELINE_ID, or run in CI; "
            f"envkit reads {systems}.",
        )
    return detected


def short_hash(text: str, length: int = 8) -> str:
    """A stable lower-case hex digest prefix of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def shorten(name: str, limit: int, *, digest_of: str | None = None, sep: str = "-") -> str:
    """``name`` if it fits in ``limit`` characters, else a prefix plus a hash suffix."""
    if len(name) <= limit:
        return name
    suffix = short_hash(digest_of if digest_of is not None else name)
    head = name[: limit - len(suffix) - len(sep)].rstrip("-_")
    return f"{head}{sep}{suffix}"


def sql_identifier(pipeline_id: str, prefix: str = "envkit") -> str:
    """A PostgreSQL identifier (role or database) for a pipeline: underscores, never hyphens,
    at most 63 bytes (NAMEDATALEN - 1)."""
    base = f"{prefix}_{pipeline_id.replace('-', '_')}"
    return shorten(base, 63, digest_of=pipeline_id, sep="_")


# -- AWS names ------------------------------------------------------------------------------
# Lengths of the AWS names envkit sets (the tightest rule of each resource type).
RDS_IDENTIFIER_LIMIT = 63  # also: lowercase, starts with a letter, no '--', no trailing '-'
PG_DATABASE_NAME_LIMIT = 63  # RDS PostgreSQL DBName: letters and digits, starts with a letter
IAM_ROLE_NAME_LIMIT = 64
AWS_NAME_LIMIT = 255  # security groups, DB subnet groups, ECS clusters/services/task families
AWS_TAG_VALUE_LIMIT = 256
_RDS_IDENTIFIER_RE = re.compile(r"^[a-z](?!.*--)[a-z0-9-]*(?<!-)$")
_PG_DATABASE_NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")
_TAG_VALUE_INVALID = re.compile(r"[^\w .:/=+\-@]")


def aws_name(pipeline_id: str, kind: str = "", *, limit: int = RDS_IDENTIFIER_LIMIT) -> str:
    """``envkit-<id>[-<kind>]`` valid for every AWS name rule envkit meets: lowercase letters,
    digits and single hyphens, starting with a letter, no trailing hyphen, at most ``limit``.

    A pipeline ID with ``--`` or a trailing ``-`` is folded and given a hash suffix of the real
    ID, as is one too long, so two IDs never share a name; ``kind`` is never cut off.
    """
    folded = re.sub(r"-{2,}", "-", pipeline_id).strip("-")
    base = f"envkit-{folded}"
    room = limit - (len(kind) + 1 if kind else 0)
    if folded != pipeline_id or len(base) > room:
        suffix = short_hash(pipeline_id)
        base = f"{base[: room - len(suffix) - 1].rstrip('-')}-{suffix}"
    return f"{base}-{kind}" if kind else base


def rds_identifier(pipeline_id: str, kind: str = "db") -> str:
    """The RDS DB instance identifier of a pipeline's database."""
    return aws_name(pipeline_id, kind, limit=RDS_IDENTIFIER_LIMIT)


def is_valid_rds_identifier(name: str) -> bool:
    """Whether ``name`` meets the RDS identifier rules."""
    return len(name) <= RDS_IDENTIFIER_LIMIT and bool(_RDS_IDENTIFIER_RE.fullmatch(name))


def pg_database_name(pipeline_id: str) -> str:
    """The initial database name of an RDS PostgreSQL instance: letters and digits only."""
    return shorten(
        "envkit" + re.sub(r"[^a-z0-9]", "", pipeline_id),
        PG_DATABASE_NAME_LIMIT,
        digest_of=pipeline_id,
        sep="",
    )


def is_valid_pg_database_name(name: str) -> bool:
    """Whether ``name`` meets the RDS PostgreSQL DBName rules."""
    return len(name) <= PG_DATABASE_NAME_LIMIT and bool(_PG_DATABASE_NAME_RE.fullmatch(name))


def aws_tag_value(value: str) -> str:
    """``value`` with characters AWS tags refuse replaced by '_', cut to 256 characters."""
    return _TAG_VALUE_INVALID.sub("_", value)[:AWS_TAG_VALUE_LIMIT]


@dataclass(frozen=True)
class Tags:
    """The tags every resource of an environment carries."""

    pipeline_id: str
    expires_at: datetime
    owner: str
    preserve: bool = False

    def as_dict(self) -> dict[str, str]:
        """Tags as AWS-style key/value strings."""
        tags = {
            TAG_PIPELINE_ID: self.pipeline_id,
            TAG_EXPIRES_AT: iso_utc(self.expires_at),
            TAG_OWNER: self.owner,
        }
        if self.preserve:
            tags[TAG_PRESERVE] = "true"
        return tags

    def as_aws_tags(self) -> dict[str, str]:
        """Tags with values AWS accepts (an owner such as 'ci#7' would be refused)."""
        return {key: aws_tag_value(value) for key, value in self.as_dict().items()}


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a 'Z', to the second (what tags and state store)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """Parse what :func:`iso_utc` wrote (and any ISO 8601 with an offset) as aware UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
