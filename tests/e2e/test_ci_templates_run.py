"""The CI templates of examples/ci, run as written: the shell lines of each job, in the order the CI
runs them, with the variables that job would have, against the real CLI.

A pipeline is played out job by job, including re-runs (GitHub "Re-run failed jobs", a GitLab
retry): later jobs and re-run attempts must find the environment the provision job made, use it
(the test step's DATABASE_URL connects), get it back when its server died, and the clean-up job
must leave nothing (``status`` absent, ``list --json`` empty).

What is not run as written, and why:
- installing envkit (``python3 -m venv``, ``pip install "$ENVKIT_INSTALL"``, ``$GITHUB_PATH``):
  it needs the network; an ``envkit`` on PATH runs this checkout instead (``python -m envkit``).
  The unit test ``test_ci_templates`` checks that every job installs it into a venv first.
  Nor is ``apt-get install postgresql``: the server binaries are here already.
- the tests themselves (``pytest …``, or the command after ``envkit run … --``): replaced by a
  script that connects to DATABASE_URL (``select 1``), logs what it saw, and exits as told.
- ``--provider aws`` lines: they need AWS credentials and Pulumi; the aws tiers cover them.
- ``ENVKIT_HOME`` of a template (``/var/lib/envkit``) becomes a scratch directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CI_VARIABLES
from test_front_ends import kill_server

from envkit.naming import detect_pipeline_id

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CI_DIR = ROOT / "examples" / "ci"
_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_INSTALL = re.compile(r"-m venv |\bpip\"? install\b|GITHUB_PATH|\bapt-get\b")
_TESTS = re.compile(r"^\s*pytest\b")

CHECK = """\
import json, os, sys
import psycopg

url = os.environ["DATABASE_URL"]
with psycopg.connect(url, connect_timeout=5) as conn:
    one = conn.execute("select 1").fetchone()[0]
with open(os.environ["CHECK_LOG"], "a") as log:
    log.write(json.dumps({"job": os.environ["CHECK_JOB"], "url": url, "one": one,
                          "pipeline_id": os.environ.get("ENVKIT_PIPELINE_ID")}) + "\\n")
sys.exit(int(os.environ.get("CHECK_EXIT", "0")))
"""


def base_environ() -> dict[str, str]:
    """This process's environment without any CI or envkit variable of the machine."""
    cleared = {*CI_VARIABLES, "GITHUB_ACTIONS", "GITHUB_OUTPUT", "GITHUB_ENV", "GITLAB_CI", "CI",
               "GITHUB_STEP_SUMMARY", "GITHUB_PATH", "ENVKIT_HOME", "ENVKIT_DATA_DIR"}
    return {k: v for k, v in os.environ.items() if k not in cleared}


def logical_lines(script: str) -> list[str]:
    """The script's lines with ``\\`` continuations joined."""
    return re.sub(r"\\\n", " ", script).splitlines()


