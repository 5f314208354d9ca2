"""The ``envkit`` command line: thin glue over the library.

Each command parses its options, calls one library function and renders the result. Every
``EnvkitError`` is caught once, in :func:`main`, printed as a message and turned into exit code
1 or 2; no traceback is shown for expected failures.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import NoReturn

# Importing the command modules registers their commands on ``app``.
from envkit.cli import core, doctor, health, lifecycle, logs, seed  # noqa: F401
from envkit.cli.app import app
from envkit.errors import EnvkitError

__all__ = ["app", "main"]


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
    except OSError as exc:
        if exc.errno not in _ENVIRONMENT_ERRNOS or os.environ.get("ENVKIT_DEBUG"):
            _internal_error(exc)
        # A full disk or a path this user may not write is the machine's state, not a bug.
        where = f" ({exc.filename})" if exc.filename else ""
        error_console().print(
            f"[bold red]Error:[/] {exc.strerror}{where}.\n"
            "Free space or fix the permissions there (or point ENVKIT_HOME / ENVKIT_DATA_DIR "
            "elsewhere), then re-run; 'envkit down ID' removes what a failed 'up' left.",
            highlight=False,
        )
        sys.exit(1)
    except Exception as exc:  # a bug: say so briefly; the traceback only on request
        _internal_error(exc)


# OSErrors that the machine causes (disk full, quota, read-only, permissions, a file where a
# directory should be), wherever they escape from: a clear message, not "a bug in envkit".
_ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
)


def _internal_error(exc: Exception) -> NoReturn:
    from envkit.cli.render import error_console

    if os.environ.get("ENVKIT_DEBUG"):
        raise exc
    error_console().print(
        f"[bold red]Internal error:[/] {type(exc).__name__}: {exc}\n"
        "This is a bug in envkit. Re-run with ENVKIT_DEBUG=1 for the traceback and report it.",
        highlight=False,
    )
    sys.exit(1)
