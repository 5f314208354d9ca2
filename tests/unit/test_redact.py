from __future__ import annotations

from envkit.outputs import complete, render_env, render_github_masks, render_json
from envkit.redact import MASK, Secret, redact_outputs, redact_url, scrub, secret_values

OUTPUTS = {
    "DATABASE_URL": "postgresql://u:pw%2Fx@127.1.2.3:5432/db",
    "DATABASE_PASSWORD": "pw/x",
    "DATABASE_HOST": "127.1.2.3",
}


def test_secret_repr_hides_value() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert secret.reveal() == "hunter2"


def test_redaction() -> None:
    safe = redact_outputs(OUTPUTS)
    assert safe["DATABASE_PASSWORD"] == MASK
    assert "pw" not in safe["DATABASE_URL"] and safe["DATABASE_URL"].startswith("postgresql://u:")
    assert safe["DATABASE_HOST"] == "127.1.2.3"
    assert redact_url("http://h:1/x") == "http://h:1/x"
    assert set(secret_values(OUTPUTS)) == {"pw/x", "pw%2Fx"}
    assert scrub("failed for pw/x", ["pw/x"]) == f"failed for {MASK}"


def test_renderings() -> None:
    full = complete(OUTPUTS, pipeline_id="p1", provider="local")
    assert list(full)[:2] == ["DATABASE_URL", "DATABASE_HOST"]
    assert full["ENVKIT_PIPELINE_ID"] == "p1"
    env = render_env(full, show_secrets=False)
    assert "pw" not in env and "ENVKIT_PROVIDER=local" in env
    assert "DATABASE_PASSWORD=pw/x" in render_env(full, show_secrets=True)
    assert "pw" not in render_json(full, show_secrets=False)
    masks = render_github_masks(full)
    assert "::add-mask::pw/x" in masks
