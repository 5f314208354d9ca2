"""The environment spec: parsing, validation errors naming file and field, templating, lookup."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from envkit.errors import ConfigError
from envkit.providers import get_provider
from envkit.providers.aws.services import aws_services
from envkit.providers.local.databases import database_statements
from envkit.settings import Settings
from envkit.spec import (
    HealthCheck,
    find_spec_file,
    load_spec_file,
    parse_spec_text,
    placeholders,
    render,
)
from envkit.spec_files import spec_defaults

SOURCE = Path("/project/envkit.toml")

VALID = """
[defaults]
provider = "local"
ttl = "2h"

[databases.main]
dataset = "default"
settings = { work_mem = "8MB", jit = false }

[databases.reports]

[services.worker]
command = "python3 worker.py --queue jobs"
env = { API_URL = "{SERVICE_API_URL}" }
health = { command = ["python3", "worker.py", "--check"] }
depends_on = ["api"]

[services.api]
command = ["python3", "{PROJECT_DIR}/api.py"]
image = "ghcr.io/acme/api:1"
port = 8080
env = { DB = "{DATABASE_URL}", SELF = "http://{HOST}:{PORT}", REPORTS = "{DATABASE_REPORTS_URL}" }
health = { http = "/health" }
depends_on = ["main"]
stop_grace = 2

[services.cache]
command = "redis-server"
port = "auto"
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_spec_text(text, SOURCE)


def error_of(text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_spec_text(text, SOURCE, **kwargs)  # type: ignore[arg-type]
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_valid_spec() -> None:
    spec = parse(VALID)
    assert spec.source == SOURCE
    assert spec.defaults.provider == "local"
    assert spec.defaults.ttl == timedelta(hours=2)
    assert [d.name for d in spec.databases] == ["main", "reports"]
    assert spec.dataset == "default"
    assert spec.databases[0].settings == {"work_mem": "8MB", "jit": "off"}
    # dependency order: api before worker; declaration order otherwise
    assert [s.name for s in spec.services] == ["api", "worker", "cache"]
    api = spec.service("api")
    assert api.command == ("python3", "{PROJECT_DIR}/api.py")
    assert api.image == "ghcr.io/acme/api:1"
    assert api.port == 8080
    assert api.health == HealthCheck("http", path="/health")
    assert api.stop_grace == 2.0
    assert api.url_output == "SERVICE_API_URL"
    worker = spec.service("worker")
    assert worker.command == ("python3", "worker.py", "--queue", "jobs")
    assert worker.port is None
    assert worker.health.kind == "command"
    cache = spec.service("cache")
    assert cache.port == 0  # auto
    assert cache.health.kind == "tcp"  # default for a service with a port
    assert spec.project_dir == Path("/project")


def test_empty_spec_is_one_database() -> None:
    spec = parse("")
    assert [d.name for d in spec.databases] == ["main"]
    assert spec.services == ()


def test_unknown_key_names_file_and_field() -> None:
    message = error_of('[services.api]\ncommand = "x"\ncomand = "y"\n')
    assert str(SOURCE) in message
    assert "services.api.comand" in message
    message = error_of('[servics.api]\ncommand = "x"\n')
    assert "servics" in message and str(SOURCE) in message


def test_missing_command() -> None:
    message = error_of("[services.api]\nport = 8080\n")
    assert str(SOURCE) in message and "services.api.command" in message and "missing" in message


def test_dependency_cycle() -> None:
    message = error_of(
        '[services.a]\ncommand = "x"\ndepends_on = ["b"]\n'
        '[services.b]\ncommand = "x"\ndepends_on = ["c"]\n'
        '[services.c]\ncommand = "x"\ndepends_on = ["a"]\n'
    )
    assert str(SOURCE) in message and "depends_on" in message
    assert "cycle" in message and "a -> b -> c -> a" in message


def test_unknown_dependency() -> None:
    message = error_of('[services.a]\ncommand = "x"\ndepends_on = ["nope"]\n')
    assert "services.a.depends_on" in message and "nope" in message


@pytest.mark.parametrize("port", ["0", "70000", '"8080"', "true", "-1", "1.5"])
def test_bad_port(port: str) -> None:
    message = error_of(f'[services.api]\ncommand = "x"\nport = {port}\n')
    assert str(SOURCE) in message and "services.api.port" in message


def test_unknown_dataset_only_when_datasets_are_known() -> None:
    text = '[databases.main]\ndataset = "nope"\n'
    message = error_of(text, known_datasets={"default"})
    assert "databases.main.dataset" in message and "nope" in message and "default" in message
    assert parse(text).dataset == "nope"  # no dataset module: not checked here


def test_unknown_placeholder() -> None:
    message = error_of('[services.api]\ncommand = "x"\nenv = { A = "{DATABSE_URL}" }\n')
    assert "services.api.env.A" in message and "DATABSE_URL" in message


def test_other_errors_name_the_field() -> None:
    assert "defaults.ttl" in error_of('[defaults]\nttl = "soon"\n')
    assert "defaults.provider" in error_of('[defaults]\nprovider = "gcp"\n')
    assert "services.api.health.http" in error_of(
        '[services.api]\ncommand = "x"\nhealth = { http = "/h" }\n'
    )
    assert "services.postgres" in error_of('[services.postgres]\ncommand = "x"\n')
    assert "services.api.run_as" in error_of('[services.api]\ncommand = "x"\nrun_as = "root"\n')
    assert "not valid TOML" in error_of("[services.api\n")


def test_templating() -> None:
    values = {"DATABASE_URL": "postgresql://u:p@h:5432/d", "HOST": "127.1.2.3", "PORT": "80"}
    assert render("{DATABASE_URL}", values) == "postgresql://u:p@h:5432/d"
    assert render("http://{HOST}:{PORT}/x", values) == "http://127.1.2.3:80/x"
    assert render('{{"literal": {PORT}}}', values) == '{"literal": 80}'
    assert render('{"json": 1}', values) == '{"json": 1}'  # lower case braces stay as they are
    assert placeholders("{A}-{B_2}-{{C}}-{d}") == ["A", "B_2"]
    with pytest.raises(KeyError):
        render("{MISSING}", values)


def test_provider_checks(tmp_path: Path) -> None:
    settings = Settings.resolve({"home": tmp_path}, env={}, cwd=tmp_path)
    local, aws = get_provider("local", settings), get_provider("aws", settings)
    spec = parse('[services.api]\nimage = "x:1"\n')
    with pytest.raises(ConfigError, match=r"services\.api\.command"):
        local.check_spec(spec)
    aws.check_spec(spec)
    with pytest.raises(ConfigError, match=r"services\.api\.image"):
        aws.check_spec(parse('[services.api]\ncommand = "x"\n'))


def test_database_statements() -> None:
    spec = parse(VALID)
    statements = database_statements(spec, owner="envkit_p", default_database="envkit_p")
    assert statements == [
        "ALTER DATABASE \"envkit_p\" SET work_mem = '8MB'",
        "ALTER DATABASE \"envkit_p\" SET jit = 'off'",
        'CREATE DATABASE "reports" OWNER "envkit_p"',
    ]


def test_lookup_and_precedence(tmp_path: Path) -> None:
    project = tmp_path / "project"
    nested = project / "src" / "pkg"
    nested.mkdir(parents=True)
    assert find_spec_file(nested) is None
    (project / "pyproject.toml").write_text(
        '[tool.envkit]\nttl = "1h"\n[tool.envkit.services.api]\ncommand = "x"\n'
    )
    assert find_spec_file(nested) == (project / "pyproject.toml").resolve()
    spec = load_spec_file(project / "pyproject.toml")
    assert [s.name for s in spec.services] == ["api"]
    (project / "envkit.toml").write_text('[defaults]\nttl = "3h"\n')
    assert find_spec_file(nested) == (project / "envkit.toml").resolve()  # envkit.toml wins
    assert spec_defaults(None, nested) == {"ttl": timedelta(hours=3)}
    other = tmp_path / "other.toml"
    other.write_text("")
    assert find_spec_file(nested, other) == other.resolve()
    with pytest.raises(ConfigError, match="does not exist"):
        find_spec_file(nested, tmp_path / "missing.toml")


def test_pyproject_errors_name_tool_envkit(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.envkit]\nttl = "1h"\nsurprise = 1\n[tool.envkit.services.api]\n'
                    'command = "x"\n')
    with pytest.raises(ConfigError) as caught:
        load_spec_file(path)
    assert str(path) in str(caught.value) and "tool.envkit.surprise" in str(caught.value)


