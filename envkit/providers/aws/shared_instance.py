"""A pipeline's database on the base stack's shared RDS instance (``ENVKIT_AWS_SHARED_DATABASE``).

The base stack (``ENVKIT_PULUMI_BASE_STACK``, created with ``envkit:sharedDatabase``) exports the
instance's endpoint and master password (a secret output). envkit builds the admin DSN from them
each time it needs one — at ``up`` and again at ``down`` — so the record keeps only the base
stack's name, never the DSN; the password is added to the provider's scrub list at once. The
database itself is made and dropped by the shared-server placement (:mod:`envkit.shared_server`),
which keeps each database's pipeline ID, owner and expiry on the server for its own reap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from envkit.errors import ConfigError, EnvkitError
from envkit.providers.aws.automation import Automation, AutomationFailure, StackMissing
from envkit.redact import scrub

if TYPE_CHECKING:
    from envkit.providers.base import ProvisionRequest
    from envkit.settings import Settings
    from envkit.state import Record

# The base stack's outputs (stacks/program.py: build_base).
OUTPUT_KEYS = {
    "identifier": "shared_database_identifier",
    "host": "shared_database_address",
    "port": "shared_database_port",
    "user": "shared_database_user",
    "password": "shared_database_password",
}


@dataclass(frozen=True)
class SharedInstance:
    """The shared RDS instance as the base stack describes it."""

    base_stack: str
    identifier: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)

    @property
    def admin_dsn(self) -> str:
        """The master user's DSN (a secret: pass it on, never print or record it). RDS for
        PostgreSQL 15+ refuses unencrypted connections by default, hence ``sslmode=require``."""
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/postgres?sslmode=require"
        )


def read_shared_instance(
    automation: Automation,
    base_stack: str,
    secrets_: list[str],
    error: type[EnvkitError],
) -> SharedInstance:
    """The shared instance of ``base_stack``; ``ConfigError`` (exit 2) when the stack is missing
    or holds none, ``error`` when the backend cannot be read."""
    try:
        outputs = automation.select(base_stack).outputs()
    except StackMissing:
        raise ConfigError(
            f"ENVKIT_AWS_SHARED_DATABASE is set but the base stack {base_stack!r} does not exist.",
            hint="Create it first: 'pulumi config set envkit:role base', 'pulumi config set "
            "envkit:sharedDatabase true', 'pulumi config set --secret envkit:dbPassword', then "
            "'pulumi up' (see docs/aws-shared-database.md).",
        ) from None
    except AutomationFailure as exc:
        raise error(
            f"Reading the base stack {base_stack!r} failed: {scrub(str(exc), secrets_)}",
            hint="Check the backend (ENVKIT_PULUMI_BACKEND) and its passphrase or KMS key.",
        ) from None
    missing = [key for key in OUTPUT_KEYS.values() if outputs.get(key) in (None, "")]
    if missing:
        raise ConfigError(
            f"The base stack {base_stack!r} holds no shared database (no output "
            f"{', '.join(missing)}).",
            hint="Run 'pulumi config set envkit:sharedDatabase true' on the base stack and "
            "'pulumi up' it, or unset ENVKIT_AWS_SHARED_DATABASE.",
        )
    password = str(outputs[OUTPUT_KEYS["password"]])
    secrets_.append(password)
    values = {name: str(outputs[key]) for name, key in OUTPUT_KEYS.items()}
    try:
        port = int(float(values["port"]))
    except ValueError:
        raise ConfigError(
            f"The base stack {base_stack!r} exports an unreadable port {values['port']!r}."
        ) from None
    return SharedInstance(
        base_stack, values["identifier"], values["host"], port, values["user"], password
    )


def create_on_shared(
    instance: SharedInstance, request: ProvisionRequest, settings: Settings
) -> dict[str, str]:
    """The pipeline's database and role on the shared instance; its ``DATABASE_*`` outputs."""
    from envkit.shared_server import create_database  # loads a PostgreSQL client: when used

    record = request.record
    return create_database(
        instance.admin_dsn,
        request.pipeline_id,
        owner=record.owner,
        expires_at=record.expires_at,
        settings=settings,
        dataset=request.dataset,
        progress=request.progress,
        timings=request.timings,
    )


def drop_on_shared(instance: SharedInstance, pipeline_id: str) -> bool:
    """Drop the pipeline's database and role (``False``: there was none)."""
    from envkit.shared_server import drop_database

    return drop_database(instance.admin_dsn, pipeline_id)


def retain_on_shared(instance: SharedInstance, record: Record) -> None:
    """Write the record's expiry and status on the instance, where its reap reads them."""
    from envkit.shared_server import set_expiry

    set_expiry(instance.admin_dsn, record.pipeline_id, record.expires_at, status=str(record.status))


def external_database(outputs: dict[str, str]) -> dict[str, str]:
    """What the pipeline stack needs of the database (no password: that goes in-process)."""
    keys = {"host": "DATABASE_HOST", "port": "DATABASE_PORT", "name": "DATABASE_NAME",
            "user": "DATABASE_USER"}  # fmt: skip
    return {name: str(outputs[key]) for name, key in keys.items()}
