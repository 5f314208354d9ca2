"""Lifecycle commands: run, extend, reap, history."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from typing import Annotated, Any

import typer
from typer._click.core import Context as _ClickContext  # typer 0.28 vendors click
from typer.core import TyperCommand

from envkit import lifecycle
from envkit.cli.app import app
from envkit.cli.core import (
    DatabaseServerOpt,
    PipelineArg,
    ProviderOpt,
    RedisOpt,
    ShowSecretsOpt,
)
from envkit.cli.render import console, error_console, print_json, settings
from envkit.durations import parse_duration
from envkit.plan import Plan
from envkit.runner import OnFailure, OnSuccess, debug_instructions
from envkit.state import StateStore

_COMMAND_KEY = "envkit.command"


class _DashDashCommand(TyperCommand):
    """Splits ``envkit run [ID] [OPTIONS] -- COMMAND...`` at the first ``--`` before click sees
    it (click drops the ``--``, after which the ID and the command could not be told apart)."""

    def parse_args(self, ctx: _ClickContext, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta[_COMMAND_KEY] = args[at + 1 :]
            args = args[:at]
        return super().parse_args(ctx, args)


class ReapProvider(StrEnum):
    local = "local"
    aws = "aws"


TtlOpt = Annotated[
    str | None,
    typer.Option(help="Time to live, e.g. 90s, 30m, 4h, 2d.", show_default=False),
]


@app.command(cls=_DashDashCommand)
def run(
    ctx: typer.Context,
    pipeline_id: PipelineArg = None,
    provider: ProviderOpt = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset to load (seeds/).")] = None,
    no_seed: Annotated[bool, typer.Option("--no-seed", help="Load no dataset.")] = False,
    redis: RedisOpt = False,
    ttl: Annotated[
        str | None,
        typer.Option(
            help="Lifetime while running and once preserved (90s, 30m, 4h, 2d).",
            show_default="4h; 24h once preserved",
        ),
    ] = None,
    preserve_ttl: Annotated[
        str | None, typer.Option(help="Lifetime once preserved, when it differs from --ttl.")
    ] = None,
    on_success: Annotated[
        OnSuccess, typer.Option(help="What to do with the environment when COMMAND exits 0.")
    ] = OnSuccess.destroy,
    on_failure: Annotated[
        OnFailure, typer.Option(help="What to do when COMMAND fails or is interrupted.")
    ] = OnFailure.preserve,
    show_secrets: ShowSecretsOpt = False,
    database_server: DatabaseServerOpt = None,
) -> None:
    """Bring the environment up, run COMMAND (after --) with its outputs in the environment,
    then destroy it on success or preserve it on failure; exit with COMMAND's code."""
    from envkit import runner

    command: list[str] = ctx.meta.get(_COMMAND_KEY, [])
    if not command:
        raise typer.BadParameter("give the command after '--', e.g. envkit run pr-1 -- pytest")
    lifetime = parse_duration(ttl, what="TTL") if ttl is not None else None
    keep_for = parse_duration(preserve_ttl, what="TTL") if preserve_ttl is not None else None
    run_ctx = Plan.build(
        pipeline_id,
        settings(
            provider=provider,
            dataset=dataset,
            database_server=database_server,
            redis=redis or None,
        ),
        seed=not no_seed,
    )
    runner.check_command(command[0], os.environ)  # a typo: exit 127 before anything is made
    err = error_console()
    err.print(f"envkit: bringing up {run_ctx.pipeline_id}…")
    result = runner.run(
        run_ctx,
        command,
        ttl=lifetime,
        preserve_ttl=keep_for,
        on_success=on_success,
        on_failure=on_failure,
        on_ready=lambda r: err.print(
            f"envkit: {r.pipeline_id} is ready; running: {' '.join(command)}"
        ),
    )
    if result.outcome == "preserved" and result.record is not None:
        err.print(f"envkit: the command exited {result.exit_code}.")
        for line in debug_instructions(result.record, show_secrets=show_secrets):
            err.print(line)
    else:
        err.print(f"envkit: the command exited {result.exit_code}; environment {result.outcome}.")
    raise typer.Exit(result.exit_code)


@app.command()
def extend(
    ttl: Annotated[str, typer.Option(help="New time to live from now, e.g. 4h, 2d.")],
    pipeline_id: PipelineArg = None,
    database_server: DatabaseServerOpt = None,
) -> None:
    """Give a ready or preserved environment a new expiry: now + TTL."""
    lifetime = parse_duration(ttl, what="TTL")
    chosen = settings(database_server=database_server)
    record = lifecycle.extend(Plan.build(pipeline_id, chosen), lifetime)
    console().print(
        f"[green]✔[/] Environment [bold]{record.pipeline_id}[/] now expires {record.expires_at}."
    )


