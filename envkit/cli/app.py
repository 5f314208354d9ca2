"""The Typer application every command module registers its commands on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="envkit",
    help="Ephemeral test environments keyed by CI pipeline ID: up, test, down.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
