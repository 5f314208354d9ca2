"""What the aws provider needs before it creates anything: the Pulumi CLI, a backend, a region,
a secrets provider. Each failure is a ``PrerequisiteError`` (exit 2) naming the fix."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from envkit.errors import PrerequisiteError
from envkit.providers.base import Check
from envkit.settings import Settings

log = logging.getLogger(__name__)

MIN_PULUMI_VERSION = (3, 100, 0)
INSTALL_HINT = (
    "Install it with 'curl -fsSL https://get.pulumi.com | sh' (or 'brew install pulumi/tap/"
    "pulumi', or see https://www.pulumi.com/docs/install/) and make sure 'pulumi' is on PATH. "
    "The local provider needs no Pulumi: drop '--provider aws' to use it."
)


def find_pulumi_cli(env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The Pulumi CLI and its version; ``PrerequisiteError`` naming the fix when missing or old.

    Looks on PATH, then where the official installer puts it (``$PULUMI_HOME/bin``,
    ``~/.pulumi/bin``).
    """
    environ = os.environ if env is None else env
    minimum = ".".join(map(str, MIN_PULUMI_VERSION))
    candidates = [shutil.which("pulumi", path=environ.get("PATH", os.defpath))]
    for home in (environ.get("PULUMI_HOME"), str(Path(environ.get("HOME", "~")) / ".pulumi")):
        if home:
            candidates.append(str(Path(home).expanduser() / "bin" / "pulumi"))
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if found is None:
        raise PrerequisiteError(
            f"The aws provider needs the Pulumi CLI (version {minimum} or newer), and it was not "
            "found on PATH, in $PULUMI_HOME/bin or in ~/.pulumi/bin. Nothing was created.",
            hint=INSTALL_HINT,
        )
    try:
        out = subprocess.run(
            [found, "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrerequisiteError(
            f"The Pulumi CLI at {found} did not run ('pulumi version': {exc}).", hint=INSTALL_HINT
        ) from None
    version = out.stdout.strip().lstrip("v")
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if out.returncode != 0 or match is None:
        raise PrerequisiteError(
            f"The Pulumi CLI at {found} did not report a version.", hint=INSTALL_HINT
        )
    if tuple(int(p) for p in match.groups()) < MIN_PULUMI_VERSION:
        raise PrerequisiteError(
            f"The Pulumi CLI at {found} is version {version}; the aws provider needs {minimum} "
            "or newer. Nothing was created.",
            hint="Upgrade it with 'pulumi self-update' or " + INSTALL_HINT,
        )
    return Path(found), version


def default_backend(settings: Settings) -> str:
    """``settings.pulumi_backend``, else a ``file://`` backend under ENVKIT_HOME."""
    if settings.pulumi_backend:
        return settings.pulumi_backend
    return f"file://{(settings.home / 'pulumi' / 'state').expanduser().resolve()}"


def aws_region(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The region: setting, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, else us-east-1."""
    environ = os.environ if env is None else env
    return (
        settings.aws_region
        or environ.get("AWS_REGION")
        or environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )


def secrets_config(settings: Settings, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(secrets provider URL or None for passphrase, passphrase or None).

    A KMS (or other) provider from settings wins; else ENVKIT_PULUMI_PASSPHRASE /
    PULUMI_CONFIG_PASSPHRASE; else, for the default file backend only, a passphrase generated
    once and kept 0600 under ENVKIT_HOME. A shared backend without either is refused: a
    passphrase made up on one CI runner would lock every other runner out of the stack.
    """
    if settings.pulumi_secrets_provider:
        return settings.pulumi_secrets_provider, None
    given = env.get("ENVKIT_PULUMI_PASSPHRASE") or env.get("PULUMI_CONFIG_PASSPHRASE")
    if given:
        return None, given
    if settings.pulumi_backend:
        raise PrerequisiteError(
            f"The Pulumi backend {settings.pulumi_backend} needs a secrets provider: none is set.",
            hint="Set ENVKIT_PULUMI_PASSPHRASE (the same on every runner, from your CI's secret "
            "store) or ENVKIT_PULUMI_SECRETS_PROVIDER=awskms://alias/<key>?region=<region>.",
        )
    path = settings.home / "pulumi" / "passphrase"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
        log.info("generated the Pulumi passphrase of this ENVKIT_HOME in %s", path)
    return None, path.read_text(encoding="utf-8").strip()


def on_path_dir(env: Mapping[str, str]) -> Path | None:
    """The directory of the ``pulumi`` found on PATH, if any."""
    found = shutil.which("pulumi", path=env.get("PATH", os.defpath))
    return Path(found).parent if found else None


def doctor_checks(settings: Settings) -> list[Check]:
    """What ``envkit doctor`` reports for the aws provider (informational: only its users need
    them): the Pulumi CLI, AWS credentials, the state backend."""
    current = settings

    def pulumi_cli() -> str:
        path, version = find_pulumi_cli()
        return f"Pulumi CLI {version} at {path}"

    def credentials() -> str:
        import boto3
        from botocore.config import Config

        try:
            identity = (
                boto3.session.Session(region_name=aws_region(current))
                .client(
                    "sts",
                    config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}),
                )
                .get_caller_identity()
            )
        except Exception as exc:
            raise PrerequisiteError(
                f"No usable AWS credentials ({type(exc).__name__}).",
                hint="Configure them (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or "
                "an OIDC role in CI) and the region (AWS_REGION).",
            ) from None
        return f"account {identity['Account']} as {identity['Arn']}"

    def backend() -> str:
        url = default_backend(current)
        if url.startswith("file://"):
            return f"{url} (local files; created on first use)"
        if url.startswith("s3://"):
            import boto3
            from botocore.config import Config

            bucket = url.removeprefix("s3://").split("/", 1)[0].split("?", 1)[0]
            client = boto3.session.Session(region_name=aws_region(current)).client(
                "s3", config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1})
            )
            try:
                client.head_bucket(Bucket=bucket)
            except Exception as exc:
                raise PrerequisiteError(
                    f"The state bucket {bucket} is not reachable ({type(exc).__name__}).",
                    hint="Create it (private, versioned) or fix ENVKIT_PULUMI_BACKEND and the "
                    "credentials.",
                ) from None
            return f"{url} (bucket reachable)"
        return f"{url} (not checked: Pulumi checks it on first use)"

    return [
        Check("Pulumi CLI", False, pulumi_cli),
        Check("AWS credentials", False, credentials),
        Check("Pulumi backend", False, backend),
    ]
