"""Outputs for CI systems: GitHub Actions files and a dotenv file for GitLab's ``dotenv`` report.

GitHub Actions reads step outputs from ``$GITHUB_OUTPUT``, exported variables from
``$GITHUB_ENV`` and a job summary from ``$GITHUB_STEP_SUMMARY``. Secrets must be masked with
``::add-mask::`` on stdout *before* any real value reaches a log or one of those files, so the
runner hides them everywhere later. The summary never holds a secret: it is rendered from the
redacted outputs and scrubbed again.

The dotenv file holds real values on purpose: it is an artifact consumed by later jobs (GitLab
``artifacts:reports:dotenv``). It is created 0600 and never printed.

Nothing here prints; functions return the text for the CLI to print.
"""

from __future__ import annotations

import os
import secrets as _random
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from envkit.outputs import render_env
from envkit.redact import redact_outputs, scrub, secret_values
from envkit.state import Record

GITHUB_OUTPUT = "GITHUB_OUTPUT"
GITHUB_ENV = "GITHUB_ENV"
GITHUB_STEP_SUMMARY = "GITHUB_STEP_SUMMARY"


@dataclass(frozen=True)
class EnvironmentInfo:
    """What the step summary says about an environment besides its outputs."""

    pipeline_id: str
    provider: str
    status: str
    expires_at: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GithubResult:
    """What :func:`write_github` did: text for stdout and the files it appended to."""

    stdout: str
    written: tuple[Path, ...]


def github_masks(outputs: Mapping[str, str]) -> str:
    """``::add-mask::`` lines for every secret value (each line of a multi-line secret too)."""
    lines: list[str] = []
    for secret in secret_values(outputs):
        for part in [secret, *secret.splitlines()]:
            if part.strip() and f"::add-mask::{part}" not in lines:
                lines.append(f"::add-mask::{part}")
    return "".join(f"{line}\n" for line in lines)


def github_file_entry(key: str, value: str) -> str:
    """One ``$GITHUB_OUTPUT`` / ``$GITHUB_ENV`` entry; multi-line values use a heredoc delimiter.

    The delimiter is random and checked against the value, so a value can never end the block
    early and inject other variables.
    """
    if "\n" not in value and "\r" not in value:
        return f"{key}={value}\n"
    delimiter = f"ENVKIT_EOF_{_random.token_hex(8)}"
    while delimiter in value:  # pragma: no cover - 64 random bits
        delimiter = f"ENVKIT_EOF_{_random.token_hex(8)}"
    return f"{key}<<{delimiter}\n{value}\n{delimiter}\n"


def render_github_file(outputs: Mapping[str, str]) -> str:
    """Every output as ``$GITHUB_OUTPUT`` / ``$GITHUB_ENV`` entries (real values)."""
    return "".join(github_file_entry(k, v) for k, v in outputs.items())


