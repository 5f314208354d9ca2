"""The plan of one operation: settings, pipeline ID, spec and dataset, resolved once.

Every front end (the CLI, ``envkit run``, ``envkit.environment()``, the pytest plugin) says only
what its caller asked for — an ID or none, a dataset or none, "no seed" — and builds a plan;
the lifecycle takes the plan and decides nothing of that kind itself. So every way into envkit
picks the same pipeline ID and seeds the same data.

The Redis rule, in one place (:attr:`Plan.redis`): the spec's ``[redis]``, else the defaults
when ``--redis`` / ``ENVKIT_REDIS`` asks for one, else none.

The seeding rule, in one place (:attr:`Plan.dataset`): with ``seed=False`` nothing; else the
dataset the caller named (``--dataset``, ``dataset=``, ``ENVKIT_DATASET`` or ``[tool.envkit]
dataset``), else the spec's (``envkit.toml``), else the shipped ``default`` dataset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from envkit.naming import resolve_pipeline_id
from envkit.settings import Settings
from envkit.state import StateStore

if TYPE_CHECKING:
    from envkit.spec import EnvSpec
    from envkit.spec_model import RedisSpec

DEFAULT_DATASET = "default"
"""What an environment is seeded with when nobody names a dataset."""


@dataclass(frozen=True)
class Plan:
    """What one operation is about; immutable once built (see the module docstring)."""

    settings: Settings
    pipeline_id: str
    store: StateStore
    seed: bool = True

    @classmethod
    def build(
        cls,
        pipeline_id: str | None,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        *,
        seed: bool = True,
    ) -> Plan:
        """The plan for ``pipeline_id`` (validated), or the ID ``ENVKIT_PIPELINE_ID`` or the
        CI's variables give when it is ``None``."""
        resolved = resolve_pipeline_id(pipeline_id, os.environ if env is None else env)
        return cls(settings, resolved, StateStore(settings.home), seed)

    @cached_property
    def spec(self) -> EnvSpec | None:
        """The environment spec (envkit.toml / [tool.envkit]), loaded on first use: ``down``
        and ``status`` never read it, so a broken spec cannot block them."""
        from envkit.spec import load_spec

        return load_spec(self.settings)

    @property
    def dataset(self) -> str | None:
        """The dataset a newly created environment is seeded with (the module's rule)."""
        if not self.seed:
            return None
        if self.settings.dataset:
            return self.settings.dataset
        spec = self.spec
        if spec is not None and spec.dataset:
            return spec.dataset
        return DEFAULT_DATASET

    @property
    def redis(self) -> RedisSpec | None:
        """The Redis server a newly created environment gets (the module's rule)."""
        spec = self.spec
        if spec is not None and spec.redis is not None:
            return spec.redis
        if self.settings.redis:
            from envkit.spec_model import RedisSpec

            return RedisSpec()
        return None
