"""The aws provider's typed resources: as stored by every envkit so far, tolerant of damage."""

from __future__ import annotations

from envkit.naming import aws_name, rds_identifier
from envkit.providers.aws.resources import AwsResources
from envkit.state import Record, Status


def record(resources: dict[str, object]) -> Record:
    found = Record("pr-7", "aws", Status.READY, "2030-01-01T00:00:00Z", "2030-01-01T04:00:00Z", "t")
    found.resources = dict(resources)
    return found


def test_a_stored_record_loads_and_saves_back_identical() -> None:
    stored = {
        "stack": "pr-7",
        "project": "envkit",
        "region": "eu-west-1",
        "rds_identifier": "envkit-pr-7",
        "ecs_cluster": "envkit-pr-7",
        "stack_outputs": {"vpc_id": "vpc-1"},
        "runs": {"m": {"pid": 1}},  # the lifecycle's, not the provider's
    }
    loaded = AwsResources.load(record(stored))
    assert (loaded.region, loaded.database, loaded.cluster) == (
        "eu-west-1", "envkit-pr-7", "envkit-pr-7")
    again = record({"runs": stored["runs"]})
    loaded.save(again)
    assert again.resources == stored


def test_absent_or_damaged_values_read_as_unset_and_names_derive_from_the_id() -> None:
    for damaged in ({}, {"rds_identifier": 3, "ecs_cluster": None, "stack_outputs": [1]}):
        loaded = AwsResources.load(record(damaged))
        assert loaded.rds_identifier is None and loaded.stack_outputs == {}
        assert loaded.database == rds_identifier("pr-7")
        assert loaded.cluster == aws_name("pr-7", limit=255)
        empty = record({})
        loaded.save(empty)
        assert empty.resources == {}
