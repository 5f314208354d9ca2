"""The CI templates (examples/ci) and envkit's own workflows parse, and every ``envkit …`` command
in them is a valid invocation of the CLI as it is now: command names, option names, option
values (choices) and argument counts, checked by click's own parser on the real Typer app."""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
import yaml

import envkit.cli

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "examples" / "ci").glob("*.y*ml"))
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
SCRIPT_KEYS = {"run", "script", "before_script", "after_script"}
OPERATORS = {";", "&&", "||", "|", "(", ")", "&", "!", "{", "}"}
KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "time", "exec", "command"}
_GH_EXPR = re.compile(r"\$\{\{.*?\}\}")
_SUBST = re.compile(r"\$\(([^()]*)\)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def scripts(node: Any, key: str | None = None) -> Iterator[str]:
    """Every shell script in a workflow: GitHub ``run:``, GitLab ``script:`` and friends."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from scripts(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from scripts(item, key)
    elif isinstance(node, str) and key in SCRIPT_KEYS:
        yield node


def logical_lines(script: str) -> Iterator[str]:
    """Lines with ``\\`` continuations joined, ``${{ }}`` expressions replaced by a word and
    ``$( … )`` substitutions yielded as lines of their own."""
    joined = re.sub(r"\\\n", " ", script)
    for raw in joined.splitlines():
        line = _GH_EXPR.sub("GHEXPR", raw)
        while match := _SUBST.search(line):
            yield match.group(1)
            line = line[: match.start()] + "SUBST" + line[match.end() :]
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


def envkit_invocations(script: str) -> Iterator[list[str]]:
    """The argument lists of every ``envkit`` (or ``python -m envkit``) command in a script."""
    for line in logical_lines(script):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        at_command = True
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token in OPERATORS or (at_command and token in KEYWORDS):
                at_command = True
                i += 1
                continue
            if at_command and _ASSIGNMENT.match(token):
                i += 1
                continue
            start = None
            if at_command and Path(token).name == "envkit":
                start = i + 1
            elif at_command and Path(token).name.startswith("python") and tokens[i + 1 : i + 3] == [
                "-m", "envkit"
            ]:
                start = i + 3
            at_command = False
            if start is not None:
                end = start
                while end < len(tokens) and tokens[end] not in OPERATORS:
                    end += 1
                yield tokens[start:end]
                i = end
                continue
            i += 1


def click_of(command: Any) -> ModuleType:
    """The click package the CLI is built on (recent Typer vendors its own as typer._click)."""
    base = next(c for c in type(command).__mro__ if c.__name__ == "Command")
    return importlib.import_module(base.__module__.rsplit(".", 1)[0])


def check_invocation(group: Any, args: list[str]) -> None:
    """Parse ``args`` with the CLI's own click objects; raise on anything the CLI would refuse."""
    click = click_of(group)
    if not args:
        raise AssertionError("a bare 'envkit' (prints usage, exits 2)")
    if args[0].startswith("-"):
        known = {opt for p in group.params for opt in p.opts}
        assert args[0] in known | {"--help"}, f"unknown option {args[0]} of envkit"
        return
    name, rest = args[0], args[1:]
    command = group.commands.get(name)
    assert command is not None, (
        f"'envkit {name}' is not a command; the CLI has: {', '.join(sorted(group.commands))}"
    )
    parent = click.Context(group, info_name="envkit")
    try:
        command.make_context(name, list(rest), parent=parent)
    except typer.Exit:
        pass  # --help and friends exit early: valid
    except click.exceptions.UsageError as exc:
        raise AssertionError(f"envkit {' '.join(args)}: {exc.format_message()}") from exc


@pytest.fixture(scope="module")
def cli() -> Any:
    """The click group behind ``envkit`` (whichever click Typer uses)."""
    command = typer.main.get_command(envkit.cli.app)
    assert isinstance(getattr(command, "commands", None), dict)
    return command


def test_there_are_templates_and_workflows() -> None:
    names = {p.name for p in TEMPLATES}
    assert {"github-actions.yml", "github-actions-run.yml", "gitlab-ci.yml",
            "github-reaper.yml"} <= names
    assert (ROOT / ".github" / "workflows" / "ci.yml") in WORKFLOWS


@pytest.mark.parametrize("path", TEMPLATES + WORKFLOWS, ids=lambda p: p.name)
def test_every_envkit_command_is_valid(path: Path, cli: Any) -> None:
    invocations = [args for s in scripts(load(path)) for args in envkit_invocations(s)]
    assert invocations, f"{path.name} runs no envkit command"
    problems = []
    for args in invocations:
        try:
            check_invocation(cli, args)
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "path", [p for p in TEMPLATES + WORKFLOWS if "gitlab" not in p.name], ids=lambda p: p.name
)
def test_github_workflow_shape(path: Path) -> None:
    data = load(path)
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers, f"{path.name}: no triggers"
    jobs = data["jobs"]
    for name, job in jobs.items():
        assert "runs-on" in job, f"{path.name}: job {name} has no runs-on"
        assert job.get("steps"), f"{path.name}: job {name} has no steps"
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            assert need in jobs, f"{path.name}: job {name} needs unknown job {need}"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{path.name}: bad step {step}"


