"""/health, against the environment through its outputs only, as the deployed app runs."""

from __future__ import annotations

from app import create_app


def test_health_with_database_url_from_the_outputs(envkit_outputs: dict[str, str]) -> None:
    app = create_app({"TESTING": True, "DATABASE_URL": envkit_outputs["DATABASE_URL"]})
    response = app.test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_health_reports_an_unreachable_database(envkit_outputs: dict[str, str]) -> None:
    url = envkit_outputs["DATABASE_URL"].replace(
        f":{envkit_outputs['DATABASE_PORT']}/", ":1/"
    )
    app = create_app({"TESTING": True, "DATABASE_URL": url})
    assert app.test_client().get("/health").status_code == 503
