from __future__ import annotations

import random
import string

import pytest

from envkit.errors import ConfigError
from envkit.naming import (
    MAX_ID_LENGTH,
    detect_pipeline_id,
    normalise,
    resolve_pipeline_id,
    shorten,
    sql_identifier,
    validate_pipeline_id,
)

BAD_IDS = [
    "", " ", "a b", "../etc", "a/b", "a;rm -rf", "$(id)", "a'b", 'a"b', "-lead", "é", "a_b",
    "x" * 64, "a\nb", "a\tb", "a.b", "🙂", "a:b",
]


@pytest.mark.parametrize("raw", BAD_IDS)
def test_bad_ids_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError):
        validate_pipeline_id(raw)


@pytest.mark.parametrize("raw,expected", [("pr-42", "pr-42"), ("PR-42", "pr-42"), ("0", "0"),
                                          ("x" * 63, "x" * 63)])
def test_good_ids(raw: str, expected: str) -> None:
    assert validate_pipeline_id(raw) == expected


@pytest.mark.parametrize("env,expected", [
    ({"GITHUB_RUN_ID": "123", "GITHUB_RUN_ATTEMPT": "2"}, "123-2"),
    ({"CI_PIPELINE_ID": "77", "CI_JOB_ID": "901"}, "77-901"),
    ({"BUILD_TAG": "jenkins-My Job/feature_x-12"}, "jenkins-my-job-feature-x-12"),
    ({"BUILDKITE_BUILD_ID": "0190C1A2-AAAA"}, "0190c1a2-aaaa"),
    ({"CIRCLE_WORKFLOW_ID": "abc-DEF"}, "abc-def"),
    ({"GITHUB_RUN_ID": "123"}, None),  # attempt missing: not a complete GitHub ID
    ({}, None),
])
def test_detect_from_ci(env: dict[str, str], expected: str | None) -> None:
    assert detect_pipeline_id(env) == expected


def test_explicit_wins_and_missing_is_config_error() -> None:
    assert resolve_pipeline_id("a1", {"GITHUB_RUN_ID": "1", "GITHUB_RUN_ATTEMPT": "1"}) == "a1"
    with pytest.raises(ConfigError, match="No pipeline ID"):
        resolve_pipeline_id(None, {})


def test_normalised_long_ids_stay_valid_and_distinct() -> None:
    long_a = "jenkins-" + "a" * 100 + "-1"
    long_b = "jenkins-" + "a" * 100 + "-2"
    a, b = normalise(long_a), normalise(long_b)
    assert a != b
    for value in (a, b):
        assert len(value) <= MAX_ID_LENGTH
        assert validate_pipeline_id(value) == value


def test_shorten_never_collides_on_random_ids() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_lowercase + string.digits + "-"
    ids = {rng.choice("abc") + "".join(rng.choice(alphabet) for _ in range(62)) for _ in range(500)}
    short = {shorten(i, 20) for i in ids}
    assert len(short) == len(ids)
    assert all(len(s) <= 20 for s in short)


def test_sql_identifier_has_no_hyphen_and_fits() -> None:
    ident = sql_identifier("pr-42")
    assert ident == "envkit_pr_42"
    long_ident = sql_identifier("x" * 63)
    assert len(long_ident) <= 63 and "-" not in long_ident
    assert sql_identifier("a" * 62 + "b") != sql_identifier("a" * 62 + "c")
