"""The Typer application every command module registers its commands on."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="envkit",
    help="Ephemeral test environments keyed by CI pipeline ID: up, test, down.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from envkit import __version__

        print(f"envkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Ephemeral test environments keyed by CI pipeline ID: up, test, down."""
