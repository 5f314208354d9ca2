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
    if not _ID_RE.match(candidate):
        shown = ascii(raw) if len(raw) <= 80 else ascii(raw[:80]) + "…"
        raise ConfigError(
            f"The pipeline ID {shown} is not valid: use lower-case letters, digits and '-', "
            "starting with a letter or digit (for example 'pr-42').",
        )
    return candidate


def normalise(raw: str) -> str:
    """Turn any CI-provided string into a valid pipeline ID (lower-cased, runs of other
    characters become '-', cut with a hash suffix when too long)."""
    folded = _INVALID_RUN.sub("-", raw.lower()).strip("-")
    if not folded:
        raise ConfigError(f"Cannot make a pipeline ID from {raw!r}: it has no letters or digits.")
    if len(folded) > MAX_ID_LENGTH:
        folded = shorten(folded, MAX_ID_LENGTH, digest_of=raw)
    return folded


# (variables that must all be set, how to build the raw ID from them), first match wins.
_CI_SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GitHub Actions", ("GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT")),
    ("GitLab CI", ("CI_PIPELINE_ID", "CI_JOB_ID")),
    ("Buildkite", ("BUILDKITE_BUILD_ID",)),
    ("CircleCI", ("CIRCLE_WORKFLOW_ID",)),
    ("Jenkins", ("BUILD_TAG",)),
)


def detect_pipeline_id(env: Mapping[str, str]) -> str | None:
    """The pipeline ID a CI system implies through its variables, normalised, or ``None``."""
    for _system, names in _CI_SOURCES:
        values = [env.get(name, "").strip() for name in names]
        if all(values):
            return normalise("-".join(values))
    return None


def resolve_pipeline_id(explicit: str | None, env: Mapping[str, str]) -> str:
    """An explicit ID (validated) or the one detected from CI variables; ``ConfigError`` if none."""
    if explicit is not None:
        return validate_pipeline_id(explicit)
    detected = detect_pipeline_id(env)
    if detected is None:
        systems = ", ".join(f"{system} ({' + '.join(names)})" for system, names in _CI_SOURCES)
        raise ConfigError(
            "No pipeline ID was given and none could be detected.",
            hint=f"Pass one (e.g. 'envkit up pr-42') or run in CI; envkit reads {systems}.",
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


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a 'Z', to the second (what tags and state store)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """Parse what :func:`iso_utc` wrote (and any ISO 8601 with an offset) as aware UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
