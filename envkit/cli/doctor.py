"""``envkit doctor``: what each provider needs, found or not, and what to do about it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from envkit.cli import app
from envkit.cli.render import console, print_json, settings
from envkit.errors import EnvkitError


def _check(name: str, provider: str, required: bool, probe: Any) -> dict[str, Any]:
    """Run one check: ``probe()`` returns a detail string or raises with a fix."""
    try:
        detail = probe()
        return {"name": name, "provider": provider, "ok": True, "required": required,
                "detail": detail, "fix": None}  # fmt: skip
    except EnvkitError as exc:
        return {"name": name, "provider": provider, "ok": False, "required": required,
                "detail": exc.message, "fix": exc.hint}  # fmt: skip
    except Exception as exc:  # a check must never crash doctor
        return {"name": name, "provider": provider, "ok": False, "required": required,
                "detail": f"{type(exc).__name__}: {exc}", "fix": None}  # fmt: skip


def run_checks() -> list[dict[str, Any]]:
    """Every check, local ones (required) first, then the aws provider's (informational)."""
    from envkit.errors import PrerequisiteError
    from envkit.providers.aws import prerequisites as aws
    from envkit.providers.local.install import find_install

    current = settings()

    def postgres() -> str:
        install = find_install(current.pg_bindir, cache_dir=current.home / "cache")
        return f"{install.version() or 'postgres'} in {install.bindir}"

    def pulumi_cli() -> str:
        path, version = aws.find_pulumi_cli()
        return f"Pulumi CLI {version} at {path}"

    def credentials() -> str:
        import boto3
        from botocore.config import Config

        try:
            identity = (
                boto3.session.Session(region_name=aws.aws_region(current))
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
        url = aws.default_backend(current)
        if url.startswith("file://"):
            return f"{url} (local files; created on first use)"
        if url.startswith("s3://"):
            import boto3
            from botocore.config import Config

            bucket = url.removeprefix("s3://").split("/", 1)[0].split("?", 1)[0]
            client = boto3.session.Session(region_name=aws.aws_region(current)).client(
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
        _check("PostgreSQL binaries", "local", True, postgres),
        _check("Pulumi CLI", "aws", False, pulumi_cli),
        _check("AWS credentials", "aws", False, credentials),
        _check("Pulumi backend", "aws", False, backend),
    ]


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check prerequisites: PostgreSQL (local provider); Pulumi, AWS, backend (aws provider)."""
    checks = run_checks()
    ok = all(c["ok"] for c in checks if c["required"])
    if as_json:
        print_json({"ok": ok, "checks": checks})
    else:
        out = console()
        for c in checks:
            mark = "[green]✔[/]" if c["ok"] else ("[red]✘[/]" if c["required"] else "[yellow]![/]")
            out.print(f"{mark} {c['name']} ({c['provider']}): {c['detail']}")
            if not c["ok"] and c["fix"]:
                out.print(f"    {c['fix']}", style="dim")
    if not ok:
        raise typer.Exit(1)
