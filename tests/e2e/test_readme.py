"""Every command the README shows runs as written and cleans up after itself.

The rule, stated in the README's "About this README": fenced blocks marked ``sh`` (or ``bash``,
``shell``, ``console``) run with ``bash -euo pipefail``, in order within their section; ``python``
blocks run too (a block defining ``test_*`` functions through pytest, written to the file its
first line names, e.g. ``# test_orders.py``). Blocks marked ``text``, ``toml`` or ``yaml`` are
shown, not run: ``text`` is for shell lines that need the network, AWS or a scheduler. Any other
marker, or none, fails the test, so a new block is either run or explicitly marked as not run.

Each section runs in a scratch directory holding a copy of ``examples/`` (the README's commands
are written for the repository root), with a scratch ENVKIT_HOME shared by the module (so the
PostgreSQL template is built once), the project's venv first on PATH and the CI variables
cleared. After each section ``envkit list --json`` must be ``[]``: what is left is destroyed and
named in the failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CI_VARIABLES, tear_down_home

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHELL = {"sh", "bash", "shell", "console"}
PYTHON = {"python"}
SHOWN = {"text", "toml", "yaml"}
BLOCK_TIMEOUT = 120


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    section: str
    lang: str
    code: str
    line: int


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` in order, each with the heading it sits under."""
    blocks: list[Block] = []
    section = "(top)"
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"#{2,3} (.+)", line)
        if heading:
            section = heading.group(1).strip()
        fence = re.match(r"```(\S*)\s*$", line)
        if fence:
            start = i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            assert i < len(lines), f"README.md:{start}: unclosed fence"
            blocks.append(Block(section, fence.group(1), "\n".join(lines[start:i]) + "\n", start))
        i += 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.lang in SHELL | PYTHON]
SECTIONS = list(dict.fromkeys(b.section for b in RUNNABLE))


def test_every_block_is_marked_run_or_shown() -> None:
    known = SHELL | PYTHON | SHOWN
    odd = [f"README.md:{b.line} ```{b.lang}" for b in BLOCKS if b.lang not in known]
    assert not odd, f"mark these sh/python (run) or text/toml/yaml (shown): {odd}"
    assert RUNNABLE, "the README shows no runnable block"


def test_toml_blocks_parse_and_specs_validate(tmp_path: Path) -> None:
    """TOML is shown, not run; still, each block parses, and a spec passes envkit's checks."""
    from envkit.spec import load_spec_file

    shown = [b for b in BLOCKS if b.lang == "toml"]
    for block in shown:
        data = tomllib.loads(block.code)
        if {"databases", "services"} & set(data):
            path = tmp_path / "envkit.toml"
            path.write_text(block.code, encoding="utf-8")
            load_spec_file(path, known_datasets=["default"])  # raises naming the field


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("readme") / "envkit-home"
    yield path
    tear_down_home(path)


def environ(home: Path) -> dict[str, str]:
    """The environment of a user at a shell: no CI, no ENVKIT_* but the scratch home."""
    cleared = {*CI_VARIABLES, "GITHUB_ACTIONS", "GITHUB_OUTPUT", "GITHUB_ENV",
               "GITHUB_STEP_SUMMARY", "GITLAB_CI", "CI"}
    env = {k: v for k, v in os.environ.items()
           if k not in cleared and not k.startswith(("ENVKIT_", "PYTEST_"))}
    env["ENVKIT_HOME"] = str(home)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def command_for(block: Block, index: int, workdir: Path) -> list[str]:
    """How to run ``block``: bash for shell, python or pytest for python (from a file)."""
    if block.lang in SHELL:
        return ["bash", "-euo", "pipefail", "-c", block.code]
    named = re.match(r"#\s*(\S+\.py)\s*$", block.code.splitlines()[0])
    script = workdir / (named.group(1) if named else f"readme_block_{index}.py")
    script.write_text(block.code, encoding="utf-8")
    if re.search(r"^def test_", block.code, re.MULTILINE):
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    return [sys.executable, str(script)]


@pytest.mark.parametrize("section", SECTIONS)
def test_section_runs_and_cleans_up(section: str, home: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copytree(REPO / "examples", workdir / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    env = environ(home)
    try:
        for index, block in enumerate(b for b in RUNNABLE if b.section == section):
            result = subprocess.run(command_for(block, index, workdir), cwd=workdir, env=env,
                                    capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
            assert result.returncode == 0, (
                f"README.md:{block.line} ({block.lang}) exited {result.returncode}\n"
                f"--- block\n{block.code}--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
            )
    finally:
        listed = subprocess.run(["envkit", "list", "--json"], cwd=workdir, env=env,
                                capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
        left = [e["pipeline_id"] for e in json.loads(listed.stdout or "[]")]
        for pipeline_id in left:
            subprocess.run(["envkit", "down", pipeline_id], cwd=workdir, env=env,
                           capture_output=True, timeout=BLOCK_TIMEOUT)
    assert listed.returncode == 0, listed.stderr
    assert left == [], f"section {section!r} left environments behind: {left}"
