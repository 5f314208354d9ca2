"""Seeded templates: a data directory per (base template, dataset content), built once per
machine with the dataset loaded, so a seeded ``up`` costs what an empty one does."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from envkit.providers.local.resources import LocalResources, SeedTemplate
from envkit.seeding import datasets
from envkit.seeding.pipeline import scale_of, template_name
from envkit.settings import Settings

if TYPE_CHECKING:
    from envkit.providers.base import ProvisionRequest
    from envkit.providers.local.pgserver import PgServer
    from envkit.providers.local.templates import TemplateCache


def seeded_template(
    settings: Settings,
    templates: TemplateCache,
    request: ProvisionRequest,
    resources: LocalResources,
) -> Path:
    """The seeded template of ``request.dataset`` (built on first use), recorded in
    ``resources`` and saved with the record."""
    assert request.dataset is not None
    dataset = datasets.load(settings, request.dataset)
    scale = scale_of(settings)
    name = template_name(dataset, scale)
    sidecar = templates.root / f"{templates.base_key()}-{name}.seed.json"

    def prepare(server: PgServer) -> None:
        from envkit.providers.local.pgserver import APP_PLACEHOLDER
        from envkit.seeding.loading import load_dataset

        conninfo = dict(server.admin_conninfo(APP_PLACEHOLDER), user=APP_PLACEHOLDER)
        stats = load_dataset(conninfo, dataset, scale)
        stats["scale"] = scale
        tmp = sidecar.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"dataset": dataset.name, "version": dataset.version, "stats": stats})
        )
        os.replace(tmp, sidecar)

    started = time.perf_counter()
    path = templates.derived(name, prepare)
    request.timings["dataset_template"] = time.perf_counter() - started
    resources.seed_template = SeedTemplate(dataset.name, name, sidecar)
    resources.save(request.record)
    request.save()
    return path
