"""Core commands: up, down, status, list, outputs."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from envkit import lifecycle
from envkit.ci_outputs import write_env_file, write_github_for
from envkit.cli.app import app
from envkit.cli.render import console, print_json, progress, settings
from envkit.durations import parse_duration
from envkit.outputs import render_env, render_json, visible
from envkit.plan import Plan
from envkit.state import Record


class OutputFormat(StrEnum):
    text = "text"
    json = "json"
    env = "env"
    github = "github"


class OutputsFormat(StrEnum):
    env = "env"
    json = "json"
    github = "github"


PipelineArg = Annotated[
    str | None,
    typer.Argument(
        help="Pipeline ID ([a-z0-9-], ≤63); detected from CI variables when omitted.",
        show_default=False,
    ),
]
ProviderOpt = Annotated[
    str | None, typer.Option("--provider", help="local (default) or aws.", show_default=False)
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(help="Dataset to load (seeds/).", show_default="the spec's, else 'default'"),
]
ScaleOpt = Annotated[
    float | None, typer.Option(help="Multiply the dataset's row counts.", show_default="1")
]
def server_option(value: str | None) -> str | None:
    """``--database-server`` as given, refused when it holds a password (argv is public)."""
    if value is not None:
        from envkit.shared_server.dsn import refuse_in_argv

        refuse_in_argv(value)
    return value


DatabaseServerOpt = Annotated[
    str | None,
    typer.Option(
        "--database-server",
        metavar="DSN",
        help="Put the database on this PostgreSQL server (postgresql://ADMIN@HOST:PORT/DB; "
        "the password from PGPASSWORD or ~/.pgpass, or the whole DSN in ENVKIT_DATABASE_SERVER).",
        show_default=False,
        callback=server_option,  # every command taking it refuses a password the same way
    ),
]


RedisOpt = Annotated[
    bool,
    typer.Option(
        "--redis",
        help="Add a Redis server (REDIS_URL) when the spec has no [redis] (ENVKIT_REDIS).",
    ),
]
ShowSecretsOpt = Annotated[
    bool, typer.Option("--show-secrets", help="Print passwords and URLs with passwords in clear.")
]
EnvFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--env-file",
        help="Also write the outputs to this dotenv file (mode 0600) WITH REAL SECRET VALUES: "
        "it is an artifact for later CI jobs (e.g. a GitLab 'dotenv' report); keep it private.",
        show_default=False,
    ),
]


def _ttl(value: str | None, what: str = "TTL"):  # type: ignore[no-untyped-def]
    return parse_duration(value, what=what) if value is not None else None


@app.command()
def up(
    pipeline_id: PipelineArg = None,
    provider: ProviderOpt = None,
    dataset: DatasetOpt = None,
    scale: ScaleOpt = None,
    no_seed: Annotated[bool, typer.Option("--no-seed", help="Load no dataset.")] = False,
    redis: RedisOpt = False,
    postgres: Annotated[
        str | None,
        typer.Option(
            "--postgres",
            help="PostgreSQL version (15, 18, 18.6) among the installations found "
            "('envkit doctor' lists them).",
            show_default="the first found",
        ),
    ] = None,
    recreate: Annotated[
        bool,
        typer.Option(
            "--recreate",
            help="Replace a preserved environment whose server is gone and cannot be started "
            "again (its kept data is lost).",
        ),
    ] = False,
    ttl: Annotated[
        str | None, typer.Option(help="Time to live, e.g. 90s, 30m, 4h, 2d.", show_default="4h")
    ] = None,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="How to print the outputs.")
    ] = OutputFormat.text,
    show_secrets: ShowSecretsOpt = False,
    env_file: EnvFileOpt = None,
    database_server: DatabaseServerOpt = None,
) -> None:
    """Create the environment of a pipeline (or return it when it is already up)."""
    lifetime = _ttl(ttl)
    plan = Plan.build(
        pipeline_id,
        settings(
            provider=provider,
            dataset=dataset,
            seed_scale=scale,
            postgres_version=postgres,
            database_server=database_server,
            redis=redis or None,  # absent: ENVKIT_REDIS / [tool.envkit] decide
        ),
        seed=not no_seed,
    )
    with progress(
        f"Bringing up {plan.pipeline_id}", enabled=output_format is OutputFormat.text
    ) as step:
        record = lifecycle.up(plan, ttl=lifetime, progress=step, recreate=recreate)
    if env_file is not None:
        write_env_file(record.outputs, env_file)
    show_record(record, output_format, show_secrets)


def show_record(record: Record, output_format: OutputFormat, show_secrets: bool) -> None:
    """Print an environment's outputs in the chosen format."""
    if output_format is OutputFormat.json:
        print_json(
            {
                "pipeline_id": record.pipeline_id,
                "provider": record.provider,
                "status": str(record.status),
                "expires_at": record.expires_at,
                "outputs": visible(record.outputs, show_secrets),
                "timings": record.timings,
            }
        )
    elif output_format is OutputFormat.env:
        print(render_env(record.outputs, show_secrets=show_secrets), end="")
    elif output_format is OutputFormat.github:
        print(write_github_for(record, show_secrets=show_secrets).stdout, end="")
    else:
        out = console()
        total = record.timings.get("total")
        took = f", {total:.2f}s" if total is not None else ""
        out.print(
            f"[green]✔[/] Environment [bold]{record.pipeline_id}[/] is "
            f"{record.status} ({record.provider}{took}); expires {record.expires_at}"
        )
        for key, value in visible(record.outputs, show_secrets).items():
            out.print(f"  {key:<20} {value}")
        if not show_secrets:
            out.print(
                f"Secrets hidden; show them with: envkit outputs {record.pipeline_id} "
                "--show-secrets",
                style="dim",
            )


