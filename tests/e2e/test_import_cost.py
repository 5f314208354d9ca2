"""`import envkit` and loading the pytest plugin stay cheap: no Pulumi, boto3, Faker or psycopg."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

HEAVY = ("pulumi", "pulumi_aws", "boto3", "botocore", "faker", "psycopg")


def imported_modules(code: str) -> set[str]:
    """Every module ``code`` imports in a fresh interpreter, from ``-X importtime``."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True, text=True, check=True, timeout=60,
    )
    names = re.findall(r"^import time:\s*\d+ \|\s*\d+ \|\s*(\S+)", result.stderr, re.MULTILINE)
    assert names, result.stderr[-2000:]
    return set(names)


@pytest.mark.parametrize(
    "code",
    [
        "import envkit",
        "import envkit; envkit.environment; envkit.attach; envkit.Environment",
        "import pytest, envkit.plugin",
    ],
)
def test_nothing_heavy_is_imported(code: str) -> None:
    modules = imported_modules(code)
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"{code!r} imported {heavy}"


def test_the_plugin_imports_no_envkit_machinery_at_load() -> None:
    modules = imported_modules("import pytest, envkit.plugin")
    assert not {"envkit.lifecycle", "envkit.api", "envkit.state"} & modules