def test_aws_services_map_onto_service_args() -> None:
    spec = parse(
        '[services.api]\nimage = "ghcr.io/acme/api:1"\nport = 3000\n'
        'env = { DB = "{DATABASE_URL}", SELF = "http://{HOST}:{PORT}" }\n'
        '[services.worker]\nimage = "ghcr.io/acme/worker:1"\ndepends_on = ["api"]\n'
    )
    args = aws_services(spec)
    assert args[0] == {
        "name": "api",
        "image": "ghcr.io/acme/api:1",
        "port": 3000,
        "env": {"DB": "{DATABASE_URL}", "SELF": "http://0.0.0.0:3000", "HOST": "0.0.0.0",
                "PORT": "3000"},
    }
    assert args[1]["port"] == 8080
    try:
        from stacks.config import ServiceArgs
    except ImportError:
        return
    assert ServiceArgs(**args[0]).output_key == "SERVICE_API_URL"
    with pytest.raises(ConfigError, match=r"services\.my_api"):
        aws_services(parse('[services.my_api]\nimage = "x:1"\n'))


def test_defaults_seeds_dir_is_relative_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "envkit.toml").write_text('[defaults]\nseeds_dir = "seeds"\n')
    assert spec_defaults(None, tmp_path) == {"seeds_dir": tmp_path / "seeds"}


def test_defaults_postgres_version_reaches_the_settings(tmp_path: Path) -> None:
    from envkit.settings import Settings

    (tmp_path / "envkit.toml").write_text('[defaults]\npostgres_version = 18\n')
    settings = Settings.resolve({"home": tmp_path / "home"}, env={}, cwd=tmp_path)
    assert settings.postgres_version == "18"
    overridden = Settings.resolve(
        {"home": tmp_path / "home"}, env={"ENVKIT_POSTGRES_VERSION": "15"}, cwd=tmp_path)
    assert overridden.postgres_version == "15"
    (tmp_path / "envkit.toml").write_text('[defaults]\npostgres_version = "latest"\n')
    from envkit.spec import load_spec_file

    with pytest.raises(ConfigError, match="postgres_version"):
        load_spec_file(tmp_path / "envkit.toml")
