"""The outputs contract and its renderings (text, json, env/dotenv, GitHub Actions).

Secrets are masked unless the caller asks for them; the GitHub rendering prints real values only
after ``::add-mask::`` lines so the runner hides them in every later log line.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping

from envkit.redact import is_secret_key, redact_outputs, secret_values

FORMATS = ("text", "json", "env", "github")
CONTRACT_KEYS = (
    "DATABASE_URL",
    "DATABASE_HOST",
    "DATABASE_PORT",
    "DATABASE_NAME",
    "DATABASE_USER",
    "DATABASE_PASSWORD",
    "ENVKIT_PIPELINE_ID",
    "ENVKIT_PROVIDER",
    "NETWORK_ID",
    "CLUSTER_NAME",
)
REDIS_KEYS = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT")  # when the environment has Redis
_SAFE_ENV_VALUE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]*$")


def complete(outputs: Mapping[str, str], *, pipeline_id: str, provider: str) -> dict[str, str]:
    """Provider outputs plus the keys every environment has, in contract order."""
    merged = dict(outputs)
    merged["ENVKIT_PIPELINE_ID"] = pipeline_id
    merged["ENVKIT_PROVIDER"] = provider
    ordered = {k: merged[k] for k in (*CONTRACT_KEYS, *REDIS_KEYS) if k in merged}
    ordered.update({k: v for k, v in sorted(merged.items()) if k not in ordered})
    return ordered


def visible(outputs: Mapping[str, str], show_secrets: bool) -> dict[str, str]:
    """The outputs as they may be shown."""
    return dict(outputs) if show_secrets else redact_outputs(outputs)


def render_env(outputs: Mapping[str, str], *, show_secrets: bool) -> str:
    """``KEY=value`` lines (dotenv; values quoted when needed), sourceable by sh.

    Without ``show_secrets`` the secret variables are left out, not masked, and a comment names
    them: ``eval "$(envkit outputs ID --format env)"`` must not quietly set a URL whose
    password is asterisks."""
    hidden = [] if show_secrets else secret_keys(outputs)
    lines = []
    for key, value in outputs.items():
        if key in hidden:
            continue
        shown = value if _SAFE_ENV_VALUE.fullmatch(value) else shlex.quote(value)
        lines.append(f"{key}={shown}")
    if hidden:
        lines.append(f"# not set here (secrets): {' '.join(hidden)}; add --show-secrets for them")
    return "\n".join(lines) + "\n"


def render_json(outputs: Mapping[str, str], *, show_secrets: bool) -> str:
    """The flat outputs object."""
    return json.dumps(visible(outputs, show_secrets), indent=2) + "\n"


def render_github_masks(outputs: Mapping[str, str]) -> str:
    """``::add-mask::`` for every secret value, to print before any real value."""
    return "".join(f"::add-mask::{secret}\n" for secret in secret_values(outputs))


def secret_keys(outputs: Mapping[str, str]) -> list[str]:
    """Keys whose values are secret or embed one."""
    return [k for k, v in outputs.items() if is_secret_key(k) or "://" in v]