@app.command()
def down(
    pipeline_id: PipelineArg = None,
    preserve: Annotated[
        bool,
        typer.Option("--preserve", help="Keep it running for debugging until the TTL runs out."),
    ] = False,
    ttl: Annotated[
        str | None, typer.Option(help="TTL when preserving.", show_default="24h")
    ] = None,
    show_secrets: ShowSecretsOpt = False,
    database_server: DatabaseServerOpt = None,
) -> None:
    """Destroy the environment of a pipeline (absent is fine), or preserve it."""
    lifetime = _ttl(ttl)
    if lifetime is not None and not preserve:
        raise typer.BadParameter("--ttl only applies with --preserve.", param_hint="--ttl")
    ctx = Plan.build(pipeline_id, settings(database_server=database_server))
    with progress(f"Tearing down {ctx.pipeline_id}", enabled=not preserve):
        record = lifecycle.down(ctx, preserve=preserve, ttl=lifetime)
    if record is None:
        console().print(f"[green]✔[/] Environment [bold]{ctx.pipeline_id}[/] is gone.")
    else:
        from envkit.runner import debug_instructions

        for line in debug_instructions(record, show_secrets=show_secrets):
            console().print(line, markup=False)


@app.command()
def status(
    pipeline_id: PipelineArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the state of a pipeline's environment (checking that its processes run)."""
    ctx = Plan.build(pipeline_id, settings())
    record = lifecycle.status(ctx)
    data = (
        lifecycle.describe(ctx.settings, [record])[0]
        if record
        else lifecycle.absent_status(ctx.pipeline_id)
    )
    if as_json:
        print_json(data)
        return
    out = console()
    for key, value in data.items():
        if isinstance(value, dict):  # timings: one aligned line each
            if value:
                out.print(f"{key:<12}", highlight=False)
                for name, number in value.items():
                    out.print(f"  {name:<22} {_timing(name, number):>9}", highlight=False)
        elif value not in (None, ""):
            out.print(f"{key:<12} {value}", highlight=False)


def _timing(name: str, number: object) -> str:
    """Durations in seconds; the seeding's counts (``seed_rows_users``, ``seed_redis_keys``,
    ``seed_from_template``), which travel with the timings, as plain numbers."""
    if not isinstance(number, int | float):
        return str(number)
    if name.startswith("seed_") and not name.endswith("seconds"):
        return f"{number:g}"
    return f"{number:.3f}s"


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every environment known under ENVKIT_HOME."""
    resolved = settings()
    described = lifecycle.describe(resolved, lifecycle.list_environments(resolved))
    if as_json:
        print_json(described)
        return
    if not described:
        console().print("No environments.")
        return
    if not sys.stdout.isatty():  # a CI log or a pipe: whole values, aligned, never cut
        columns = ("pipeline_id", "provider", "status", "created_at", "expires_at", "owner")
        rows = [[_list_cell(r, c) for c in columns] for r in described]
        widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
        for row in [list(columns), *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return
    from rich.table import Table

    table = Table("pipeline", "provider", "status", "created", "expires", "owner")
    for r in described:
        shown = str(r["status"]) + ("" if r.get("alive", True) else " (not running)")
        table.add_row(*(str(r[k]) for k in ("pipeline_id", "provider")), shown,
                      *(str(r[k]) for k in ("created_at", "expires_at", "owner")))
    console().print(table)


def _list_cell(row: dict[str, object], column: str) -> str:
    value = str(row.get(column) or "")
    if column == "status" and not row.get("alive", True):
        value += " (not running)"
    return value


@app.command()
def outputs(
    pipeline_id: PipelineArg = None,
    output_format: Annotated[OutputsFormat, typer.Option("--format")] = OutputsFormat.env,
    show_secrets: ShowSecretsOpt = False,
    env_file: EnvFileOpt = None,
) -> None:
    """Print the outputs (connection details) of an environment."""
    from envkit.errors import ConfigError

    ctx = Plan.build(pipeline_id, settings())
    record = lifecycle.status(ctx)
    if record is None or not record.outputs:
        raise ConfigError(
            f"Pipeline {ctx.pipeline_id!r} has no environment with outputs.",
            hint=f"Create it with 'envkit up {ctx.pipeline_id}'.",
        )
    if env_file is not None:
        write_env_file(record.outputs, env_file)
    if output_format is OutputsFormat.json:
        print(render_json(record.outputs, show_secrets=show_secrets), end="")
    elif output_format is OutputsFormat.github:
        print(write_github_for(record, show_secrets=show_secrets).stdout, end="")
    else:
        print(render_env(record.outputs, show_secrets=show_secrets), end="")
