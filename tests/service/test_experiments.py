"""Experiments through the real TrackerService: create, idempotency, get, list, update,
delete and restore, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import field_mask_pb2

from cairn.tracker.v1 import experiment_pb2, lifecycle_pb2, tracker_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2 as pb

from cairn_testing import (
    ServerThread,
    TrackerStub,
    error_info,
    expect_error,
    new_experiment,
    new_run,
    shared_tracker,
)

__all__ = ["shared_tracker"]  # a fixture: importing it is what makes pytest see it

ACTIVE = lifecycle_pb2.LIFECYCLE_STATE_ACTIVE
DELETED = lifecycle_pb2.LIFECYCLE_STATE_DELETED


def list_all(tracker: TrackerStub, page_size: int, **request: object) -> list[list[str]]:
    """Every page of a ListExperiments, as lists of experiment ids."""
    pages: list[list[str]] = []
    token = ""
    while True:
        response = tracker.ListExperiments(
            pb.ListExperimentsRequest(page_size=page_size, page_token=token, **request)
        )
        pages.append([e.experiment_id for e in response.experiments])
        token = response.next_page_token
        if not token:
            return pages
        assert len(pages) < 100, "paging does not end"


def list_names(tracker: TrackerStub, **request: object) -> list[str]:
    response = tracker.ListExperiments(pb.ListExperimentsRequest(page_size=1000, **request))
    assert not response.next_page_token
    return [e.display_name for e in response.experiments]


# ------------------------------------------------------------------ create and get


def test_create_returns_the_experiment_and_get_reads_it_back(tracker: TrackerStub) -> None:
    created = new_experiment(
        tracker, "churn", description="predict churn", tags={"team": "growth", "tier": "1"}
    )
    assert created.name == f"experiments/{created.experiment_id}"
    assert created.experiment_id
    assert created.display_name == "churn"
    assert created.description == "predict churn"
    assert dict(created.tags) == {"team": "growth", "tier": "1"}
    assert created.lifecycle_state == ACTIVE
    assert created.create_time.ToMilliseconds() > 0
    assert created.update_time.ToMilliseconds() >= created.create_time.ToMilliseconds()
    assert not created.HasField("delete_time")
    assert created.run_count == 0

    fetched = tracker.GetExperiment(pb.GetExperimentRequest(name=created.name))
    assert fetched == created
    by_name = tracker.GetExperimentByName(pb.GetExperimentByNameRequest(display_name="churn"))
    assert by_name == created


def test_duplicate_display_name_is_already_exists(tracker: TrackerStub) -> None:
    new_experiment(tracker, "dup")
    error = expect_error(grpc.StatusCode.ALREADY_EXISTS, new_experiment, tracker, "dup")
    assert "dup" in error.details()
    info = error_info(error)
    assert info.reason == "EXPERIMENT_EXISTS"
    assert info.metadata["display_name"] == "dup"
    assert info.metadata["request_id"]  # the interceptor adds the call's request id
    assert list_names(tracker) == ["dup"]


def test_duplicate_display_name_of_a_deleted_experiment_is_still_taken(
    tracker: TrackerStub,
) -> None:
    experiment = new_experiment(tracker, "gone")
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    expect_error(grpc.StatusCode.ALREADY_EXISTS, new_experiment, tracker, "gone")


def test_request_id_makes_create_idempotent(tracker: TrackerStub) -> None:
    request = pb.CreateExperimentRequest(
        experiment=experiment_pb2.Experiment(display_name="idem", tags={"a": "1"}),
        request_id="req-exp-1",
    )
    first = tracker.CreateExperiment(request)
    retry = tracker.CreateExperiment(request)
    assert retry == first
    # The key names one request (AIP-155): another request under it is refused.
    request.experiment.display_name = "idem-changed"
    error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, tracker.CreateExperiment, request)
    assert error_info(error).reason == "REQUEST_ID_REUSED"
    assert list_names(tracker) == ["idem"]
    # Another key with the taken name is a real duplicate.
    request.request_id = "req-exp-2"
    request.experiment.display_name = "idem"
    expect_error(grpc.StatusCode.ALREADY_EXISTS, tracker.CreateExperiment, request)


@pytest.mark.parametrize(
    ("experiment", "request_id", "field"),
    [
        (experiment_pb2.Experiment(display_name=""), "", "experiment.display_name"),
        (experiment_pb2.Experiment(display_name="   "), "", "experiment.display_name"),
        (experiment_pb2.Experiment(display_name="x" * 257), "", "experiment.display_name"),
        (
            experiment_pb2.Experiment(display_name="d", description="x" * 65_537),
            "",
            "experiment.description",
        ),
        (experiment_pb2.Experiment(display_name="t", tags={"": "v"}), "", "tags"),
        (experiment_pb2.Experiment(display_name="t", tags={"k" * 251: "v"}), "", "tags"),
        (experiment_pb2.Experiment(display_name="t", tags={"k": "v" * 8001}), "", "tags"),
        (experiment_pb2.Experiment(display_name="r"), "r" * 129, "request_id"),
    ],
    ids=[
        "empty-name",
        "blank-name",
        "long-name",
        "long-description",
        "empty-tag-key",
        "long-tag-key",
        "long-tag-value",
        "long-request-id",
    ],
)
def test_create_validates_its_input(
    shared_tracker: TrackerStub,
    experiment: experiment_pb2.Experiment,
    request_id: str,
    field: str,
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.CreateExperiment,
        pb.CreateExperimentRequest(experiment=experiment, request_id=request_id),
    )
    assert field in error.details()
    assert error_info(error).metadata["field"] == field
    if experiment.display_name.strip() and len(experiment.display_name) <= 256:
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            shared_tracker.GetExperimentByName,
            pb.GetExperimentByNameRequest(display_name=experiment.display_name),
        )


def test_limits_are_inclusive(tracker: TrackerStub) -> None:
    experiment = new_experiment(
        tracker, "n" * 256, description="d" * 65_536, tags={"k" * 250: "v" * 8000}
    )
    fetched = tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
    assert fetched.display_name == "n" * 256
    assert fetched.description == "d" * 65_536
    assert dict(fetched.tags) == {"k" * 250: "v" * 8000}


def test_unknown_ids_are_not_found(tracker: TrackerStub) -> None:
    for call, request in [
        (tracker.GetExperiment, pb.GetExperimentRequest(name="experiments/nope")),
        (tracker.DeleteExperiment, pb.DeleteExperimentRequest(name="experiments/nope")),
        (tracker.RestoreExperiment, pb.RestoreExperimentRequest(name="experiments/nope")),
        (
            tracker.UpdateExperiment,
            pb.UpdateExperimentRequest(
                experiment=experiment_pb2.Experiment(name="experiments/nope", description="x")
            ),
        ),
    ]:
        error = expect_error(grpc.StatusCode.NOT_FOUND, call, request)
        assert "nope" in error.details()
        assert error_info(error).reason == "EXPERIMENT_NOT_FOUND"
    error = expect_error(
        grpc.StatusCode.NOT_FOUND,
        tracker.GetExperimentByName,
        pb.GetExperimentByNameRequest(display_name="nobody"),
    )
    assert "nobody" in error.details()
    assert error_info(error).metadata["display_name"] == "nobody"


@pytest.mark.parametrize(
    "name",
    [
        "",
        "nope",
        "experiments/",
        "experiments/-",
        "experiments/a/b",
        "experiments/a b",
        "experiments/" + "a" * 65,
        "projects/x",
        "/experiments/x",
        "experiments/x/",
        "experiments/é",
    ],
)
def test_malformed_names_are_invalid_argument(shared_tracker: TrackerStub, name: str) -> None:
    tracker = shared_tracker
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, tracker.GetExperiment, pb.GetExperimentRequest(name=name)
    )
    assert "experiments/{experiment_id}" in error.details()
    assert error_info(error).metadata["field"] == "name"
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.DeleteExperiment,
        pb.DeleteExperimentRequest(name=name),
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.UpdateExperiment,
        pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(name=name, description="d")
        ),
    )


def test_get_by_name_finds_deleted_experiments(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker, "old")
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    found = tracker.GetExperimentByName(pb.GetExperimentByNameRequest(display_name="old"))
    assert found.experiment_id == experiment.experiment_id
    assert found.lifecycle_state == DELETED
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.GetExperimentByName,
        pb.GetExperimentByNameRequest(display_name=""),
    )


# ------------------------------------------------------------------ list


def test_list_pages_without_duplicates_or_gaps(tracker: TrackerStub) -> None:
    created = [new_experiment(tracker, f"page-{i:02d}").experiment_id for i in range(23)]
    for page_size in (1, 5, 7, 23, 50):
        pages = list_all(tracker, page_size)
        assert all(len(page) == page_size for page in pages[:-1])
        assert 0 < len(pages[-1]) <= page_size
        flat = [e for page in pages for e in page]
        assert len(flat) == len(set(flat)) == 23
        assert set(flat) == set(created)
        # The default order, newest first, is one sequence however it is paged.
        assert flat == [e for page in list_all(tracker, 1000) for e in page]


def test_list_default_order_is_newest_first(tracker: TrackerStub) -> None:
    for name in ("first", "second", "third"):
        new_experiment(tracker, name)
    response = tracker.ListExperiments(pb.ListExperimentsRequest())
    times = [e.create_time.ToMilliseconds() for e in response.experiments]
    assert times == sorted(times, reverse=True)
    assert set(list_names(tracker)) == {"first", "second", "third"}


def test_list_filter_and_order_by(tracker: TrackerStub) -> None:
    new_experiment(tracker, "alpha", description="ranking model", tags={"team": "search"})
    new_experiment(tracker, "beta", description="retrieval", tags={"team": "ads"})
    new_experiment(tracker, "gamma", tags={"team": "search", "prod": "yes"})
    new_experiment(tracker, "Delta")

    assert list_names(tracker, order_by="display_name") == ["Delta", "alpha", "beta", "gamma"]
    assert list_names(tracker, order_by="display_name DESC") == ["gamma", "beta", "alpha", "Delta"]
    assert list_names(tracker, filter="tags.team = 'search'", order_by="display_name") == [
        "alpha",
        "gamma",
    ]
    assert list_names(tracker, filter="tags.prod IS NULL", order_by="name ASC") == [
        "Delta",
        "alpha",
        "beta",
    ]
    assert list_names(tracker, filter="display_name LIKE '%a'", order_by="display_name") == [
        "Delta",
        "alpha",
        "beta",
        "gamma",
    ]
    assert list_names(tracker, filter="display_name LIKE 'd%'") == []
    assert list_names(tracker, filter="display_name ILIKE 'd%'") == ["Delta"]
    assert list_names(
        tracker, filter="description = 'retrieval' OR tags.team = 'search'", order_by="name"
    ) == ["alpha", "beta", "gamma"]
    assert list_names(tracker, filter="description IS NULL", order_by="name") == [
        "Delta",
        "gamma",
    ]
    assert list_names(tracker, filter="NOT (tags.team IN ('ads', 'search'))") == ["Delta"]
    assert list_names(tracker, filter="create_time > 0", order_by="name") == [
        "Delta",
        "alpha",
        "beta",
        "gamma",
    ]
    assert list_names(tracker, filter="create_time < '2000-01-01'") == []
    # Paging a filtered, ordered list keeps filter and order.
    pages = list_all(tracker, 1, filter="tags.team IS NOT NULL", order_by="display_name DESC")
    names = [
        tracker.GetExperiment(pb.GetExperimentRequest(name=f"experiments/{i}")).display_name
        for page in pages
        for i in page
    ]
    assert names == ["gamma", "beta", "alpha"]


@pytest.mark.parametrize(
    ("request_fields", "field", "fragment"),
    [
        ({"filter": "display_name = "}, "filter", "position 15"),
        ({"filter": "owner = 'me'"}, "filter", "'owner'"),
        ({"filter": "params.x = '1'"}, "filter", "params.x"),
        ({"order_by": "tags.team"}, "order_by", "tags.team"),
        ({"order_by": "colour DESC"}, "order_by", "'colour'"),
        ({"page_size": -1}, "page_size", "page_size"),
        ({"page_token": "garbage"}, "page_token", "page_token"),
        ({"lifecycle_filter": 17}, "lifecycle_filter", "lifecycle_filter"),
    ],
)
def test_list_rejects_bad_arguments(
    shared_tracker: TrackerStub, request_fields: dict[str, object], field: str, fragment: str
) -> None:
    new_experiment(shared_tracker)
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.ListExperiments,
        pb.ListExperimentsRequest(**request_fields),
    )
    assert fragment in error.details()
    assert error_info(error).metadata["field"] == field


def test_page_token_is_bound_to_its_query(tracker: TrackerStub) -> None:
    for i in range(3):
        new_experiment(tracker, f"t{i}")
    first = tracker.ListExperiments(pb.ListExperimentsRequest(page_size=1))
    assert first.next_page_token
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.ListExperiments,
        pb.ListExperimentsRequest(
            page_size=1, page_token=first.next_page_token, order_by="display_name"
        ),
    )
    assert error_info(error).reason == "PAGE_TOKEN_MISMATCH"


# ------------------------------------------------------------------ update


def test_update_without_mask_changes_the_fields_that_are_set(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker, "u1", description="old", tags={"a": "1"})
    updated = tracker.UpdateExperiment(
        pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(name=experiment.name, description="new")
        )
    )
    assert updated.description == "new"
    assert updated.display_name == "u1"
    assert dict(updated.tags) == {"a": "1"}  # not set in the request: untouched
    assert updated.update_time.ToMilliseconds() >= experiment.update_time.ToMilliseconds()
    assert updated.create_time == experiment.create_time

    renamed = tracker.UpdateExperiment(
        pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                name=experiment.name, display_name="u1-renamed", tags={"b": "2"}
            )
        )
    )
    assert renamed.display_name == "u1-renamed"
    assert dict(renamed.tags) == {"b": "2"}  # tags are replaced as a whole
    assert renamed.description == "new"
    fetched = tracker.GetExperimentByName(pb.GetExperimentByNameRequest(display_name="u1-renamed"))
    assert fetched == renamed
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        tracker.GetExperimentByName,
        pb.GetExperimentByNameRequest(display_name="u1"),
    )


def test_update_with_mask_changes_only_the_masked_fields(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker, "u2", description="keep", tags={"a": "1"})
    updated = tracker.UpdateExperiment(
        pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                name=experiment.name, display_name="ignored", description="", tags={}
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description", "tags"]),
        )
    )
    # A mask can clear fields, which an update without one cannot express.
    assert updated.description == ""
    assert dict(updated.tags) == {}
    assert updated.display_name == "u2"
    assert tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name)) == updated


def test_update_with_unknown_mask_path_names_it(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker, "u3", description="same")
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.UpdateExperiment,
        pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(name=experiment.name, description="changed"),
            update_mask=field_mask_pb2.FieldMask(paths=["description", "lifecycle_state"]),
        ),
    )
    assert "lifecycle_state" in error.details()
    info = error_info(error)
    assert info.metadata["field"] == "update_mask"
    assert info.metadata["unknown"] == "lifecycle_state"
    # Nothing of the rejected update was applied.
    fetched = tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
    assert fetched.description == "same"


def test_update_with_nothing_to_change_is_invalid_argument(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker, "u-empty")
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.UpdateExperiment,
        pb.UpdateExperimentRequest(experiment=experiment_pb2.Experiment(name=experiment.name)),
    )
    assert "nothing to update" in error.details()
    fetched = tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
    assert fetched.update_time == experiment.update_time


def test_update_to_a_taken_name_is_already_exists(tracker: TrackerStub) -> None:
    new_experiment(tracker, "taken")
    other = new_experiment(tracker, "other")
    error = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        tracker.UpdateExperiment,
        pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(name=other.name, display_name="taken")
        ),
    )
    assert "taken" in error.details()
    assert tracker.GetExperiment(pb.GetExperimentRequest(name=other.name)).display_name == "other"


def test_update_validates_masked_fields(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker, "u4")
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.UpdateExperiment,
        pb.UpdateExperimentRequest(
            experiment=experiment_pb2.Experiment(name=experiment.name),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
    )
    assert "experiment.display_name" in error.details()


# ------------------------------------------------------------------ delete and restore


def test_delete_hides_the_experiment_and_its_runs_and_restore_brings_them_back(
    tracker: TrackerStub,
) -> None:
    experiment = new_experiment(tracker, "soft")
    keep = new_experiment(tracker, "keep")
    runs = [new_run(tracker, experiment, run_name=f"r{i}") for i in range(3)]
    other_run = new_run(tracker, keep)
    assert tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name)).run_count == 3

    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))

    deleted = tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
    assert deleted.lifecycle_state == DELETED
    assert deleted.HasField("delete_time")
    assert deleted.run_count == 0
    assert list_names(tracker) == ["keep"]
    assert list_names(tracker, lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY) == [
        "soft"
    ]
    assert set(list_names(tracker, lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL)) == {
        "soft",
        "keep",
    }
    all_runs = tracker.ListRuns(pb.ListRunsRequest(parent="experiments/-"))
    assert [r.run_id for r in all_runs.runs] == [other_run.run_id]
    assert not tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name)).runs
    for run in runs:
        fetched = tracker.GetRun(pb.GetRunRequest(name=run.name))
        assert fetched.lifecycle_state == DELETED
    # No new runs in a deleted experiment.
    error = expect_error(grpc.StatusCode.FAILED_PRECONDITION, new_run, tracker, experiment)
    assert error_info(error).reason == "EXPERIMENT_DELETED"

    restored = tracker.RestoreExperiment(pb.RestoreExperimentRequest(name=experiment.name))
    assert restored.lifecycle_state == ACTIVE
    assert not restored.HasField("delete_time")
    assert restored.run_count == 3
    assert set(list_names(tracker)) == {"soft", "keep"}
    listed = tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name))
    assert {r.run_id for r in listed.runs} == {r.run_id for r in runs}
    assert all(r.lifecycle_state == ACTIVE for r in listed.runs)


def test_restore_keeps_runs_that_were_deleted_on_their_own(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker, "mixed")
    alone, together = new_run(tracker, experiment), new_run(tracker, experiment)
    tracker.DeleteRun(pb.DeleteRunRequest(name=alone.name))
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    tracker.RestoreExperiment(pb.RestoreExperimentRequest(name=experiment.name))
    listed = tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name))
    assert [r.run_id for r in listed.runs] == [together.run_id]
    assert tracker.GetRun(pb.GetRunRequest(name=alone.name)).lifecycle_state == DELETED


def test_delete_twice_and_restore_active_are_failed_precondition(tracker: TrackerStub) -> None:
    experiment = new_experiment(tracker, "twice")
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        tracker.RestoreExperiment,
        pb.RestoreExperimentRequest(name=experiment.name),
    )
    assert error_info(error).reason == "EXPERIMENT_NOT_DELETED"
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        tracker.DeleteExperiment,
        pb.DeleteExperimentRequest(name=experiment.name),
    )
    assert "already deleted" in error.details()
    assert error_info(error).reason == "EXPERIMENT_DELETED"


def test_concurrent_retries_with_one_request_id_create_one_experiment(
    tracker_server: ServerThread,
) -> None:
    workers = 8
    barrier = threading.Barrier(workers)

    def create(_: int) -> experiment_pb2.Experiment:
        with grpc.insecure_channel(tracker_server.address()) as channel:
            stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            barrier.wait(timeout=30)
            return stub.CreateExperiment(
                pb.CreateExperimentRequest(
                    experiment=experiment_pb2.Experiment(display_name="raced"),
                    request_id="one-call",
                )
            )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        created = list(pool.map(create, range(workers)))
    assert len({e.experiment_id for e in created}) == 1
    with grpc.insecure_channel(tracker_server.address()) as channel:
        stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
        assert list_names(stub, lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL) == ["raced"]


def test_experiment_tags_are_set_and_deleted_one_key_at_a_time(tracker: TrackerStub) -> None:
    experiment = tracker.CreateExperiment(
        pb.CreateExperimentRequest(
            experiment=experiment_pb2.Experiment(display_name="tags-by-key", tags={"a": "1"})
        )
    )
    tracker.SetExperimentTags(
        pb.SetExperimentTagsRequest(experiment=experiment.name, tags={"b": "2"})
    )
    tracker.SetExperimentTags(
        pb.SetExperimentTagsRequest(experiment=experiment.name, tags={"a": "9"})
    )
    tracker.DeleteExperimentTag(pb.DeleteExperimentTagRequest(experiment=experiment.name, key="b"))
    fetched = tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
    assert dict(fetched.tags) == {"a": "9"}
    error = expect_error(
        grpc.StatusCode.NOT_FOUND,
        tracker.DeleteExperimentTag,
        pb.DeleteExperimentTagRequest(experiment=experiment.name, key="b"),
    )
    assert error_info(error).reason == "TAG_NOT_FOUND"
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        tracker.SetExperimentTags,
        pb.SetExperimentTagsRequest(experiment=experiment.name, tags={"c": "3"}),
    )


def test_concurrent_experiment_tag_writers_lose_nothing(tracker_server: ServerThread) -> None:
    with grpc.insecure_channel(tracker_server.address()) as channel:
        experiment = tracker_service_pb2_grpc.TrackerServiceStub(channel).CreateExperiment(
            pb.CreateExperimentRequest(
                experiment=experiment_pb2.Experiment(display_name="tag-writers")
            )
        )
    barrier = threading.Barrier(20)

    def tag(index: int) -> None:
        with grpc.insecure_channel(tracker_server.address()) as own:
            stub = tracker_service_pb2_grpc.TrackerServiceStub(own)
            barrier.wait()
            stub.SetExperimentTags(
                pb.SetExperimentTagsRequest(experiment=experiment.name, tags={f"k{index}": "v"})
            )

    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(tag, range(20)))
    with grpc.insecure_channel(tracker_server.address()) as channel:
        final = tracker_service_pb2_grpc.TrackerServiceStub(channel).GetExperiment(
            pb.GetExperimentRequest(name=experiment.name)
        )
    assert set(final.tags) == {f"k{i}" for i in range(20)}