def render_step_summary(outputs: Mapping[str, str], info: EnvironmentInfo) -> str:
    """A markdown status table for ``$GITHUB_STEP_SUMMARY``, with every secret redacted."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    total = info.timings.get("total")
    rows = [
        ("pipeline", f"`{cell(info.pipeline_id)}`"),
        ("provider", cell(info.provider)),
        ("status", cell(info.status)),
        ("expires", cell(info.expires_at or "-")),
    ]
    if total is not None:
        rows.append(("ready in", f"{total:.2f} s"))
    lines = [
        f"### envkit environment `{cell(info.pipeline_id)}`",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "| output | value |",
        "| --- | --- |",
        *(f"| `{cell(k)}` | `{cell(v)}` |" for k, v in redact_outputs(outputs).items()),
        "",
    ]
    return scrub("\n".join(lines) + "\n", secret_values(outputs))


def _append(path: str, text: str) -> Path:
    target = Path(path)
    with target.open("a", encoding="utf-8") as handle:
        handle.write(text)
    return target


def in_github_actions(environ: Mapping[str, str]) -> bool:
    """Whether this runs as a GitHub Actions step (the runner sets ``GITHUB_ACTIONS=true``)."""
    return environ.get("GITHUB_ACTIONS") == "true"


def write_github(
    outputs: Mapping[str, str],
    info: EnvironmentInfo,
    environ: Mapping[str, str] | None = None,
    *,
    show_secrets: bool = False,
) -> GithubResult:
    """Hand the outputs to GitHub Actions.

    Appends every output (real values) to ``$GITHUB_OUTPUT`` / ``$GITHUB_ENV`` and a redacted
    summary to ``$GITHUB_STEP_SUMMARY`` when they are set, and returns the text for the caller
    to print: inside Actions, the masks first (the runner hides those values in every later log
    line; the files are read only after the step, so printing after this returns is early
    enough); when neither file is set, ``KEY=value`` lines.

    No secret reaches that text without ``show_secrets``: outside Actions an ``::add-mask::``
    line is the secret in clear (nothing hides it), and ``KEY=value`` lines on stdout end up in
    a log, masked or not; so both are left out or redacted unless ``show_secrets`` asks.
    """
    env = os.environ if environ is None else environ
    written: list[Path] = []
    entries = render_github_file(outputs)
    to_files = bool(env.get(GITHUB_OUTPUT) or env.get(GITHUB_ENV))
    for name in (GITHUB_OUTPUT, GITHUB_ENV):
        if env.get(name):
            written.append(_append(env[name], entries))
    if env.get(GITHUB_STEP_SUMMARY):
        written.append(_append(env[GITHUB_STEP_SUMMARY], render_step_summary(outputs, info)))
    stdout = github_masks(outputs) if in_github_actions(env) or show_secrets else ""
    if not to_files:
        stdout += render_env(outputs, show_secrets=show_secrets)
    return GithubResult(stdout=stdout, written=tuple(written))


def write_env_file(outputs: Mapping[str, str], path: Path) -> Path:
    """Write the outputs, real values, as a dotenv file (GitLab ``dotenv`` report), mode 0600.

    GitLab's dotenv parser takes ``KEY=value`` per line without quotes or multi-line values, so
    values go in as they are; a value with a newline is refused rather than silently split.
    The file is replaced atomically and is never world-readable, not even for a moment.
    """
    from envkit.errors import ConfigError, EnvkitError

    lines: list[str] = []
    for key, value in outputs.items():
        if "\n" in value or "\r" in value:
            raise ConfigError(
                f"Output {key} spans several lines, which a dotenv file cannot hold.",
                hint="Use --format json or --format github instead.",
            )
        lines.append(f"{key}={value}\n")
    path = path.expanduser()
    try:
        _replace_private(path, "".join(lines))
    except OSError as exc:
        raise EnvkitError(
            f"Cannot write the env file {path}: {exc.strerror or exc}.",
            hint="Give --env-file a path in a directory you can write (not a directory itself).",
        ) from exc
    return path


def _replace_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp: a random name opened O_CREAT|O_EXCL (a planted file or symlink is never opened,
    # let alone followed) with mode 0600 before any byte is written. A predictable name
    # (.<name>.<pid>.tmp) let a local user who can write the directory plant symlinks for
    # upcoming pids and have the outputs, password included, written over a file of their
    # choosing. os.replace then swaps the directory entry itself: when ``path`` is a symlink,
    # the link is replaced, its target never written.
    fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def write_github_for(
    record: Record, environ: Mapping[str, str] | None = None, *, show_secrets: bool = False
) -> GithubResult:
    """:func:`write_github` for a stored environment record."""
    info = EnvironmentInfo(
        pipeline_id=record.pipeline_id,
        provider=record.provider,
        status=str(record.status),
        expires_at=record.expires_at,
        timings=record.timings,
    )
    return write_github(record.outputs, info, environ, show_secrets=show_secrets)
