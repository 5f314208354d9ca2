"""``envkit doctor``: what each provider needs, found or not, and what to do about it."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from envkit.cli.app import app
from envkit.cli.render import console, print_json, settings
from envkit.errors import EnvkitError


def _check(name: str, provider: str, required: bool, probe: Any) -> dict[str, Any]:
    """Run one check: ``probe()`` returns a detail string or raises with a fix."""
    try:
        detail = probe()
        return {"name": name, "provider": provider, "ok": True, "required": required,
                "detail": detail, "fix": None}  # fmt: skip
    except EnvkitError as exc:
        return {"name": name, "provider": provider, "ok": False, "required": required,
                "detail": exc.message, "fix": exc.hint}  # fmt: skip
    except Exception as exc:  # a check must never crash doctor
        return {"name": name, "provider": provider, "ok": False, "required": required,
                "detail": f"{type(exc).__name__}: {exc}", "fix": None}  # fmt: skip


def run_checks() -> list[dict[str, Any]]:
    """Every provider's checks, local ones (required) first, then the aws provider's."""
    from envkit.providers import get_provider
    from envkit.settings import PROVIDERS

    current = settings()
    results = []
    for name in PROVIDERS:
        try:
            checks = get_provider(name, current).checks()
        except ImportError as exc:  # the provider's extra is not installed
            missing = {
                "name": f"the {name} provider",
                "provider": name,
                "ok": False,
                "required": False,
                "detail": f"not installed ({exc.name or exc})",
                "fix": f"pip install 'envkit[{name}]'",
            }
            results.append(missing)
            continue
        results += [_check(c.name, name, c.required, c.probe) for c in checks]
    return results


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check prerequisites: PostgreSQL (local provider); Pulumi, AWS, backend (aws provider)."""
    checks = run_checks()
    ok = all(c["ok"] for c in checks if c["required"])
    if as_json:
        print_json({"ok": ok, "checks": checks})
    else:
        out = console()
        for c in checks:
            mark = "[green]✔[/]" if c["ok"] else ("[red]✘[/]" if c["required"] else "[yellow]![/]")
            out.print(f"{mark} {c['name']} ({c['provider']}): {c['detail']}")
            if not c["ok"] and c["fix"]:
                out.print(f"    {c['fix']}", style="dim")
    if not ok:
        raise typer.Exit(1)
