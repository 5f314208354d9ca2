"""The pytest plugin, driven through pytester in subprocesses against real local environments.

Every inner run gets this test's private ENVKIT_HOME (the ``envkit_home`` fixture), which destroys
whatever an inner run leaked, even when an assertion here fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envkit import lifecycle
from envkit.plan import Plan
from envkit.settings import Settings
from envkit.state import Status

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.integration

# An inner test module that writes what it saw (pipeline ID, worker) to a JSON-lines file.
RECORDER = """
import json, os

def record(env, path={path!r}):
    with open(path, "a") as handle:
        handle.write(json.dumps({{"pipeline_id": env.pipeline_id,
                                 "url": env.outputs["DATABASE_URL"],
                                 "worker": os.environ.get("PYTEST_XDIST_WORKER", "")}}) + "\\n")
"""


def seen(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def status(settings: Settings, pipeline_id: str) -> Status:
    record = lifecycle.status(Plan.build(pipeline_id, settings))
    return Status.ABSENT if record is None else record.status


@pytest.fixture
def inner(
    pytester: pytest.Pytester, envkit_home: Path, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """A pytester whose inner runs use the private ENVKIT_HOME (and no CI variables)."""
    monkeypatch.chdir(pytester.path)  # envkit_home moved to its tmp_path; the runs belong here
    pytester.makepyfile(recorder=RECORDER.format(path=str(pytester.path / "seen.jsonl")))
    return pytester


def test_creates_an_environment_for_the_session_and_destroys_it(
    inner: pytest.Pytester, settings: Settings
) -> None:
    inner.makepyfile(
        test_inner="""
        from recorder import record

        def test_a(envkit_env, envkit_outputs):
            record(envkit_env)
            assert envkit_outputs["ENVKIT_PIPELINE_ID"] == envkit_env.pipeline_id

        def test_b(envkit_env):
            record(envkit_env)
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=2)
    ids = {row["pipeline_id"] for row in seen(inner.path / "seen.jsonl")}
    assert len(ids) == 1  # one environment for the whole session
    (pipeline_id,) = ids
    assert pipeline_id.startswith("pytest-")
    assert status(settings, pipeline_id) is Status.ABSENT


def test_attaches_to_an_environment_that_is_up_and_leaves_it_up(
    inner: pytest.Pytester, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = lifecycle.up(Plan.build("ci-step", settings))
    monkeypatch.setenv("ENVKIT_PIPELINE_ID", "ci-step")
    inner.makepyfile(
        test_inner="""
        from recorder import record

        def test_a(envkit_env):
            record(envkit_env)
        """
    )
    inner.runpytest_subprocess().assert_outcomes(passed=1)
    (row,) = seen(inner.path / "seen.jsonl")
    assert row["pipeline_id"] == "ci-step"
    assert row["url"] == record.outputs["DATABASE_URL"]
    assert status(settings, "ci-step") is Status.READY  # attached: not ours to destroy


def test_a_named_environment_that_is_not_up_is_created_and_destroyed(
    inner: pytest.Pytester, settings: Settings
) -> None:
    inner.makepyfile(test_inner="def test_a(envkit_env):\n    assert envkit_env.pipeline_id")
    inner.runpytest_subprocess("--envkit-pipeline-id=named-one").assert_outcomes(passed=1)
    assert status(settings, "named-one") is Status.ABSENT


FAILING = """
from recorder import record

def test_fails(envkit_env):
    record(envkit_env)
    assert False, "on purpose"

def test_passes(envkit_env):
    pass
"""


def test_a_failing_test_preserves_the_environment(
    inner: pytest.Pytester, settings: Settings
) -> None:
    inner.makepyfile(test_inner=FAILING)
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1)
    (row,) = seen(inner.path / "seen.jsonl")
    assert status(settings, row["pipeline_id"]) is Status.PRESERVED
    result.stdout.fnmatch_lines([f"*environment {row['pipeline_id']} is preserved until*"])
    assert row["url"].split("@")[0].split(":")[-1] not in result.stdout.str()  # no password


def test_preserving_on_failure_can_be_turned_off(
    inner: pytest.Pytester, settings: Settings
) -> None:
    inner.makepyfile(test_inner=FAILING)
    inner.runpytest_subprocess("--no-envkit-preserve-on-failure").assert_outcomes(
        passed=1, failed=1
    )
    (row,) = seen(inner.path / "seen.jsonl")
    assert status(settings, row["pipeline_id"]) is Status.ABSENT