@app.command()
def reap(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be reaped.")
    ] = False,
    older_than: Annotated[
        str | None,
        typer.Option(help="Grace period: reap only what expired (or died) at least this long ago."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    provider: Annotated[
        ReapProvider | None,
        typer.Option(
            help="local (default): this machine; aws: tagged cloud resources too.",
            show_default=False,
        ),
    ] = None,
    database_server: DatabaseServerOpt = None,
) -> None:
    """Destroy expired environments and whatever dead envkit processes left behind (with
    --database-server: also the expired databases on that server, from the server alone)."""
    from envkit.reaper import reap as run_reap

    grace = parse_duration(older_than, what="--older-than") if older_than is not None else None
    chosen = settings(
        provider=provider.value if provider else None,
        database_server=database_server,
    )
    report = run_reap(chosen, dry_run=dry_run, older_than=grace)
    if as_json:
        print_json(report.as_json())
    else:
        _print_report(report.as_json())
    if report.errors:
        raise typer.Exit(1)


def _print_report(data: dict[str, Any]) -> None:
    out = console()
    verb = "would reap" if data["dry_run"] else "reaped"
    for label, entries in (
        (verb, data["reaped"]),
        ("kept", data["kept"]),
        ("error", data["errors"]),
    ):
        for entry in entries:
            name = entry.get("pipeline_id") or entry.get("resource") or "?"
            why = entry.get("error") or entry.get("reason") or ""
            out.print(f"{label:<11} {name:<30} {entry.get('kind', '')}: {why}")
    out.print(
        f"{len(data['reaped'])} {verb}, {len(data['kept'])} kept, {len(data['errors'])} errors."
    )


@app.command()
def history(
    pipeline_id: Annotated[
        str | None, typer.Argument(help="Pipeline ID (all pipelines when omitted).")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (one object per event).")
    ] = False,
) -> None:
    """Show the audit log: every transition with when, who (pid) and how long it took."""
    from envkit.naming import validate_pipeline_id

    wanted = validate_pipeline_id(pipeline_id) if pipeline_id is not None else None
    events = StateStore(settings().home).events(wanted)
    if as_json:
        print_json(events)
        return
    if not events:
        console().print("No events.")
        return
    out = console()
    for event in events:
        took = _took(event)
        details = {
            k: v
            for k, v in event.items()
            if k not in ("ts", "at", "pipeline_id", "event", "pid", "seconds", "timings")
        }
        out.print(
            f"{event.get('at', '')}  {event.get('pipeline_id', '')}  {event.get('event', ''):<12}"
            + (f" {took:8.3f}s" if took is not None else " " * 10)
            + f"  pid {event.get('pid', '?')}  "
            + " ".join(f"{k}={_shown(v)}" for k, v in details.items()),
            markup=False,
        )


def _shown(value: Any) -> str:
    """An event field for people: probe results as ``name:status(attempts, seconds)``, other
    structures as compact JSON (``--json`` keeps every field as stored)."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return ",".join(_probe(v) if "name" in v else _compact(v) for v in value)
    if isinstance(value, dict | list):
        return _compact(value)
    return str(_rounded(value))


def _rounded(value: Any) -> Any:
    """Floats to 3 decimals (rates and byte counts to whole numbers), recursively."""
    if isinstance(value, float):
        return round(value) if abs(value) >= 1000 else round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _probe(result: dict[str, Any]) -> str:
    status = result.get("status") or ("ok" if result.get("ok") else "failed")
    attempts = result.get("attempts")
    facts = [f"{attempts} attempt{'s' if attempts != 1 else ''}"] if attempts is not None else []
    if isinstance(result.get("seconds"), int | float):
        facts.append(f"{result['seconds']:.3f}s")
    if result.get("error"):
        facts.append(str(result["error"]))
    name = str(result["name"])
    if result.get("component"):
        name = f"{result['component']}/{name}"
    return f"{name}:{status}" + (f"({', '.join(facts)})" if facts else "")


def _compact(value: Any) -> str:
    return json.dumps(_rounded(value), separators=(",", ":"), sort_keys=True, default=str)


def _took(event: dict[str, Any]) -> float | None:
    """The duration an event carries: ``seconds``, or the ``total`` of its ``timings``."""
    if isinstance(event.get("seconds"), int | float):
        return float(event["seconds"])
    timings = event.get("timings")
    if isinstance(timings, dict) and isinstance(timings.get("total"), int | float):
        return float(timings["total"])
    return None
