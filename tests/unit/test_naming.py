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
    ({"GITHUB_RUN_ID": "123", "GITHUB_RUN_ATTEMPT": "2"}, "123"),
    ({"GITHUB_REPOSITORY": "Octo-Org/My_App", "GITHUB_RUN_ID": "123"}, "octo-org-my-app-123"),
    ({"CI_PIPELINE_ID": "77", "CI_JOB_ID": "901"}, "77"),
    ({"CI_PROJECT_PATH": "group/sub/project", "CI_PIPELINE_ID": "77", "CI_JOB_ID": "901"},
     "group-sub-project-77"),
    ({"BUILD_TAG": "jenkins-My Job/feature_x-12"}, "jenkins-my-job-feature-x-12"),
    ({"BUILDKITE_BUILD_ID": "0190C1A2-AAAA"}, "0190c1a2-aaaa"),
    ({"CIRCLE_WORKFLOW_ID": "abc-DEF"}, "abc-def"),
    # "Rerun workflow from failed" gives a new workflow ID and keeps the workspace ID
    ({"CIRCLE_WORKFLOW_ID": "abc-def", "CIRCLE_WORKFLOW_WORKSPACE_ID": "ws-1"}, "ws-1"),
    ({"GITHUB_RUN_ATTEMPT": "1", "GITHUB_REPOSITORY": "o/r"}, None),  # no run ID: not a run
    ({"CI_JOB_ID": "901", "CI_PROJECT_PATH": "g/p"}, None),
    ({}, None),
])
def test_detect_from_ci(env: dict[str, str], expected: str | None) -> None:
    assert detect_pipeline_id(env) == expected


# What one pipeline's jobs and re-runs see: (the variables they share, what varies per job/run).
ONE_PIPELINE = {
    "github": ({"GITHUB_REPOSITORY": "octo-org/app", "GITHUB_RUN_ID": "9001"},
               [{"GITHUB_RUN_ATTEMPT": str(n), "GITHUB_JOB": job}
                for n in (1, 2, 3) for job in ("provision", "test", "clean-up")]),
    "gitlab": ({"CI_PROJECT_PATH": "group/app", "CI_PROJECT_ID": "12", "CI_PIPELINE_ID": "555"},
               [{"CI_JOB_ID": str(n), "CI_JOB_NAME": f"job-{n}"} for n in (1, 2, 3, 4)]),
    "circleci": ({"CIRCLE_WORKFLOW_WORKSPACE_ID": "ws-1"},
                 [{"CIRCLE_WORKFLOW_ID": w, "CIRCLE_JOB": j} for w in ("wf-1", "wf-2")
                  for j in ("up", "test")]),
    "buildkite": ({"BUILDKITE_BUILD_ID": "0190c1a2"},
                  [{"BUILDKITE_JOB_ID": j, "BUILDKITE_RETRY_COUNT": r} for j in ("a", "b")
                   for r in ("0", "1")]),
}


@pytest.mark.parametrize("ci", list(ONE_PIPELINE))
def test_every_job_and_rerun_of_a_pipeline_names_one_environment(ci: str) -> None:
    shared, per_job = ONE_PIPELINE[ci]
    ids = {detect_pipeline_id({**shared, **varying}) for varying in per_job}
    assert len(ids) == 1 and None not in ids, ids


def test_pipelines_of_other_repositories_get_other_ids() -> None:
    a = detect_pipeline_id({"GITHUB_REPOSITORY": "org/a", "GITHUB_RUN_ID": "1"})
    b = detect_pipeline_id({"GITHUB_REPOSITORY": "org/b", "GITHUB_RUN_ID": "1"})
    c = detect_pipeline_id({"CI_PROJECT_PATH": "org/a", "CI_PIPELINE_ID": "1"})
    d = detect_pipeline_id({"CI_PROJECT_PATH": "org/b", "CI_PIPELINE_ID": "1"})
    assert len({a, b}) == 2 and len({c, d}) == 2


def test_long_repository_names_keep_the_run_id_readable() -> None:
    repo = "an-organisation-with-a-long-name/" + "a-repository-name-that-goes-on" * 3
    ids = {
        detect_pipeline_id({"GITHUB_REPOSITORY": repo + suffix, "GITHUB_RUN_ID": "12345678901"})
        for suffix in ("-x", "-y")
    }
    assert len(ids) == 2
    for value in ids:
        assert value is not None and value.endswith("-12345678901")
        assert len(value) <= MAX_ID_LENGTH and validate_pipeline_id(value) == value
    # an ID of a CI that gives one long value is cut with a hash suffix of the whole value
    long_key = detect_pipeline_id({"GITHUB_REPOSITORY": "o/r", "GITHUB_RUN_ID": "9" * 70})
    assert long_key is not None and len(long_key) <= MAX_ID_LENGTH
    assert validate_pipeline_id(long_key) == long_key


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