def test_keep_never_destroys(inner: pytest.Pytester, settings: Settings) -> None:
    inner.makeini("[pytest]\nenvkit_keep = true\n")  # the ini key from the same option table
    inner.makepyfile(test_inner="from recorder import record\n\n"
                     "def test_a(envkit_env):\n    record(envkit_env)\n")
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    (row,) = seen(inner.path / "seen.jsonl")
    assert status(settings, row["pipeline_id"]) is Status.READY
    result.stdout.fnmatch_lines(["*kept (--envkit-keep)*"])


def test_each_test_s_writes_are_rolled_back(inner: pytest.Pytester) -> None:
    inner.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def table(envkit_env):
            with envkit_env.connect(autocommit=True) as conn:
                conn.execute("create table accounts (id int primary key, owner text)")
        """
    )
    # Both tests insert the same primary key: the second fails unless the first was undone.
    inner.makepyfile(
        test_inner="""
        import pytest

        @pytest.mark.parametrize("owner", ["alice", "bob"])
        def test_insert_same_row(envkit_db, owner):
            assert envkit_db.execute("select count(*) from accounts").fetchone() == (0,)
            envkit_db.execute("insert into accounts values (1, %s)", [owner])
            assert envkit_db.execute("select owner from accounts").fetchall() == [(owner,)]

        def test_commit_is_refused(envkit_db):
            with pytest.raises(Exception, match="envkit_db rolls back .* commit.. is not allowed"):
                envkit_db.commit()
        """
    )
    inner.runpytest_subprocess().assert_outcomes(passed=3)


def test_the_plugin_can_be_disabled(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_inner="def test_a(envkit_env):\n    pass\n")
    result = inner.runpytest_subprocess("-p", "no:envkit")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'envkit_env' not found*"])


XDIST_TESTS = """
import time
import pytest
from recorder import record

@pytest.mark.parametrize("n", range(6))
def test_uses_env(envkit_env, n):
    time.sleep(0.3)  # long enough that both workers get tests
    record(envkit_env)
"""


def test_xdist_workers_share_one_environment(
    inner: pytest.Pytester, settings: Settings
) -> None:
    inner.makepyfile(test_inner=XDIST_TESTS)
    inner.runpytest_subprocess("-p", "xdist", "-n", "2").assert_outcomes(passed=6)
    rows = seen(inner.path / "seen.jsonl")
    assert {row["worker"] for row in rows} == {"gw0", "gw1"}
    assert len({row["pipeline_id"] for row in rows}) == 1
    assert len({row["url"] for row in rows}) == 1
    # The controller destroyed it after both workers finished, and cleaned its lock and marker.
    assert status(settings, rows[0]["pipeline_id"]) is Status.ABSENT
    assert not list((settings.home / "pytest").glob("*"))


def test_xdist_per_worker_environments(inner: pytest.Pytester, settings: Settings) -> None:
    inner.makepyfile(test_inner=XDIST_TESTS)
    inner.runpytest_subprocess(
        "-p", "xdist", "-n", "2", "--envkit-xdist=per-worker"
    ).assert_outcomes(passed=6)
    rows = seen(inner.path / "seen.jsonl")
    by_worker = {row["worker"]: row["pipeline_id"] for row in rows}
    assert set(by_worker) == {"gw0", "gw1"}
    assert by_worker["gw0"] != by_worker["gw1"]
    assert all(pid.endswith(worker) for worker, pid in by_worker.items())
    for pipeline_id in by_worker.values():
        assert status(settings, pipeline_id) is Status.ABSENT


def test_the_factory_makes_several_environments(
    inner: pytest.Pytester, settings: Settings
) -> None:
    inner.makepyfile(
        test_inner="""
        from recorder import record

        def test_two(envkit_factory):
            search, billing = envkit_factory("search"), envkit_factory("billing")
            assert envkit_factory("search") is search
            assert search.outputs["DATABASE_URL"] != billing.outputs["DATABASE_URL"]
            record(search)
            record(billing)
        """
    )
    inner.runpytest_subprocess().assert_outcomes(passed=1)
    rows = seen(inner.path / "seen.jsonl")
    assert [row["pipeline_id"].rsplit("-", 1)[1] for row in rows] == ["search", "billing"]
    for row in rows:
        assert status(settings, row["pipeline_id"]) is Status.ABSENT