@dataclass
class Runner:
    """Runs the lines of a job in bash, as a CI runner would, in a scratch world."""

    scratch: Path
    home: Path
    log: Path = field(init=False)
    bin: Path = field(init=False)
    ran: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log = self.scratch / "check.jsonl"
        self.bin = self.scratch / "bin"
        self.bin.mkdir(parents=True)
        shim = self.bin / "envkit"
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m envkit "$@"\n')
        shim.chmod(0o755)
        (self.scratch / "check_db.py").write_text(CHECK)

    @property
    def check_command(self) -> str:
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(self.scratch / 'check_db.py'))}"

    def environ(self, variables: Mapping[str, str]) -> dict[str, str]:
        env = {**base_environ(), **variables}
        env["ENVKIT_HOME"] = str(self.home)  # the templates' /var/lib/envkit, scratch here
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["CHECK_LOG"] = str(self.log)
        return env

    def translate(self, line: str) -> str | None:
        """The line to run for ``line``: None for an install line, the check for the tests."""
        if not line.strip() or line.lstrip().startswith("#") or _INSTALL.search(line):
            return None
        if _TESTS.match(line):
            return self.check_command
        if re.match(r"^\s*envkit run\b", line) and " -- " in line:
            head, _tests = line.split(" -- ", 1)
            assert "--provider aws" not in head
            return f"{head} -- {self.check_command}"
        return line

    def run(self, job: str, script: str, variables: Mapping[str, str], cwd: Path) -> int:
        """Run ``script`` (already expression-free) as one bash script; its exit code."""
        lines = [t for line in logical_lines(script) if (t := self.translate(line)) is not None]
        if not lines:
            return 0
        self.ran.extend(lines)
        env = self.environ({**variables, "CHECK_JOB": job})
        cwd.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                               "\n".join(lines)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        print(f"--- {job}\n{chr(10).join(lines)}\n{done.stdout}{done.stderr}")
        return done.returncode

    def checks(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def envkit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                              text=True, timeout=120, check=False, env=self.environ({}))

    def status(self, pipeline_id: str) -> dict[str, Any]:
        done = self.envkit("status", pipeline_id, "--json")
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    def listed(self) -> list[Any]:
        done = self.envkit("list", "--json")
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))

    def kill_server(self, pipeline_id: str) -> None:
        """The runner host restarted: the environment's server is gone, its data is not."""
        kill_server(self.home, pipeline_id)


@pytest.fixture
def runner(envkit_home: Path, tmp_path: Path) -> Runner:
    return Runner(tmp_path / "ci", envkit_home)


