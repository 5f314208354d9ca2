"""Seeding environments: from a seeded template (the fast path of ``up``), by loading a dataset
into an existing environment (``envkit seed ID``), or by a masked subset of a real database
(``envkit seed ID --from DSN --rules FILE``).

The seeded template is a data directory built once per machine from the base template with the
dataset loaded into the placeholder app database, keyed by the dataset's content hash (definition,
version, scale, generator code, Faker version). A seeded ``up`` copies it instead of the empty
base, so it costs about what an empty ``up`` costs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.errors import ConfigError, SeedError
from envkit.seeding import datasets
from envkit.settings import Settings
from envkit.state import Record, Status

if TYPE_CHECKING:
    from envkit.plan import Plan

log = logging.getLogger(__name__)

TEMPLATE_RESOURCE = "seed_template"  # record.resources key: which seeded template was copied


def scale_of(settings: Settings) -> float:
    """The row-count multiplier from settings (``--scale`` / ENVKIT_SEED_SCALE)."""
    return datasets.check_scale(float(settings.seed_scale))  # 0 is refused, not read as 1


def template_name(dataset: datasets.Dataset, scale: float) -> str:
    """The name of a dataset's seeded template: changes whenever its data would change.

    Short on purpose: the template build's scratch server puts its unix socket under a
    directory named after it, and socket paths are limited to 107 bytes.
    """
    return f"ds{dataset.content_hash(scale)[:12]}"


def seed_environment(
    settings: Settings, record: Record, dataset: str, *, reuse_template: bool = True
) -> dict[str, float]:
    """Give the environment of ``record`` the data of ``dataset``; seed statistics.

    When the environment was copied from that dataset's seeded template (and ``reuse_template``),
    the data is already there and this only reports it; otherwise the dataset's tables are
    (re)created and loaded over the environment's own connection. With Redis (``REDIS_URL``),
    the dataset's ``[[redis]]`` keys are written from those rows.
    """
    definition = datasets.load(settings, dataset)
    stats = _seed_database(settings, record, definition, reuse_template)
    redis_url, database_url = record.outputs.get("REDIS_URL"), record.outputs.get("DATABASE_URL")
    if definition.cache_keys and redis_url and database_url:
        from envkit.seeding.cache_keys import warm

        stats.update(warm(redis_url, database_url, definition.cache_keys))
    return stats


def _seed_database(
    settings: Settings, record: Record, definition: datasets.Dataset, reuse_template: bool
) -> dict[str, float]:
    started = time.perf_counter()
    scale = scale_of(settings)
    used = record.resources.get(TEMPLATE_RESOURCE) or {}
    if reuse_template and used.get("name") == template_name(definition, scale):
        stats = _template_stats(Path(used["stats"]), definition, scale)
        stats["from_template"] = 1.0
        stats["seconds"] = time.perf_counter() - started
        return stats
    url = record.outputs.get("DATABASE_URL")
    if not url:
        raise SeedError(
            f"Environment {record.pipeline_id!r} has no database to seed.",
            hint=f"Recreate it with 'envkit up {record.pipeline_id}'.",
        )
    from envkit.seeding.loading import load_dataset

    stats = load_dataset(url, definition, scale, replace=True)
    stats["from_template"] = 0.0
    return stats


def _template_stats(sidecar: Path, dataset: datasets.Dataset, scale: float) -> dict[str, float]:
    """The statistics recorded when the template was built (row counts alone if lost)."""
    try:
        recorded = json.loads(sidecar.read_text())["stats"]
        stats = {f"template_{k}": float(v) for k, v in recorded.items() if not _is_count(k)}
        stats.update({k: float(v) for k, v in recorded.items() if _is_count(k)})
        stats["rows"] = float(recorded["rows"])
        return stats
    except (OSError, ValueError, KeyError, TypeError):
        rows = dataset.rows(scale)
        stats = {f"rows_{k}": float(v) for k, v in rows.items()}
        stats["rows"] = float(sum(rows.values()))
        return stats


def _is_count(stat: str) -> bool:
    return stat.startswith("rows_") and stat != "rows_per_s"


def seed_pipeline(
    ctx: Plan,
    *,
    dataset: str | None = None,
    source: str | None = None,
    rules: Path | None = None,
) -> dict[str, Any]:
    """``envkit seed``: load a dataset, or a masked subset of ``source`` by ``rules``, into the
    existing environment of ``ctx``; a summary with the statistics (also in the event log)."""
    if (source is None) != (rules is None):
        raise ConfigError(
            "--from and --rules go together.",
            hint="Pass both to copy a masked subset of a real database.",
        )
    if source is None and dataset is not None:
        datasets.load(ctx.settings, dataset)  # exit 2 on an unknown name before taking the lock
    store, pipeline_id = ctx.store, ctx.pipeline_id
    with store.locked(pipeline_id, ctx.settings.lock_timeout):
        record = store.load(pipeline_id)
        if record is None or record.status not in (Status.READY, Status.PRESERVED):
            state = "absent" if record is None else str(record.status)
            raise ConfigError(
                f"Pipeline {pipeline_id!r} has no ready environment to seed (it is {state}).",
                hint=f"Create it first with 'envkit up {pipeline_id} --no-seed'.",
            )
        if source is not None and rules is not None:
            from envkit.seeding.masking import masking_key
            from envkit.seeding.subsetting import copy_subset

            url = record.outputs.get("DATABASE_URL", "")
            stats = copy_subset(source, rules, url, key=masking_key(ctx.settings.home))
            label = f"subset:{rules.name}"
        else:
            label = dataset or record.dataset or ctx.settings.dataset or datasets.DEFAULT_DATASET
            stats = seed_environment(ctx.settings, record, label, reuse_template=False)
        record.dataset = label
        store.save(record)
        store.event(pipeline_id, "seeded", dataset=label, **stats)
    return {"pipeline_id": pipeline_id, "dataset": label, "stats": stats}
