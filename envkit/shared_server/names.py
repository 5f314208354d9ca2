"""Names of what envkit creates on a shared server, the advisory-lock keys guarding them, and
SQL quoting. Pipeline databases and roles are ``envkit_<id>`` (envkit.naming's rule, with its
hash suffix), extra databases ``envkit_<id>.<name>``, templates ``envkit-<dataset key>`` and
spares ``envkit-sp-<pool>-<8 hex>`` (the pool: a dataset key, or ``empty``): a ``.`` or ``-``
never occurs in a pipeline's name, so no two kinds can collide."""

from __future__ import annotations

import hashlib
import re

from envkit.naming import shorten, sql_identifier

IDENTIFIER_LIMIT = 63
_PIPELINE = r"envkit_[a-z0-9_]+"
_POOL = r"ds[0-9a-f]{12}|empty"
NAME_RE = re.compile(
    rf"{_PIPELINE}(\.[a-z_][a-z0-9_]*)?|envkit-ds[0-9a-f]{{12}}|envkit-sp-({_POOL})-[0-9a-f]{{8}}"
)
TEMPLATE_RE = re.compile(r"envkit-ds[0-9a-f]{12}")
SPARE_RE = re.compile(rf"envkit-sp-(?P<pool>{_POOL})-[0-9a-f]{{8}}")
EMPTY_POOL = "empty"


def database_name(pipeline_id: str) -> str:
    """The pipeline's own database (also the name of its role)."""
    return sql_identifier(pipeline_id)


def role_name(pipeline_id: str) -> str:
    """The pipeline's login role."""
    return sql_identifier(pipeline_id)


def extra_database_name(pipeline_id: str, name: str) -> str:
    """One of the spec's extra databases of a pipeline, prefixed with the pipeline's name."""
    return shorten(
        f"{database_name(pipeline_id)}.{name}",
        IDENTIFIER_LIMIT,
        digest_of=f"{pipeline_id}.{name}",
        sep="_",
    )


def template_name(dataset_key: str) -> str:
    """The template database (and the role owning its objects) of a dataset's content key
    (``ds<12 hex>``: envkit.seeding.pipeline.template_name)."""
    return f"envkit-{dataset_key}"


def pool_name(template: str | None) -> str:
    """The spare pool of a template (its dataset key), or of the empty database (``None``)."""
    return template.removeprefix("envkit-") if template else EMPTY_POOL


def spare_name(pool: str, token: str) -> str:
    """A spare database (also the name of its role) of ``pool``; ``token``: 8 hex digits."""
    name = f"envkit-sp-{pool}-{token}"
    if SPARE_RE.fullmatch(name) is None:
        raise ValueError(f"not a spare name: {name!r}")
    return name


def is_envkit_name(name: str) -> bool:
    """Whether ``name`` has the shape of a name envkit gives (a mark must confirm it)."""
    return NAME_RE.fullmatch(name) is not None


def lock_key(kind: str, name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``: one per pipeline or template."""
    digest = hashlib.sha256(f"envkit:{kind}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    if "\0" in name:
        raise ValueError("an identifier cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A quoted SQL string literal, correct whatever ``standard_conforming_strings`` is."""
    if "\0" in text:
        raise ValueError("a literal cannot contain NUL")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
