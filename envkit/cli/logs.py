"""``envkit logs``: the log of an environment's services and of its database."""

from __future__ import annotations

from typing import Annotated

import typer

from envkit.cli import app
from envkit.cli.render import settings


@app.command()
def logs(
    pipeline_id: Annotated[str, typer.Argument(help="Pipeline ID.")],
    service: Annotated[
        str | None,
        typer.Argument(help="A service of the spec, or 'postgres'; all of them when omitted.",
                       show_default=False),
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
    """Show the logs of a local environment's services (and 'postgres', its database)."""
    from envkit.lifecycle import Context
    from envkit.providers.local.logs import follow as follow_logs
    from envkit.providers.local.logs import pick_logs, tail_lines
    from envkit.providers.local.provider import Layout

    ctx = Context.build(pipeline_id, settings())
    files = pick_logs(Layout.for_settings(ctx.settings).logs(ctx.pipeline_id), service)
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
