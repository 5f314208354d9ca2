"""A small REST API on Flask and psycopg: /health and /users CRUD.

Configuration comes from the environment, as a twelve-factor service (and an envkit service)
expects: DATABASE_URL (a libpq URL), HOST and PORT for ``python app.py``. Run it with::

    DATABASE_URL=postgresql://... python app.py
    DATABASE_URL=postgresql://... flask --app app run --host "$HOST" --port "$PORT"

Tests hand the app an existing connection instead (``create_app({"DB_CONNECTION": conn})``): a
request then works inside the test's transaction, which the test rolls back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask, Response, current_app, g, jsonify, request
from psycopg.rows import dict_row

SCHEMA = Path(__file__).with_name("schema.sql")
USER_COLUMNS = "id, name, email, created_at"


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The application: settings from the environment, overridden by ``config``."""
    app = Flask(__name__)
    app.config["DATABASE_URL"] = os.environ.get("DATABASE_URL")
    app.config["DB_CONNECTION"] = None
    app.config.update(config or {})
    app.teardown_appcontext(_close_db)
    _routes(app)

    @app.cli.command("init-db")
    def init_db_command() -> None:
        """Create the tables (idempotent)."""
        init_db(connect(app.config["DATABASE_URL"]))

    return app


def connect(url: str | None) -> psycopg.Connection[Any]:
    """An autocommit connection; requests group their statements with ``transaction()``."""
    if not url:
        raise RuntimeError("DATABASE_URL is not set: point it at a PostgreSQL database.")
    return psycopg.connect(url, autocommit=True)


def init_db(conn: psycopg.Connection[Any]) -> None:
    """Apply schema.sql (idempotent)."""
    conn.execute(SCHEMA.read_text())


def get_db() -> psycopg.Connection[Any]:
    """The request's connection: the injected one (tests), else a new one from DATABASE_URL."""
    if "db" not in g:
        injected = current_app.config["DB_CONNECTION"]
        g.db_owned = injected is None
        g.db = connect(current_app.config["DATABASE_URL"]) if injected is None else injected
    return g.db  # type: ignore[no-any-return]


def _close_db(exc: BaseException | None) -> None:
    db = g.pop("db", None)
    if db is not None and g.pop("db_owned", False):
        db.close()


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def _user_input(partial: bool) -> dict[str, str] | tuple[Response, int]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error(400, "send a JSON object")
    fields = {k: body[k] for k in ("name", "email") if k in body}
    missing = [] if partial else [k for k in ("name", "email") if k not in fields]
    if missing:
        return _error(400, f"missing: {', '.join(missing)}")
    if not all(isinstance(v, str) and v.strip() for v in fields.values()):
        return _error(400, "name and email must be non-empty strings")
    return fields


def _routes(app: Flask) -> None:
    @app.get("/health")
    def health() -> Any:
        try:
            get_db().execute("SELECT 1")
        except psycopg.Error:
            return _error(503, "database unreachable")
        return {"status": "ok"}

    @app.get("/users")
    def list_users() -> Any:
        with get_db().cursor(row_factory=dict_row) as cur:
            rows = cur.execute(f"SELECT {USER_COLUMNS} FROM api.users ORDER BY id").fetchall()
        return jsonify([_public(row) for row in rows])

    @app.post("/users")
    def create_user() -> Any:
        fields = _user_input(partial=False)
        if isinstance(fields, tuple):
            return fields
        db = get_db()
        try:
            with db.transaction(), db.cursor(row_factory=dict_row) as cur:
                row = cur.execute(
                    f"INSERT INTO api.users (name, email) VALUES (%s, %s) RETURNING {USER_COLUMNS}",
                    [fields["name"], fields["email"]],
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            return _error(409, "a user with this email exists")
        except psycopg.errors.CheckViolation:
            return _error(400, "invalid name or email")
        assert row is not None  # INSERT ... RETURNING always returns the row
        return jsonify(_public(row)), 201, {"Location": f"/users/{row['id']}"}

    @app.get("/users/<int:user_id>")
    def get_user(user_id: int) -> Any:
        with get_db().cursor(row_factory=dict_row) as cur:
            row = cur.execute(
                f"SELECT {USER_COLUMNS} FROM api.users WHERE id = %s", [user_id]
            ).fetchone()
        return _public(row) if row else _error(404, "no such user")

    @app.patch("/users/<int:user_id>")
    def update_user(user_id: int) -> Any:
        fields = _user_input(partial=True)
        if isinstance(fields, tuple):
            return fields
        if not fields:
            return _error(400, "nothing to update")
        assignments = ", ".join(f"{column} = %s" for column in fields)  # columns from a fixed set
        db = get_db()
        try:
            with db.transaction(), db.cursor(row_factory=dict_row) as cur:
                row = cur.execute(
                    f"UPDATE api.users SET {assignments} WHERE id = %s RETURNING {USER_COLUMNS}",
                    [*fields.values(), user_id],
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            return _error(409, "a user with this email exists")
        except psycopg.errors.CheckViolation:
            return _error(400, "invalid name or email")
        return _public(row) if row else _error(404, "no such user")

    @app.delete("/users/<int:user_id>")
    def delete_user(user_id: int) -> Any:
        db = get_db()
        with db.transaction():
            deleted = db.execute("DELETE FROM api.users WHERE id = %s", [user_id]).rowcount
        return ("", 204) if deleted else _error(404, "no such user")


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "created_at": row["created_at"].isoformat()}


def main() -> None:
    """``python app.py``: apply the schema, then serve on HOST:PORT."""
    app = create_app()
    with connect(app.config["DATABASE_URL"]) as conn:
        init_db(conn)
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
