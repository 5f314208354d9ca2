"""envkit's own tests using envkit's pytest plugin, the way a user's suite would.

The plugin is active here because envkit is installed (its ``pytest11`` entry point). The
session's environment is created on first use (or attached when ENVKIT_PIPELINE_ID names one
that is up) and destroyed when the session ends — preserved if a test failed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

import envkit
from envkit.state import Status

pytestmark = pytest.mark.integration


def test_the_session_environment_is_ready(envkit_env: envkit.Environment) -> None:
    assert envkit_env.status in (Status.READY, Status.PRESERVED)
    assert envkit_env.wait(timeout=30).ok


def test_outputs_are_a_standard_libpq_url_and_parts(envkit_outputs: dict[str, str]) -> None:
    url = urlsplit(envkit_outputs["DATABASE_URL"])
    assert url.scheme == "postgresql"
    assert url.hostname == envkit_outputs["DATABASE_HOST"]
    assert str(url.port) == envkit_outputs["DATABASE_PORT"]
    assert url.path == "/" + envkit_outputs["DATABASE_NAME"]
    # A plain libpq client needs nothing from envkit to use them.
    with psycopg.connect(
        host=envkit_outputs["DATABASE_HOST"], port=envkit_outputs["DATABASE_PORT"],
        dbname=envkit_outputs["DATABASE_NAME"], user=envkit_outputs["DATABASE_USER"],
        password=envkit_outputs["DATABASE_PASSWORD"],
    ) as conn:
        assert conn.execute("select current_database()").fetchone() == (
            envkit_outputs["DATABASE_NAME"],)


@pytest.mark.parametrize("name", ["first", "second"])
def test_writes_never_leak_between_tests(envkit_db: psycopg.Connection[Any], name: str) -> None:
    envkit_db.execute("create table if not exists dogfood (id int primary key, name text)")
    assert envkit_db.execute("select count(*) from dogfood").fetchone() == (0,)
    envkit_db.execute("insert into dogfood values (1, %s)", [name])
    with envkit_db.transaction():  # nests as a savepoint inside the test's transaction
        envkit_db.execute("update dogfood set name = name || '!'")
    assert envkit_db.execute("select name from dogfood").fetchone() == (name + "!",)
