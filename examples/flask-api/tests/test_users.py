"""/users CRUD. Each test starts from an empty table: envkit rolls back the previous test."""

from __future__ import annotations

from typing import Any

import psycopg
from flask.testing import FlaskClient


def create(client: FlaskClient, name: str = "Ada", email: str = "ada@example.com") -> Any:
    response = client.post("/users", json={"name": name, "email": email})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_starts_empty(client: FlaskClient) -> None:
    assert client.get("/users").get_json() == []


def test_create_then_read(client: FlaskClient) -> None:
    user = create(client)
    assert user["name"] == "Ada"
    assert client.get(f"/users/{user['id']}").get_json() == user
    assert client.get("/users").get_json() == [user]


def test_the_same_email_again_is_a_conflict(client: FlaskClient) -> None:
    create(client)  # the same row test_create_then_read wrote: no conflict across tests
    response = client.post("/users", json={"name": "Other", "email": "ada@example.com"})
    assert response.status_code == 409


def test_invalid_input_is_rejected(client: FlaskClient) -> None:
    assert client.post("/users", json={"name": "No email"}).status_code == 400
    assert client.post("/users", json={"name": "X", "email": "not-an-email"}).status_code == 400
    assert client.post("/users", data="nonsense").status_code == 400


def test_update(client: FlaskClient) -> None:
    user = create(client)
    response = client.patch(f"/users/{user['id']}", json={"name": "Ada Lovelace"})
    assert response.status_code == 200
    assert response.get_json()["name"] == "Ada Lovelace"
    assert client.patch("/users/999999", json={"name": "Nobody"}).status_code == 404


def test_delete(client: FlaskClient) -> None:
    user = create(client)
    assert client.delete(f"/users/{user['id']}").status_code == 204
    assert client.get(f"/users/{user['id']}").status_code == 404
    assert client.delete(f"/users/{user['id']}").status_code == 404


def test_the_api_writes_what_sql_sees(client: FlaskClient, envkit_db: psycopg.Connection[Any]
                                      ) -> None:
    create(client, "Grace", "grace@example.com")
    assert envkit_db.execute("select name from api.users").fetchall() == [("Grace",)]
