"""The ``envkit`` command line: thin glue over the library.

Each command parses its options, calls one library function and renders the result. Every
``EnvkitError`` is caught once, in :func:`main`, printed as a message and turned into exit code
1 or 2; no traceback is shown for expected failures.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from envkit.errors import EnvkitError

app = typer.Typer(
    name="envkit",
    help="Ephemeral test environments keyed by CI pipeline ID: up, test, down.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Importing the command modules registers their commands on ``app``.
from envkit.cli import (  # noqa: E402,F401
    core,
    doctor,
    health,
    lifecycle,
    logs,
    seed,
)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and ``python -m envkit``."""
    from envkit.cli.render import error_console

    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("ENVKIT_DEBUG") else logging.WARNING,
        format="envkit: %(message)s",
    )
    try:
        # Standalone mode: Typer/click print usage errors and exit 2 themselves (whichever
        # click Typer uses: recent Typer vendors its own); our errors propagate to here.
        app(args=argv, prog_name="envkit")
    except EnvkitError as exc:
        from envkit.health import HealthCheckFailedError

        if isinstance(exc, HealthCheckFailedError):  # a table naming every failing component
            health.show_failure(exc)
            sys.exit(exc.exit_code)
        error_console().print(f"[bold red]Error:[/] {exc.message}", highlight=False)
        if exc.hint:
            error_console().print(exc.hint, highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        error_console().print("Interrupted.")
        sys.exit(130)
    except Exception as exc:  # a bug: say so briefly; the traceback only on request
        if os.environ.get("ENVKIT_DEBUG"):
            raise
        error_console().print(
            f"[bold red]Internal error:[/] {type(exc).__name__}: {exc}\n"
            "This is a bug in envkit. Re-run with ENVKIT_DEBUG=1 for the traceback and report it.",
            highlight=False,
        )
        sys.exit(1)
