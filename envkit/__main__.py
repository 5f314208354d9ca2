"""``python -m envkit`` and the ``envkit`` command."""

from __future__ import annotations

import gc


def run() -> None:
    """The CLI entry point. Loading the CLI's modules creates tens of thousands of objects and
    no garbage, yet triggers collections that are a noticeable share of a short command's CPU:
    they are off while the modules load, then what loaded is frozen out of every later
    collection (figures: docs/benchmarks.md)."""
    gc.disable()
    try:
        from envkit.cli import main
    finally:
        gc.freeze()
        gc.enable()
    main()


if __name__ == "__main__":
    run()
