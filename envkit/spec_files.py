"""Finding the environment spec file and reading it, without knowing settings or datasets.

:func:`spec_defaults` is what settings read from the spec (its ``[defaults]``), so this module
imports neither :mod:`envkit.settings` nor the datasets: the caller passes the names they allow.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

from envkit.errors import ConfigError
from envkit.spec_model import EnvSpec
from envkit.spec_parse import SECTIONS, parse_spec

log = logging.getLogger(__name__)

SPEC_FILE = "envkit.toml"


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML table of ``path``; ``ConfigError`` naming it when unreadable or invalid."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the environment spec {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", hint="Fix its syntax.") from None


def pyproject_spec(path: Path) -> dict[str, Any] | None:
    """``[tool.envkit]`` of a pyproject when it has spec tables, else ``None``."""
    table = read_toml(path).get("tool", {}).get("envkit")
    if isinstance(table, dict) and any(k in table for k in SECTIONS):
        return table
    return None


def find_spec_file(start: Path, explicit: Path | None = None) -> Path | None:
    """The spec file to use (``envkit.toml`` or a ``pyproject.toml``), or ``None``."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(
                f"The environment spec {explicit} (ENVKIT_SPEC) does not exist.",
                hint="Point ENVKIT_SPEC at an envkit.toml, or unset it.",
            )
        return explicit.resolve()
    for folder in (start, *start.parents):
        candidate = folder / SPEC_FILE
        pyproject = folder / "pyproject.toml"
        if candidate.is_file():
            if pyproject.is_file() and pyproject_spec(pyproject) is not None:
                log.warning(
                    "both %s and [tool.envkit] tables in %s declare the environment: using %s",
                    candidate,
                    pyproject,
                    candidate,
                )
            return candidate.resolve()
        if pyproject.is_file() and pyproject_spec(pyproject) is not None:
            return pyproject.resolve()
    return None


def read_spec_file(
    path: Path,
    *,
    known_datasets: Collection[str] | None = None,
    setting_keys: Collection[str] = (),
) -> EnvSpec:
    """Parse an ``envkit.toml``, or the ``[tool.envkit]`` of a ``pyproject.toml`` (where the
    ``setting_keys`` may stand beside the spec tables)."""
    if path.name == "pyproject.toml":
        table = pyproject_spec(path) or {}
        return parse_spec(
            table,
            path,
            prefix="tool.envkit.",
            known_datasets=known_datasets,
            extra_keys=(*setting_keys, "spec_file"),
        )
    return parse_spec(read_toml(path), path, known_datasets=known_datasets)


def spec_defaults(
    explicit: Path | None, cwd: Path, setting_keys: Collection[str] = ()
) -> dict[str, Any]:
    """The ``[defaults]`` of the spec as settings values, leniently: a broken spec yields ``{}``
    here (so ``down`` and ``status`` still work) and is reported by ``up``, which validates it."""
    try:
        path = find_spec_file(cwd, explicit)
        if path is None:
            return {}
        defaults = read_spec_file(path, setting_keys=setting_keys).defaults
    except ConfigError:
        return {}
    found: dict[str, Any] = {}
    if defaults.provider is not None:
        found["provider"] = defaults.provider
    if defaults.ttl is not None:
        found["ttl"] = defaults.ttl
    if defaults.seeds_dir is not None:
        found["seeds_dir"] = defaults.seeds_dir
    if defaults.postgres_version is not None:
        found["postgres_version"] = defaults.postgres_version
    if defaults.database_server is not None:
        found["database_server"] = defaults.database_server
    return found
