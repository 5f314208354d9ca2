"""envkit doctor asks each provider what it needs; a provider whose extra is missing says how
to install it instead of failing with a ModuleNotFoundError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from envkit.cli import doctor


def test_a_provider_whose_extra_is_missing_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path))
    from envkit import providers  # doctor imports get_provider where it uses it

    original = providers.get_provider

    def without_aws(name: str, settings: Any) -> Any:
        if name == "aws":
            raise ModuleNotFoundError("No module named 'pulumi'", name="pulumi")
        return original(name, settings)

    monkeypatch.setattr(providers, "get_provider", without_aws)
    checks = doctor.run_checks()
    missing = [c for c in checks if c["provider"] == "aws"]
    assert missing == [{
        "name": "the aws provider", "provider": "aws", "ok": False, "required": False,
        "detail": "not installed (pulumi)", "fix": "pip install 'envkit[aws]'",
    }]
    assert any(c["provider"] == "local" and c["required"] for c in checks)