def test_gitlab_template_shape() -> None:
    data = load(ROOT / "examples" / "ci" / "gitlab-ci.yml")
    stages = data["stages"]
    jobs = {k: v for k, v in data.items()
            if isinstance(v, dict) and ("script" in v or "stage" in v)}
    for name, job in jobs.items():
        assert job.get("stage") in stages, f"job {name}: stage {job.get('stage')} not in {stages}"
        assert job.get("script"), f"job {name} has no script"
    assert data["provision"]["artifacts"]["reports"]["dotenv"] == "envkit.env"


def test_templates_cover_the_lifecycle() -> None:
    used = {
        args[0]
        for path in TEMPLATES
        for s in scripts(load(path))
        for args in envkit_invocations(s)
        if args
    }
    assert {"up", "wait", "outputs", "down", "run", "reap"} <= used


def test_scheduled_reaper_runs_on_cron() -> None:
    data = load(ROOT / "examples" / "ci" / "github-reaper.yml")
    triggers = data.get("on", data.get(True))
    assert triggers["schedule"][0]["cron"]


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ('envkit up "$ID" --format github', [["up", "$ID", "--format", "github"]]),
        ("FOO=1 envkit down x && echo ok", [["down", "x"]]),
        ('psql "$(envkit outputs p --format json)" -c "select 1"',
         [["outputs", "p", "--format", "json"]]),
        ("envkit run a \\\n  --ttl 1h -- pytest -q", [["run", "a", "--ttl", "1h", "--",
                                                       "pytest", "-q"]]),
        ("pip install envkit\npython -m envkit status ${{ env.X }} --json",
         [["status", "GHEXPR", "--json"]]),
        ("envkit reap --json | tee r.json", [["reap", "--json"]]),
        ("echo envkit up  # not a command", []),
    ],
)
def test_invocation_extraction(script: str, expected: list[list[str]]) -> None:
    assert list(envkit_invocations(script)) == expected


def test_checker_rejects_what_the_cli_rejects(cli: Any) -> None:
    for bad in (["nope"], ["up", "--no-such-option"], ["up", "--format", "yaml"],
                ["status", "a", "b"], []):
        with pytest.raises(AssertionError):
            check_invocation(cli, bad)
    check_invocation(cli, ["up", "x", "--format", "github"])
    check_invocation(cli, ["--help"])
    check_invocation(cli, ["down", "--help"])


def job_scripts(data: dict[Any, Any]) -> Iterator[tuple[str, list[str]]]:
    """Each job of a template and its scripts in the order they run (GitLab's default
    ``before_script`` first)."""
    if "jobs" in data:  # GitHub
        for name, job in data["jobs"].items():
            yield name, [step["run"] for step in job["steps"] if "run" in step]
        return
    default = data.get("default", {}).get("before_script", [])
    for name, job in data.items():
        if isinstance(job, dict) and "script" in job:
            yield name, [*job.get("before_script", default), *job["script"]]


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_templates_install_envkit_into_a_venv_first(path: Path) -> None:
    """envkit is not on PyPI, and Debian 12 / Ubuntu 24.04 refuse ``pip install`` into the
    system Python: every job installs ``$ENVKIT_INSTALL`` (a git URL, a wheel or a path) with a
    venv's pip before its first envkit command."""
    text = path.read_text(encoding="utf-8")
    data = load(path)
    install = (data.get("env") or data.get("variables") or {}).get("ENVKIT_INSTALL", "")
    assert re.fullmatch(r"envkit(\[\w+\])? @ git\+https://\S+", install), install
    assert not re.search(r"pip install[^\n]*\benvkit\b", text), "envkit is not on PyPI"
    for job, steps in job_scripts(data):
        runs = [bool(list(envkit_invocations(script))) for script in steps]
        if not any(runs):
            continue
        first = runs.index(True)
        before = "\n".join(steps[:first])
        assert "-m venv " in before, f"{path.name}: job {job} makes no venv before envkit"
        assert re.search(r'venv/bin/pip"? install [^\n]*"\$ENVKIT_INSTALL"', before), (
            f"{path.name}: job {job} does not install $ENVKIT_INSTALL with the venv's pip"
        )
