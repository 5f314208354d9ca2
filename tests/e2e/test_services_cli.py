"""Environment specs and services through the CLI, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envkit.providers.local.layout import Layout
from envkit.providers.local.service_processes import find_service_processes
from envkit.settings import Settings

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "services"


def envkit(*args: str, home: Path, cwd: Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("ENVKIT_", "GITHUB_", "CI_", "BUILD"))}
    environ["ENVKIT_HOME"] = str(home)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True,
                          text=True, env=environ, cwd=cwd, timeout=120)


BAD_SPECS = {
    "unknown key": ('[services.api]\ncommand = "x"\nprot = 80\n', "services.api.prot"),
    "missing command": ("[services.api]\nport = 8080\n", "services.api.command"),
    "dependency cycle": (
        '[services.a]\ncommand = "x"\ndepends_on = ["b"]\n'
        '[services.b]\ncommand = "x"\ndepends_on = ["a"]\n',
        "depends_on",
    ),
    "bad port": ('[services.api]\ncommand = "x"\nport = 99999\n', "services.api.port"),
    "unknown placeholder": (
        '[services.api]\ncommand = "x"\nenv = { A = "{NOPE}" }\n', "services.api.env.A"
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_spec_errors_exit_2_naming_file_and_field(case: str, envkit_home: Path,
                                                  tmp_path: Path) -> None:
    text, field = BAD_SPECS[case]
    project = tmp_path / "project"
    project.mkdir()
    (project / "envkit.toml").write_text(text)
    result = envkit("up", "spec-bad", home=envkit_home, cwd=project)
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())  # rich may wrap long lines
    assert str(project / "envkit.toml") in message
    assert field in message
    assert "Traceback" not in result.stderr
    status = envkit("status", "spec-bad", "--json", home=envkit_home, cwd=project)
    assert json.loads(status.stdout)["status"] == "absent"  # nothing created


def test_spec_error_in_pyproject(envkit_home: Path, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.envkit]\nttl = "1h"\n[tool.envkit.services.api]\nimage = "x:1"\n'
    )
    result = envkit("up", "spec-bad", home=envkit_home, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "pyproject.toml" in message and "services.api.command" in message


def test_unknown_dataset(envkit_home: Path, tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("envkit.seeding.datasets") is None:
        pytest.skip("no envkit.seeding.datasets: datasets are not validated by the spec")
    (tmp_path / "envkit.toml").write_text('[databases.main]\ndataset = "no-such-dataset"\n')
    result = envkit("up", "spec-bad", home=envkit_home, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "databases.main.dataset" in message and "no-such-dataset" in message


def test_up_logs_down_with_services(envkit_home: Path) -> None:
    result = envkit("up", "spec-cli", "--format", "json", home=envkit_home, cwd=EXAMPLE)
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    curl = subprocess.run(["curl", "-sf", "--noproxy", "*", outputs["SERVICE_API_URL"] + "/health"],
                          capture_output=True, text=True, check=False)
    assert curl.returncode == 0 and json.loads(curl.stdout) == {"status": "ok"}

    api = envkit("logs", "spec-cli", "api", home=envkit_home, cwd=EXAMPLE)
    assert api.returncode == 0 and "api: listening on" in api.stdout
    everything = envkit("logs", "spec-cli", "--lines", "5", home=envkit_home, cwd=EXAMPLE)
    assert "==> postgres" in everything.stdout and "==> worker" in everything.stdout
    assert envkit("logs", "spec-cli", "postgres", home=envkit_home, cwd=EXAMPLE).returncode == 0
    missing = envkit("logs", "spec-cli", "nope", home=envkit_home, cwd=EXAMPLE)
    assert missing.returncode == 2 and "api" in missing.stderr

    assert envkit("down", "spec-cli", home=envkit_home, cwd=EXAMPLE).returncode == 0
    layout = Layout.for_settings(Settings.resolve({"home": envkit_home}))
    assert find_service_processes(layout.home_key, "spec-cli", layout.env_dir("spec-cli")) == []


FLASK_API = EXAMPLE.parent / "flask-api"


def test_flask_api_serves_seeded_data(envkit_home: Path) -> None:
    pytest.importorskip("flask")
    if not (FLASK_API / "app.py").is_file():
        pytest.skip("examples/flask-api is not there")
    env = {"ENVKIT_SPEC": str(FLASK_API / "envkit.service.toml")}
    result = envkit("up", "flask-svc", "--format", "json", home=envkit_home, cwd=FLASK_API,
                    env=env)
    assert result.returncode == 0, result.stderr
    url = json.loads(result.stdout)["outputs"]["SERVICE_API_URL"]
    assert url.endswith(":8000")
    curl = subprocess.run(["curl", "-sf", "--noproxy", "*", url + "/users"],
                          capture_output=True, text=True, check=False)
    assert curl.returncode == 0, curl.stderr
    users = json.loads(curl.stdout)
    assert len(users) == 50  # the flask-users dataset, read through the API
    assert {"id", "name", "email", "created_at"} == set(users[0])
    assert envkit("down", "flask-svc", home=envkit_home, cwd=FLASK_API).returncode == 0
    layout = Layout.for_settings(Settings.resolve({"home": envkit_home}))
    assert find_service_processes(layout.home_key, "flask-svc", layout.env_dir("flask-svc")) == []
