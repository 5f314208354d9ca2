"""Fixtures of the example: built only on envkit's (envkit_db, envkit_outputs).

envkit's pytest plugin provides the database: a fresh environment for the session (or the one
named by ENVKIT_PIPELINE_ID, when CI brought it up earlier), and per test a connection inside a
transaction that is rolled back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from app import create_app, init_db
from flask import Flask
from flask.testing import FlaskClient


@pytest.fixture
def app(envkit_db: psycopg.Connection[Any]) -> Iterator[Flask]:
    """The app, serving requests on the test's connection (so its writes are rolled back)."""
    init_db(envkit_db)  # DDL is transactional in PostgreSQL: undone with the test's writes
    yield create_app({"TESTING": True, "DB_CONNECTION": envkit_db})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()
