"""Dataset definitions: discovery, validation, content hash."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from envkit.errors import ConfigError
from envkit.seeding import datasets
from envkit.settings import Settings


def settings_for(tmp_path: Path, seeds: Path | None = None) -> Settings:
    explicit: dict[str, object] = {"home": tmp_path / "home"}
    if seeds is not None:
        explicit["seeds_dir"] = seeds
    return Settings.resolve(explicit, env={}, cwd=tmp_path)


def copy_default(tmp_path: Path, name: str = "mine") -> Path:
    seeds = tmp_path / "seeds"
    shutil.copytree(Path(str(datasets.shipped_root())) / "default", seeds / name)
    return seeds


def test_shipped_default_is_valid(tmp_path: Path) -> None:
    ds = datasets.load(settings_for(tmp_path), "default")
    assert [t.name for t in ds.tables] == ["users", "orders", "payments"]
    assert sum(ds.rows().values()) == 10_000
    assert ds.rows(2.5)["users"] == 5000
    assert ds.masking["payments"]["card_number"] == "card"


def test_unknown_dataset_names_existing_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        datasets.load(settings_for(tmp_path, copy_default(tmp_path)), "nope")
    assert err.value.exit_code == 2
    assert "default" in err.value.message and "mine" in err.value.message


def test_project_seeds_dir_adds_datasets(tmp_path: Path) -> None:
    found = datasets.available(settings_for(tmp_path, copy_default(tmp_path)))
    assert {"default", "mine"} <= set(found)


def test_content_hash_changes_with_version_and_scale(tmp_path: Path) -> None:
    seeds = copy_default(tmp_path)
    s = settings_for(tmp_path, seeds)
    base = datasets.load(s, "mine")
    assert base.content_hash() == datasets.load(s, "mine").content_hash()
    assert base.content_hash(1.0) != base.content_hash(2.0)
    toml = seeds / "mine" / "dataset.toml"
    toml.write_text(toml.read_text().replace('version = "1"', 'version = "2"'))
    assert datasets.load(s, "mine").content_hash() != base.content_hash()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('gen = "key"', 'gen = "bogus"', "'gen' must be one of"),
        ('table = "users"', 'table = "ghosts"', "must be a table above it"),
        ('pool = "city"', 'pool = "moons"', "unknown pool"),
        ('card_number = "card"', 'card_number = "rot13"', "masking rule"),
        ('schema = "schema.sql"', 'schema = "gone.sql"', "does not exist"),
    ],
)
def test_invalid_definitions_are_config_errors(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    seeds = copy_default(tmp_path)
    toml = seeds / "mine" / "dataset.toml"
    text = toml.read_text()
    assert old in text
    toml.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message):
        datasets.load(settings_for(tmp_path, seeds), "mine")


def test_bad_scale() -> None:
    with pytest.raises(ConfigError):
        datasets.check_scale(0)