def load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((CI_DIR / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def assert_gone(runner: Runner, pipeline_id: str) -> None:
    assert runner.status(pipeline_id)["status"] == "absent"
    assert runner.listed() == []


# -- GitHub Actions ---------------------------------------------------------------------------


def substitute(text: str, context: Mapping[str, str]) -> str:
    """``${{ … }}`` replaced from ``context``; an expression the test does not know fails it."""

    def value(match: re.Match[str]) -> str:
        assert match.group(1) in context, f"unknown expression ${{{{ {match.group(1)} }}}}"
        return context[match.group(1)]

    return _EXPR.sub(value, text)


def condition(expression: str | None, results: Mapping[str, str], context: Mapping[str, str],
              default_ok: bool) -> bool:
    """A step or job ``if:`` (the few forms the templates use), like GitHub evaluates it."""
    if expression is None:
        return default_ok
    text = _EXPR.sub(lambda m: m.group(1), expression)
    text = re.sub(r"needs\.([\w-]+)\.result", lambda m: repr(results[m.group(1)]), text)
    text = re.sub(r"vars\.(\w+)", lambda m: repr(context.get(f"vars.{m.group(1)}", "")), text)
    text = text.replace("always()", "True").replace("||", " or ").replace("&&", " and ")
    return bool(eval(text, {"__builtins__": {}}))


def parse_github_file(path: Path) -> dict[str, str]:
    """``$GITHUB_ENV`` / ``$GITHUB_OUTPUT``: ``K=v`` lines and ``K<<DELIM`` heredocs."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delimiter = line.split("<<", 1)
            body = []
            for more in lines:
                if more == delimiter:
                    break
                body.append(more)
            values[key] = "\n".join(body)
        elif "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


@dataclass
class GitHubRun:
    """One workflow run of a GitHub template: its run ID stays, attempts and jobs vary."""

    runner: Runner
    workflow: dict[Any, Any]
    run_id: str = "4242"
    repository: str = "example-org/example-app"
    results: dict[str, str] = field(default_factory=dict)

    @property
    def pipeline_id(self) -> str:
        found = detect_pipeline_id(
            {"GITHUB_RUN_ID": self.run_id, "GITHUB_REPOSITORY": self.repository}
        )
        assert found
        return found

    def job(self, name: str, attempt: int, *, matrix: Mapping[str, str] | None = None,
            index: int = 0, check_exit: int = 0) -> str:
        """Run job ``name`` as attempt ``attempt``; its result ("success" or "failure")."""
        job = self.workflow["jobs"][name]
        label = f"{name}{'-' + '-'.join(matrix.values()) if matrix else ''}#{attempt}"
        files = self.runner.scratch / "github" / label
        files.mkdir(parents=True)
        variables = {
            "GITHUB_ACTIONS": "true", "CI": "true", "GITHUB_RUN_ID": self.run_id,
            "GITHUB_RUN_ATTEMPT": str(attempt), "GITHUB_REPOSITORY": self.repository,
            "GITHUB_JOB": name, "RUNNER_TEMP": str(files / "tmp"),
            "GITHUB_ENV": str(files / "env"), "GITHUB_OUTPUT": str(files / "output"),
            "GITHUB_STEP_SUMMARY": str(files / "summary"), "GITHUB_PATH": str(files / "path"),
            "CHECK_EXIT": str(check_exit),
        }
        context = {"github.run_id": self.run_id, "github.run_attempt": str(attempt),
                   "github.repository": self.repository, "strategy.job-index": str(index)}
        context.update({f"matrix.{k}": v for k, v in (matrix or {}).items()})
        for scope in (self.workflow.get("env") or {}, job.get("env") or {}):
            variables.update({k: substitute(str(v), context) for k, v in scope.items()})
        result = "success"
        for step in job["steps"]:
            if "run" not in step:
                continue  # actions (checkout, setup-python, artifacts) are the runner's part
            ok = result == "success"
            if not condition(step.get("if"), self.results, context, ok):
                continue
            step_vars = {**variables, **parse_github_file(files / "env")}
            step_vars.update({k: substitute(str(v), context) for k, v in
                              (step.get("env") or {}).items()})
            code = self.runner.run(label, substitute(step["run"], context), step_vars,
                                   files / "work")
            if code != 0:
                result = "failure"
        self.results[name] = result
        return result


def test_github_workflow_one_environment_across_jobs_and_reruns(runner: Runner) -> None:
    run = GitHubRun(runner, load("github-actions.yml"))
    pid = run.pipeline_id
    assert run.job("provision", 1) == "success"
    created = runner.status(pid)
    assert (created["status"], created["alive"]) == ("ready", True), created

    # attempt 1: shard 1 passes, shard 2 fails; the clean-up keeps the environment for debugging
    assert run.job("test", 1, matrix={"shard": "1"}) == "success"
    assert run.job("test", 1, matrix={"shard": "2"}, check_exit=1) == "failure"
    assert run.job("report-and-clean-up", 1) == "success"
    assert runner.status(pid)["status"] == "preserved"

    # "Re-run failed jobs", attempt 2: the test job finds the environment alive and reuses it
    assert run.job("test", 2, matrix={"shard": "2"}, check_exit=1) == "failure"
    reused = runner.status(pid)
    assert reused["created_at"] == created["created_at"] and reused["alive"] is True, reused
    assert run.job("report-and-clean-up", 2) == "success"

    # the runner host restarted: attempt 3 finds the server gone and gets it started again
    runner.kill_server(pid)
    assert runner.status(pid)["alive"] is False
    assert run.job("test", 3, matrix={"shard": "2"}) == "success"
    assert runner.status(pid)["alive"] is True
    assert run.job("report-and-clean-up", 3) == "success"
    assert_gone(runner, pid)

    checks = runner.checks()
    assert [c["job"] for c in checks] == ["test-1#1", "test-2#1", "test-2#2", "test-2#3"]
    assert {c["pipeline_id"] for c in checks} == {pid} and {c["one"] for c in checks} == {1}
    assert len({c["url"] for c in checks}) == 1  # one environment, started again on its data
    assert any(line.startswith("envkit down --preserve") for line in runner.ran)


def test_github_run_template_per_job_and_reruns(runner: Runner) -> None:
    run = GitHubRun(runner, load("github-actions-run.yml"))
    assert run.job("test", 1, matrix={"python": "3.11"}, index=0) == "success"
    assert run.job("test", 1, matrix={"python": "3.12"}, index=1, check_exit=1) == "failure"
    assert runner.listed() == []  # --on-failure destroy: nothing kept on a hosted runner
    assert run.job("test", 2, matrix={"python": "3.12"}, index=1) == "success"
    checks = runner.checks()
    assert [c["pipeline_id"] for c in checks] == [
        f"gh-{run.run_id}-py0", f"gh-{run.run_id}-py1", f"gh-{run.run_id}-py1"
    ]
    assert runner.listed() == []


def test_github_reaper_template(runner: Runner) -> None:
    keep = runner.envkit("up", "still-wanted", "--no-seed", "--ttl", "1h")
    assert keep.returncode == 0, keep.stderr
    run = GitHubRun(runner, load("github-reaper.yml"))
    # `vars.ENVKIT_REAP_AWS` is unset: the `--provider aws` step is skipped, as on a runner
    # without AWS (it needs credentials and Pulumi; the aws tiers test it)
    assert run.job("reap", 1) == "success"
    report = json.loads((runner.scratch / "github" / "reap#1" / "work" / "reap-local.json")
                        .read_text())
    assert "still-wanted" not in json.dumps(report["reaped"])
    assert not any("--provider aws" in line for line in runner.ran)
    assert runner.status("still-wanted")["status"] == "ready"
    runner.envkit("down", "still-wanted")


# -- GitLab CI --------------------------------------------------------------------------------


@dataclass
class GitLabPipeline:
    """One pipeline of the GitLab template: its pipeline ID stays, job IDs grow with retries."""

    runner: Runner
    config: dict[Any, Any]
    pipeline: str = "5151"
    project: str = "example-group/example-app"
    source: str = "push"
    dotenv: dict[str, str] = field(default_factory=dict)
    # the latest result of each job (and node): a retry replaces the result it retried
    results: dict[tuple[str, int | None], str] = field(default_factory=dict)
    job_ids: Iterator[int] = field(default_factory=lambda: iter(range(9001, 9999)))

    @property
    def pipeline_id(self) -> str:
        found = detect_pipeline_id({"CI_PIPELINE_ID": self.pipeline,
                                    "CI_PROJECT_PATH": self.project})
        assert found
        return found

    def runs(self, name: str) -> bool:
        """Whether the job's ``rules`` let it run now (the forms the template uses)."""
        for rule in self.config[name].get("rules", [{}]):
            test = rule.get("if", "")
            match = re.fullmatch(r'\$CI_PIPELINE_SOURCE\s*(==|!=)\s*"(\w+)"', test)
            assert match or not test, f"rule {test!r} not understood"
            if match and (self.source == match.group(2)) != (match.group(1) == "=="):
                continue
            when = rule.get("when", "on_success")
            return {"on_success": not self.failed_before(name),
                    "on_failure": self.failed_before(name), "always": True}[when]
        return False

    def failed_before(self, name: str) -> bool:
        """Whether a job of a stage before ``name``'s failed (its latest run)."""
        stages = self.config["stages"]
        mine = stages.index(self.config[name]["stage"])
        return any(
            result == "failure" and stages.index(self.config[job]["stage"]) < mine
            for (job, _node), result in self.results.items()
        )

    def job(self, name: str, *, node: int | None = None, check_exit: int = 0) -> str | None:
        """Run job ``name`` (one node of a ``parallel`` job); its result, None when skipped."""
        if not self.runs(name):
            return None
        job = self.config[name]
        job_id = str(next(self.job_ids))
        label = f"{name}{'-' + str(node) if node else ''}#{job_id}"
        variables = {
            "GITLAB_CI": "true", "CI": "true", "CI_PIPELINE_ID": self.pipeline,
            "CI_PROJECT_PATH": self.project, "CI_PROJECT_ID": "12", "CI_JOB_ID": job_id,
            "CI_JOB_NAME": name, "CI_PIPELINE_SOURCE": self.source,
            "CHECK_EXIT": str(check_exit),
        }
        if node is not None:
            variables.update({"CI_NODE_INDEX": str(node), "CI_NODE_TOTAL": str(job["parallel"])})
        variables.update({k: str(v) for k, v in (self.config.get("variables") or {}).items()})
        variables.update({k: str(v) for k, v in (job.get("variables") or {}).items()})
        variables.update(self.dotenv)  # dotenv report variables win over the YAML's
        before = job.get("before_script", self.config.get("default", {}).get("before_script", []))
        script = "\n".join([*before, *job["script"]])
        build_dir = self.runner.scratch / "gitlab" / label  # a fresh checkout per job
        code = self.runner.run(label, script, variables, build_dir)
        report = job.get("artifacts", {}).get("reports", {}).get("dotenv")
        if code == 0 and report:  # GitLab hands the dotenv report to jobs of later stages
            for line in (build_dir / report).read_text().splitlines():
                key, sep, value = line.partition("=")
                if sep and not key.startswith("#"):
                    self.dotenv[key] = value
        result = "success" if code == 0 else "failure"
        self.results[name, node] = result
        return result


def test_gitlab_pipeline_one_environment_across_jobs_and_retries(runner: Runner) -> None:
    pipeline = GitLabPipeline(runner, load("gitlab-ci.yml"))
    pid = pipeline.pipeline_id
    assert pipeline.job("provision") == "success"
    created = runner.status(pid)
    assert (created["status"], created["alive"]) == ("ready", True), created
    assert pipeline.dotenv["ENVKIT_PIPELINE_ID"] == pid

    # three parallel test jobs, each a job ID of its own; node 2 fails
    assert pipeline.job("test", node=1) == "success"
    assert pipeline.job("test", node=2, check_exit=1) == "failure"
    assert pipeline.job("test", node=3) == "success"
    assert pipeline.job("destroy") is None  # on_success: not after a failure
    assert pipeline.job("preserve-for-debugging") == "success"
    assert runner.status(pid)["status"] == "preserved"

    # retry of node 2 (a new job ID): the environment is alive and reused
    assert pipeline.job("test", node=2) == "success"
    reused = runner.status(pid)
    assert reused["created_at"] == created["created_at"] and reused["alive"] is True, reused

    # the runner host restarted; a retried job gets the environment started again
    runner.kill_server(pid)
    assert pipeline.job("test", node=3) == "success"
    assert runner.status(pid)["alive"] is True

    assert pipeline.job("preserve-for-debugging") is None
    assert pipeline.job("destroy") == "success"
    assert_gone(runner, pid)

    checks = runner.checks()
    assert len(checks) == 5 and {c["pipeline_id"] for c in checks} == {pid}
    assert {c["one"] for c in checks} == {1} and len({c["url"] for c in checks}) == 1

    # a scheduled pipeline runs only the reaper
    scheduled = GitLabPipeline(runner, pipeline.config, pipeline="5152", source="schedule")
    assert [scheduled.job(name) for name in ("provision", "test", "destroy")] == [None] * 3
    assert scheduled.job("reap") == "success"
    reports = list((runner.scratch / "gitlab").glob("reap#*/reap.json"))
    assert len(reports) == 1 and "reaped" in json.loads(reports[0].read_text())


def test_every_template_is_run_here() -> None:
    """A new template needs a test above that plays it out."""
    played = {"github-actions.yml", "github-actions-run.yml", "github-reaper.yml",
              "gitlab-ci.yml"}
    assert {p.name for p in CI_DIR.glob("*.y*ml")} == played
