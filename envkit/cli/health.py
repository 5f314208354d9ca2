"""Health commands: ``envkit wait``, and the report table shown when a health check fails."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from envkit import lifecycle
from envkit.cli.app import app
from envkit.cli.core import PipelineArg
from envkit.cli.render import console, error_console, print_json, settings
from envkit.plan import Plan

if TYPE_CHECKING:
    from envkit.health import HealthCheckFailedError, HealthReport


def report_table(report: HealthReport, *, only_failing: bool = False) -> object:
    """A rich table: one row per probe with its status, attempts, time and last error."""
    from rich.table import Table

    table = Table("component", "probe", "status", "attempts", "seconds", "last error")
    styles = {"ok": "green", "failed": "bold red", "not ready": "yellow"}
    for r in report.failing if only_failing else report.results:
        table.add_row(
            r.component,
            r.name,
            f"[{styles[r.status]}]{r.status}[/]",
            str(r.attempts),
            f"{r.seconds:.3f}",
            r.error or "",
        )
    return table


def show_failure(exc: HealthCheckFailedError) -> None:
    """Print a failed wait on stderr: the headline, a table of every probe, and the hint."""
    out = error_console()
    out.print(f"[bold red]Error:[/] {exc.headline}", highlight=False)
    out.print(report_table(exc.report))
    if exc.hint:
        out.print(exc.hint, highlight=False)


@app.command()
def wait(
    pipeline_id: PipelineArg = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            help="Give up after this long, e.g. 30s or 2m.",
            show_default="ENVKIT_HEALTH_TIMEOUT, else 120s",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Re-check that every component of an existing environment is healthy (exit 1 if not)."""
    from envkit.health import HealthCheckFailedError

    ctx = Plan.build(pipeline_id, settings(health_timeout=timeout))
    try:
        report = lifecycle.recheck(ctx)
    except HealthCheckFailedError as exc:
        if not as_json:
            raise  # main() renders it with show_failure()
        print_json(exc.report.as_dict())
        error_console().print(f"[bold red]Error:[/] {exc.headline}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        print_json(report.as_dict())
        return
    console().print(
        f"[green]✔[/] Environment [bold]{ctx.pipeline_id}[/] is healthy "
        f"({len(report.results)} check(s), {report.seconds:.3f}s)."
    )
    console().print(report_table(report))
