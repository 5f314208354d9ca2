"""The engine tier: tests that run the real Pulumi CLI, built from its Go modules.

``.ci/pulumi/build.sh`` builds the CLI (and writes the dynamic-provider shim beside it) into a
cache outside the checkout; these fixtures reuse it, or build it on first use. The tier is
skipped only where Go is absent, so the CLI cannot be had; every test gets its own ``file://``
backend, ``PULUMI_HOME`` and passphrase.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".ci" / "pulumi" / "build.sh"
HERE = Path(__file__).resolve().parent
PASSPHRASE = "engine-tier-passphrase"


@functools.cache
def pulumi_bin() -> tuple[Path | None, str]:
    """(bin dir, CLI version) — or (None, why the tier is skipped)."""
    if shutil.which("go") is None:
        return None, (
            "engine tier skipped: 'go' is not on PATH, and the Pulumi CLI is built from its Go "
            "modules (.ci/pulumi/build.sh)"
        )
    # The first build takes minutes; a cached one answers at once. Its log goes to stderr.
    done = subprocess.run(
        ["bash", str(BUILD)], check=True, stdout=subprocess.PIPE, text=True, timeout=3600
    )
    bin_dir = Path(done.stdout.strip().splitlines()[-1])
    version = subprocess.run(
        [str(bin_dir / "pulumi"), "version"], check=True, capture_output=True, text=True,
        env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "1"}, timeout=120,
    ).stdout.strip()
    return bin_dir, version


def pytest_report_header(config: pytest.Config) -> str:
    """The CLI the tier runs (shown when tests/engine is named on the command line)."""
    bin_dir, version = pulumi_bin()
    return f"pulumi CLI: {version} ({bin_dir})" if bin_dir else version


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test here is an ``engine`` test; all are skipped, with the reason, without Go."""
    mine = [item for item in items if Path(str(item.path)).is_relative_to(HERE)]
    if not mine:
        return
    bin_dir, why = pulumi_bin()
    for item in mine:
        item.add_marker(pytest.mark.engine)
        if bin_dir is None:
            item.add_marker(pytest.mark.skip(reason=why))
    if bin_dir is None:
        print(f"\n{why}", file=sys.stderr)


@pytest.fixture
def engine_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CLI on PATH, a private PULUMI_HOME and passphrase; yields the ``file://`` backend."""
    bin_dir, why = pulumi_bin()
    if bin_dir is None:
        pytest.skip(why)
    backend = tmp_path / "backend"
    backend.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))
    monkeypatch.setenv("PULUMI_BACKEND_URL", f"file://{backend}")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("PULUMI_SKIP_UPDATE_CHECK", "1")
    monkeypatch.setenv("PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION", "true")
    # The dynamic-provider shim serves the providers with this interpreter, and unpickles them
    # by reference: their module (engine_programs) must import there too.
    monkeypatch.setenv("PULUMI_PYTHON_CMD", sys.executable)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    )
    yield f"file://{backend}"


MOTO_REGION = "us-east-1"
_AWS_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)  # fmt: skip


@pytest.fixture
def moto_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server of this test alone on a free loopback port, with boto3 (here, in the
    Pulumi provider processes and in envkit's sweep) pointed at it; stopped however the test
    ends. Yields its URL."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key in _AWS_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", MOTO_REGION)
    monkeypatch.setenv("AWS_REGION", MOTO_REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
