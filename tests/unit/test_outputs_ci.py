"""GitHub Actions and dotenv renderings of the outputs (envkit.ci_outputs, envkit.outputs)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from envkit.ci_outputs import (
    EnvironmentInfo,
    github_file_entry,
    github_masks,
    render_step_summary,
    write_env_file,
    write_github,
)
from envkit.errors import ConfigError
from envkit.outputs import complete, render_env, render_json, secret_keys

PASSWORD = "s3cr3t-Pa55"
OUTPUTS = {
    "DATABASE_URL": f"postgresql://app:{PASSWORD}@127.0.0.5:5432/app",
    "DATABASE_HOST": "127.0.0.5",
    "DATABASE_PORT": "5432",
    "DATABASE_USER": "app",
    "DATABASE_PASSWORD": PASSWORD,
    "ENVKIT_PIPELINE_ID": "pr-1",
}
INFO = EnvironmentInfo("pr-1", "local", "ready", "2030-01-01T00:00:00Z", {"total": 0.12})


def parse_github_file(text: str) -> dict[str, str]:
    """Parse $GITHUB_OUTPUT / $GITHUB_ENV syntax the way the runner does."""
    values: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delimiter = line.split("<<", 1)
            body: list[str] = []
            while lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            i += 1
            values[key] = "\n".join(body)
        else:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def test_masks_cover_password_and_url_password() -> None:
    masks = github_masks(OUTPUTS)
    assert masks == f"::add-mask::{PASSWORD}\n"


def test_masks_cover_each_line_of_a_multiline_secret() -> None:
    masks = github_masks({"API_TOKEN": "line-one\nline-two"}).splitlines()
    assert "::add-mask::line-one" in masks
    assert "::add-mask::line-two" in masks


def test_file_entry_single_and_multiline() -> None:
    assert github_file_entry("A", "b=c") == "A=b=c\n"
    entry = github_file_entry("CERT", "x\ny\nZ=1")
    assert parse_github_file(entry) == {"CERT": "x\ny\nZ=1"}
    assert "Z=1" not in parse_github_file(entry)


def test_write_github_writes_all_three_files(tmp_path: Path) -> None:
    env = {name: str(tmp_path / name) for name in
           ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY")}
    env["GITHUB_ACTIONS"] = "true"
    result = write_github(OUTPUTS, INFO, env)
    assert len(result.written) == 3
    assert result.stdout == f"::add-mask::{PASSWORD}\n"
    for name in ("GITHUB_OUTPUT", "GITHUB_ENV"):
        assert parse_github_file(Path(env[name]).read_text()) == OUTPUTS
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert PASSWORD not in summary
    assert "| status | ready |" in summary
    assert "`DATABASE_HOST` | `127.0.0.5`" in summary


def test_write_github_appends(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("EARLIER=1\n")
    write_github({"A": "1"}, INFO, {"GITHUB_OUTPUT": str(out)})
    assert out.read_text() == "EARLIER=1\nA=1\n"


def test_write_github_without_runner_files_and_show_secrets_prints_masks_then_values() -> None:
    result = write_github(OUTPUTS, INFO, {"GITHUB_ACTIONS": "true"}, show_secrets=True)
    lines = result.stdout.splitlines()
    assert result.written == ()
    assert lines[0] == f"::add-mask::{PASSWORD}"
    first_value = next(i for i, line in enumerate(lines) if PASSWORD in line and "mask" not in line)
    assert all(line.startswith("::add-mask::") for line in lines[:first_value])
    assert f"DATABASE_PASSWORD={PASSWORD}" in lines


@pytest.mark.parametrize("environ", [{}, {"GITHUB_ACTIONS": "false"}, {"CI": "true"}],
                         ids=["bare", "actions-false", "other-ci"])
def test_write_github_outside_actions_prints_no_secret(environ: dict[str, str]) -> None:
    # Outside Actions nothing hides an ::add-mask:: line: it would print the password itself.
    result = write_github(OUTPUTS, INFO, environ)
    assert PASSWORD not in result.stdout
    assert "::add-mask::" not in result.stdout
    lines = result.stdout.splitlines()
    assert not any(line.startswith("DATABASE_PASSWORD=") for line in lines)  # not even masked
    assert "# not set here (secrets): DATABASE_URL DATABASE_PASSWORD" in lines[-1]
    assert "DATABASE_HOST=127.0.0.5" in lines
    assert not any(line.startswith("DATABASE_URL=") for line in lines)


def test_write_github_in_actions_without_files_masks_and_redacts() -> None:
    # Inside Actions but with no file to write to, the values would go to the log: the masks
    # hide them there, yet the rule is still that stdout carries no secret unless asked.
    result = write_github(OUTPUTS, INFO, {"GITHUB_ACTIONS": "true"})
    lines = result.stdout.splitlines()
    assert lines[0] == f"::add-mask::{PASSWORD}"
    assert [line for line in lines if PASSWORD in line] == [f"::add-mask::{PASSWORD}"]
    assert not any(line.startswith("DATABASE_PASSWORD=") for line in lines)  # not even masked
    assert "# not set here (secrets): DATABASE_URL DATABASE_PASSWORD" in lines[-1]


def test_write_github_outside_actions_with_show_secrets_prints_values() -> None:
    result = write_github(OUTPUTS, INFO, {}, show_secrets=True)
    assert f"DATABASE_PASSWORD={PASSWORD}" in result.stdout.splitlines()


def test_write_github_outside_actions_still_writes_named_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = write_github(OUTPUTS, INFO, {"GITHUB_OUTPUT": str(out)})
    assert result.stdout == ""  # no mask line: outside Actions it would show the password
    assert parse_github_file(out.read_text()) == OUTPUTS


def test_step_summary_escapes_pipes_and_never_holds_a_secret() -> None:
    outputs = {"WEIRD": "a|b", "SERVICE_TOKEN": "tok", "X": "contains tok"}
    summary = render_step_summary(outputs, INFO)
    assert "a\\|b" in summary
    assert "tok" not in summary


def test_env_file_real_values_mode_0600(tmp_path: Path) -> None:
    path = write_env_file(OUTPUTS, tmp_path / "sub" / "envkit.env")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert f"DATABASE_PASSWORD={PASSWORD}" in lines
    assert dict(line.split("=", 1) for line in lines) == OUTPUTS
    assert not list(path.parent.glob(".*tmp"))


def test_env_file_replaces_existing_world_readable_file(tmp_path: Path) -> None:
    target = tmp_path / "envkit.env"
    target.write_text("OLD=1\n")
    target.chmod(0o644)
    write_env_file({"A": "1"}, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text() == "A=1\n"


def test_env_file_refuses_multiline_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_env_file({"A": "x\ny"}, tmp_path / "e.env")
    assert not (tmp_path / "e.env").exists()


def test_plain_renderings_redact_by_default() -> None:
    assert PASSWORD not in render_env(OUTPUTS, show_secrets=False)
    assert PASSWORD not in render_json(OUTPUTS, show_secrets=False)
    assert PASSWORD in render_env(OUTPUTS, show_secrets=True)
    assert "'a b'" in render_env({"A": "a b"}, show_secrets=True)
    assert secret_keys(OUTPUTS) == ["DATABASE_URL", "DATABASE_PASSWORD"]


def test_complete_orders_contract_keys_first() -> None:
    merged = complete({"ZZZ": "1", "DATABASE_HOST": "h"}, pipeline_id="p", provider="local")
    assert list(merged) == ["DATABASE_HOST", "ENVKIT_PIPELINE_ID", "ENVKIT_PROVIDER", "ZZZ"]
