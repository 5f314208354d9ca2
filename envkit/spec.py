"""The environment spec: which databases and services an environment holds.

Where it comes from (first match wins):

1. the file named by ``ENVKIT_SPEC`` (or the ``spec_file`` setting); it must exist;
2. walking up from the current directory, the first folder holding ``envkit.toml`` or a
   ``pyproject.toml`` whose ``[tool.envkit]`` has spec tables. In one folder ``envkit.toml`` wins
   over ``pyproject.toml``: the spec tables of the pyproject are then ignored (with a warning),
   its scalar ``[tool.envkit]`` keys stay settings.

Without a spec the environment is one database, as it always was. Shape (``envkit.toml``)::

    [defaults]
    provider = "local"      # below ENVKIT_* and [tool.envkit] settings, above built-in defaults
    ttl = "2h"

    [databases.main]        # the first database is the default one: DATABASE_URL
    dataset = "default"
    settings = { work_mem = "8MB" }   # per-database settings (ALTER DATABASE ... SET)

    [services.api]
    command = ["python3", "{PROJECT_DIR}/api.py"]   # or one string, split like a shell
    image = "ghcr.io/acme/api:1.2"                   # what the aws provider runs
    port = 8080                                      # or "auto"; omit for a worker
    env = { API_DATABASE = "{DATABASE_URL}" }
    health = { http = "/health" }    # or { tcp = true } or { command = [...] } or "none"
    depends_on = ["main"]

Parsing is pure: it returns frozen dataclasses (:mod:`envkit.spec_model`) or raises
``ConfigError`` naming the file and the field (:mod:`envkit.spec_parse`); nothing starts or touches
the network. Finding the file is :mod:`envkit.spec_files`. This module is the front: it loads the
spec for given settings, checking dataset names against :mod:`envkit.seeding.datasets`. What a
provider can run is checked by the provider (``Provider.check_spec``).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from envkit.errors import ConfigError
from envkit.seeding.datasets import available
from envkit.settings import Settings, setting_names
from envkit.spec_files import find_spec_file, read_spec_file
from envkit.spec_model import (
    DatabaseSpec,
    Defaults,
    EnvSpec,
    HealthCheck,
    ServiceSpec,
    output_key,
    placeholders,
    render,
    render_known,
    spec_error,
)
from envkit.spec_parse import parse_spec, parse_spec_text

__all__ = [
    "DatabaseSpec",
    "Defaults",
    "EnvSpec",
    "HealthCheck",
    "ServiceSpec",
    "find_spec_file",
    "known_datasets",
    "load_spec",
    "load_spec_file",
    "output_key",
    "parse_spec",
    "parse_spec_text",
    "placeholders",
    "render",
    "render_known",
    "spec_error",
]


def load_spec_file(path: Path, *, known_datasets: Collection[str] | None = None) -> EnvSpec:
    """Parse an ``envkit.toml``, or the ``[tool.envkit]`` of a ``pyproject.toml``."""
    return read_spec_file(path, known_datasets=known_datasets, setting_keys=setting_names())


def known_datasets(settings: Settings) -> Collection[str] | None:
    """Names of the datasets envkit knows, or ``None`` when it cannot tell."""
    try:
        return set(available(settings))
    except (ConfigError, OSError):  # a broken seeds folder is reported where it is used
        return None


def load_spec(settings: Settings, cwd: Path | None = None) -> EnvSpec | None:
    """The environment spec for these settings, or ``None`` when the project declares none."""
    path = find_spec_file(cwd or Path.cwd(), settings.spec_file)
    if path is None:
        return None
    return load_spec_file(path, known_datasets=known_datasets(settings))
