"""``envkit seed``: load a dataset, or a masked subset of a real database, into an environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from envkit.cli.app import app
from envkit.cli.core import DatasetOpt, PipelineArg, ScaleOpt
from envkit.cli.render import console, print_json, progress, settings


@app.command()
def seed(
    pipeline_id: PipelineArg = None,
    dataset: DatasetOpt = None,
    scale: ScaleOpt = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="DSN of a real database to copy a masked subset of (needs --rules).",
            envvar="ENVKIT_SEED_SOURCE",
            show_envvar=True,
        ),
    ] = None,
    rules: Annotated[
        Path | None, typer.Option(help="Rules file (TOML): subset root/where, a rule per column.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Load a dataset (or a masked subset of a real database) into an existing environment."""
    from envkit.plan import Plan
    from envkit.seeding import pipeline as seeding

    ctx = Plan.build(pipeline_id, settings(dataset=dataset, seed_scale=scale))
    with progress(f"Seeding {ctx.pipeline_id}", enabled=not as_json):
        summary = seeding.seed_pipeline(ctx, dataset=dataset, source=source, rules=rules)
    if as_json:
        print_json(summary)
        return
    stats = summary["stats"]
    tables = ", ".join(
        f"{k.removeprefix('rows_')} {int(v)}"
        for k, v in stats.items()
        if k.startswith("rows_") and k != "rows_per_s"
    )
    console().print(
        f"[green]✔[/] Seeded [bold]{ctx.pipeline_id}[/] with {summary['dataset']}: "
        f"{int(stats.get('rows', 0))} rows ({tables}) in {stats.get('seconds', 0):.2f}s, "
        f"{stats.get('rows_per_s', 0):,.0f} rows/s"
    )
