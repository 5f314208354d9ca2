"""``envkit logs``: the log of an environment's services and of its database."""

from __future__ import annotations

from typing import Annotated

import typer

from envkit.cli.app import app
from envkit.cli.core import PipelineArg
from envkit.cli.render import settings


@app.command()
def logs(
    pipeline_id: PipelineArg = None,
    component: Annotated[
        str | None,
        typer.Argument(
            help="'postgres' or a service of the spec; all of them when omitted.",
            show_default=False,
        ),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option(
            "--service", "-s", help="Same as COMPONENT (use it when the ID is detected).",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing lines as they are written.")
    ] = False,
    lines: Annotated[
        int,
        typer.Option(
            "--lines",
            "-n",
            min=0,
            max=262_144,  # only the last 256 KiB are read: no more lines than that exist there
            help="How many of the last lines to show (0 to 262144).",
        ),
    ] = 50,
) -> None:
    """Show the logs of an environment's database ('postgres') and services."""
    from envkit import lifecycle
    from envkit.errors import ConfigError
    from envkit.logtail import follow as follow_logs
    from envkit.logtail import tail_lines
    from envkit.plan import Plan
    from envkit.providers import get_provider

    plan = Plan.build(pipeline_id, settings())
    record = lifecycle.status(plan)
    if record is None:
        raise ConfigError(
            f"Pipeline {plan.pipeline_id!r} has no environment (ENVKIT_HOME={plan.settings.home}).",
            hint="Check the ID with 'envkit list'.",
        )
    files = get_provider(record.provider, plan.settings).logs(record, service or component)
    prefix = len(files) > 1
    for name, path in files.items():
        if prefix:
            print(f"==> {name} ({path}) <==")
        for line in tail_lines(path, lines):
            print(line)
    if follow:
        try:
            for name, line in follow_logs(files):
                print(f"{name} | {line}" if prefix else line, flush=True)
        except KeyboardInterrupt:
            return
