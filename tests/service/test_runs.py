"""Runs through the real TrackerService: creation, names, idempotency, the status lifecycle,
updates, delete/restore, views, lineage and model versions (including concurrent creation),
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from cairn.common.v1 import environment_pb2, lineage_pb2
from cairn.tracker.v1 import lifecycle_pb2, run_pb2, tracker_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2 as pb

from cairn_testing import (
    ServerThread,
    TrackerStub,
    error_info,
    expect_error,
    log_metrics,
    log_params,
    metric,
    new_experiment,
    new_run,
    shared_tracker,
    upload,
)

__all__ = ["shared_tracker"]  # a fixture: importing it is what makes pytest see it

QUEUED = run_pb2.RUN_STATUS_QUEUED
RUNNING = run_pb2.RUN_STATUS_RUNNING
FINISHED = run_pb2.RUN_STATUS_FINISHED
FAILED = run_pb2.RUN_STATUS_FAILED
KILLED = run_pb2.RUN_STATUS_KILLED
ACTIVE = lifecycle_pb2.LIFECYCLE_STATE_ACTIVE
DELETED = lifecycle_pb2.LIFECYCLE_STATE_DELETED
JAN_2024_MS = 1_704_067_200_000


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def get_run(tracker: TrackerStub, name: str, view: int = 0) -> run_pb2.Run:
    return tracker.GetRun(pb.GetRunRequest(name=name, view=view))


def update_run(tracker: TrackerStub, name: str, *mask: str, **fields: object) -> run_pb2.Run:
    return tracker.UpdateRun(
        pb.UpdateRunRequest(
            run=run_pb2.Run(name=name, **fields),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=list(mask)),
        )
    )


# ------------------------------------------------------------------ create and get


def test_create_run_defaults(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    run = new_run(shared_tracker, experiment)
    assert run.status == RUNNING
    assert run.experiment_id == experiment.experiment_id
    assert run.name == f"{experiment.name}/runs/{run.run_id}"
    assert run.run_name  # the server picks one
    assert run.lifecycle_state == ACTIVE
    assert run.start_time.ToMilliseconds() == run.create_time.ToMilliseconds()
    assert not run.HasField("end_time")
    assert run.version == 0
    assert run.artifact_uri.endswith(
        f"experiments/{experiment.experiment_id}/runs/{run.run_id}/artifacts"
    )
    assert get_run(shared_tracker, run.name) == run


def test_create_run_keeps_what_the_caller_gives(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    environment = environment_pb2.Environment(
        git_commit="abc123", git_dirty=True, python_version="3.11.7", user="ada"
    )
    lineage = lineage_pb2.Lineage(
        dataset_id="ds-1",
        dataset_name="movielens",
        pipeline_id="pipe",
        node_id="Trainer",
        job_id="job-7",
        model_type="retrieval",
    )
    run = shared_tracker.CreateRun(
        pb.CreateRunRequest(
            parent=experiment.name,
            run=run_pb2.Run(
                run_name="  named  ",
                status=QUEUED,
                start_time=timestamp(JAN_2024_MS + 123),
                note="first try",
                tags={"k": "v"},
                lineage=lineage,
                environment=environment,
            ),
        )
    )
    assert run.run_name == "named"
    assert run.status == QUEUED
    assert run.start_time.ToMilliseconds() == JAN_2024_MS + 123
    assert run.note == "first try"
    assert dict(run.tags) == {"k": "v"}
    assert run.lineage == lineage
    assert run.environment == environment
    assert run.user == "ada"  # from the captured environment
    assert run.version == 1

    basic = get_run(shared_tracker, run.name, run_pb2.RUN_VIEW_BASIC)
    assert basic.lineage == lineage
    assert not basic.tags
    assert not basic.HasField("environment")
    standard = get_run(shared_tracker, run.name, run_pb2.RUN_VIEW_STANDARD)
    assert dict(standard.tags) == {"k": "v"}
    assert not standard.HasField("environment")
    assert get_run(shared_tracker, run.name).environment == environment  # FULL by default


@pytest.mark.parametrize("status", [FINISHED, FAILED, KILLED, 99])
def test_create_run_in_a_final_or_unknown_status_is_rejected(
    shared_tracker: TrackerStub, status: int
) -> None:
    experiment = new_experiment(shared_tracker)
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        new_run,
        shared_tracker,
        experiment,
        status=status,
    )
    assert error_info(error).metadata["field"] == "run.status"
    listed = shared_tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name, lifecycle_filter=3))
    assert not listed.runs


@pytest.mark.parametrize(
    ("run", "field"),
    [
        (run_pb2.Run(run_name="x" * 257), "run.run_name"),
        (run_pb2.Run(note="x" * 65_537), "run.note"),
        (run_pb2.Run(user="x" * 257), "run.user"),
        (run_pb2.Run(tags={"": "v"}), "tags"),
        (run_pb2.Run(tags={"k": "v" * 8001}), "tags"),
        (run_pb2.Run(lineage=lineage_pb2.Lineage(dataset_id="d" * 257)), "run.lineage.dataset_id"),
        (
            run_pb2.Run(environment=environment_pb2.Environment(hostname="h" * 65_537)),
            "run.environment.hostname",
        ),
        # Beyond what a google.protobuf.Timestamp may hold (years 1-9999).
        (run_pb2.Run(start_time=timestamp_pb2.Timestamp(seconds=10**17)), "run.start_time"),
    ],
    ids=[
        "long-name",
        "long-note",
        "long-user",
        "empty-tag-key",
        "long-tag",
        "long-dataset",
        "long-env",
        "time-overflow",
    ],
)
def test_create_run_validates_its_input(
    shared_tracker: TrackerStub, run: run_pb2.Run, field: str
) -> None:
    experiment = new_experiment(shared_tracker)
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.CreateRun,
        pb.CreateRunRequest(parent=experiment.name, run=run),
    )
    assert field in error.details()
    assert error_info(error).metadata["field"] == field


def test_create_run_needs_an_existing_experiment(shared_tracker: TrackerStub) -> None:
    error = expect_error(
        grpc.StatusCode.NOT_FOUND,
        shared_tracker.CreateRun,
        pb.CreateRunRequest(parent="experiments/missing"),
    )
    assert error_info(error).reason == "EXPERIMENT_NOT_FOUND"
    for parent in ("", "experiments/-", "experiments/a/runs/b", "runs/x"):
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            shared_tracker.CreateRun,
            pb.CreateRunRequest(parent=parent),
        )
        assert error_info(error).metadata["field"] == "parent"


def test_get_run_by_full_name_and_by_wildcard(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    other = new_experiment(shared_tracker)
    run = new_run(shared_tracker, experiment, run_name="findme")
    by_wildcard = get_run(shared_tracker, f"experiments/-/runs/{run.run_id}")
    assert by_wildcard == get_run(shared_tracker, run.name)
    assert by_wildcard.name == run.name  # the canonical name, not the wildcard

    wrong = f"{other.name}/runs/{run.run_id}"
    error = expect_error(grpc.StatusCode.NOT_FOUND, get_run, shared_tracker, wrong)
    assert run.run_id in error.details()
    assert error_info(error).reason == "RUN_NOT_FOUND"
    # Every call naming the run through the wrong experiment is NOT_FOUND, not a write.
    expect_error(grpc.StatusCode.NOT_FOUND, log_params, shared_tracker, run_pb2.Run(name=wrong))
    expect_error(
        grpc.StatusCode.NOT_FOUND, update_run, shared_tracker, wrong, "note", note="sneaky"
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND, shared_tracker.DeleteRun, pb.DeleteRunRequest(name=wrong)
    )
    assert get_run(shared_tracker, run.name).lifecycle_state == ACTIVE
    assert get_run(shared_tracker, run.name).note == ""

    error = expect_error(
        grpc.StatusCode.NOT_FOUND, get_run, shared_tracker, f"{experiment.name}/runs/nothere"
    )
    assert error_info(error).metadata["run_id"] == "nothere"
    expect_error(grpc.StatusCode.NOT_FOUND, get_run, shared_tracker, "experiments/-/runs/nothere")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "runs/x",
        "experiments/e",
        "experiments/e/runs/",
        "experiments/e/runs/-",
        "experiments/e/runs/a/b",
        "experiments//runs/x",
        "experiments/e/runs/x y",
    ],
)
def test_malformed_run_names_are_invalid_argument(shared_tracker: TrackerStub, name: str) -> None:
    error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, get_run, shared_tracker, name)
    assert "experiments/{experiment_id}/runs/{run_id}" in error.details()
    assert error_info(error).metadata["field"] == "name"


def test_create_run_request_id_is_idempotent(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    first = new_run(
        shared_tracker, experiment, request_id="run-req-1", dataset_id="ds-idem", model_type="m"
    )
    retry = new_run(
        shared_tracker, experiment, request_id="run-req-1", dataset_id="ds-idem", model_type="m"
    )
    assert retry == first
    assert first.version == 1
    # The retry took no version number: the next run gets 2.
    assert new_run(shared_tracker, experiment, dataset_id="ds-idem", model_type="m").version == 2
    listed = shared_tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name))
    assert len(listed.runs) == 2


def test_a_request_id_reused_for_another_run_is_refused(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    other_experiment = new_experiment(shared_tracker)
    first = new_run(shared_tracker, experiment, request_id="run-req-2", run_name="a")
    for parent, name in [(other_experiment, "a"), (experiment, "b")]:
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            new_run,
            shared_tracker,
            parent,
            request_id="run-req-2",
            run_name=name,
        )
        assert error_info(error).reason == "REQUEST_ID_REUSED"
    assert new_run(shared_tracker, experiment, request_id="run-req-2", run_name="a") == first
    listed = shared_tracker.ListRuns(pb.ListRunsRequest(parent=other_experiment.name))
    assert list(listed.runs) == []


# ------------------------------------------------------------------ status lifecycle


def test_running_to_finished_sets_end_time_and_is_final(shared_tracker: TrackerStub) -> None:
    run = new_run(shared_tracker, new_experiment(shared_tracker))
    finished = update_run(shared_tracker, run.name, status=FINISHED)
    assert finished.status == FINISHED
    assert finished.HasField("end_time")
    assert finished.end_time.ToMilliseconds() >= finished.start_time.ToMilliseconds()
    assert get_run(shared_tracker, run.name).end_time == finished.end_time

    # The same status again is fine and keeps the end time.
    again = update_run(shared_tracker, run.name, "status", status=FINISHED)
    assert again.status == FINISHED
    assert again.end_time == finished.end_time

    for target in (RUNNING, QUEUED, FAILED, KILLED):
        error = expect_error(
            grpc.StatusCode.FAILED_PRECONDITION, update_run, shared_tracker, run.name, status=target
        )
        assert "FINISHED" in error.details()
        info = error_info(error)
        assert info.reason == "INVALID_STATUS_TRANSITION"
        assert info.metadata["from"] == "FINISHED"
        assert info.metadata["to"] == run_pb2.RunStatus.Name(target).removeprefix("RUN_STATUS_")
    assert get_run(shared_tracker, run.name).status == FINISHED


def test_queued_to_running_to_killed(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    run = new_run(shared_tracker, experiment, status=QUEUED)
    assert run.status == QUEUED
    running = update_run(shared_tracker, run.name, status=RUNNING)
    assert running.status == RUNNING
    assert not running.HasField("end_time")
    assert update_run(shared_tracker, run.name, status=RUNNING).status == RUNNING
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, update_run, shared_tracker, run.name, status=QUEUED
    )
    killed = update_run(shared_tracker, run.name, status=KILLED)
    assert killed.status == KILLED
    assert killed.HasField("end_time")


def test_queued_cannot_finish_without_running(shared_tracker: TrackerStub) -> None:
    run = new_run(shared_tracker, new_experiment(shared_tracker), status=QUEUED)
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION, update_run, shared_tracker, run.name, status=FINISHED
    )
    assert error_info(error).metadata == {
        "from": "QUEUED",
        "to": "FINISHED",
        "request_id": error_info(error).metadata["request_id"],
    }
    assert update_run(shared_tracker, run.name, status=FAILED).status == FAILED


def test_given_end_time_is_kept(shared_tracker: TrackerStub) -> None:
    run = new_run(shared_tracker, new_experiment(shared_tracker), start_time=timestamp(JAN_2024_MS))
    finished = update_run(
        shared_tracker, run.name, status=FINISHED, end_time=timestamp(JAN_2024_MS + 5_000)
    )
    assert finished.end_time.ToMilliseconds() == JAN_2024_MS + 5_000


def test_end_time_before_start_time_is_invalid_argument(shared_tracker: TrackerStub) -> None:
    run = new_run(shared_tracker, new_experiment(shared_tracker), start_time=timestamp(JAN_2024_MS))
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        update_run,
        shared_tracker,
        run.name,
        status=FINISHED,
        end_time=timestamp(JAN_2024_MS - 1),
    )
    assert "end_time" in error.details()
    assert error_info(error).metadata["field"] == "run.end_time"
    unchanged = get_run(shared_tracker, run.name)
    assert unchanged.status == RUNNING
    assert not unchanged.HasField("end_time")

    finished = update_run(
        shared_tracker, run.name, status=FINISHED, end_time=timestamp(JAN_2024_MS + 10)
    )
    # Moving the start after the recorded end is the same mistake.
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        update_run,
        shared_tracker,
        run.name,
        "start_time",
        start_time=timestamp(JAN_2024_MS + 11),
    )
    assert get_run(shared_tracker, run.name).start_time == finished.start_time


def test_update_note_and_run_name(shared_tracker: TrackerStub) -> None:
    run = new_run(shared_tracker, new_experiment(shared_tracker), run_name="before")
    noted = update_run(shared_tracker, run.name, note="PUBLISH: best model")
    assert noted.note == "PUBLISH: best model"
    assert noted.run_name == "before"
    renamed = update_run(shared_tracker, run.name, "run_name", run_name="after", note="ignored")
    assert renamed.run_name == "after"
    assert renamed.note == "PUBLISH: best model"
    fetched = get_run(shared_tracker, run.name)
    assert (fetched.run_name, fetched.note) == ("after", "PUBLISH: best model")
    assert fetched.update_time.ToMilliseconds() >= run.update_time.ToMilliseconds()
    # An explicit mask can clear the note.
    assert update_run(shared_tracker, run.name, "note").note == ""
    # The wildcard name works for updates too.
    wildcard = f"experiments/-/runs/{run.run_id}"
    assert update_run(shared_tracker, wildcard, note="BEST").note == "BEST"
    assert get_run(shared_tracker, run.name).note == "BEST"


def test_update_run_rejects_bad_masks_and_empty_updates(shared_tracker: TrackerStub) -> None:
    run = new_run(shared_tracker, new_experiment(shared_tracker))
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        update_run,
        shared_tracker,
        run.name,
        "note",
        "version",
        note="x",
    )
    assert "version" in error.details()
    assert error_info(error).metadata["unknown"] == "version"
    error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, update_run, shared_tracker, run.name)
    assert error_info(error).metadata["field"] == "update_mask"
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, update_run, shared_tracker, run.name, "run_name")
    for status in (0, 99):
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            update_run,
            shared_tracker,
            run.name,
            "status",
            status=status,
        )
        assert error_info(error).metadata["field"] == "run.status"
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        update_run,
        shared_tracker,
        run.name,
        "end_time",
        end_time=timestamp_pb2.Timestamp(seconds=-(10**17)),
    )
    assert "not a valid timestamp" in error.details()
    assert error_info(error).metadata["field"] == "run.end_time"
    assert get_run(shared_tracker, run.name).note == ""


# ------------------------------------------------------------------ delete and restore


def test_delete_and_restore_run(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    run, other = new_run(shared_tracker, experiment), new_run(shared_tracker, experiment)
    shared_tracker.DeleteRun(pb.DeleteRunRequest(name=run.name))

    deleted = get_run(shared_tracker, run.name)
    assert deleted.lifecycle_state == DELETED
    assert deleted.HasField("delete_time")
    listed = shared_tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name))
    assert [r.run_id for r in listed.runs] == [other.run_id]
    only_deleted = shared_tracker.ListRuns(
        pb.ListRunsRequest(
            parent=experiment.name, lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY
        )
    )
    assert [r.run_id for r in only_deleted.runs] == [run.run_id]
    experiment_now = shared_tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
    assert experiment_now.run_count == 1

    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        shared_tracker.DeleteRun,
        pb.DeleteRunRequest(name=run.name),
    )
    assert "already deleted" in error.details()

    restored = shared_tracker.RestoreRun(pb.RestoreRunRequest(name=run.name))
    assert restored.lifecycle_state == ACTIVE
    assert not restored.HasField("delete_time")
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        shared_tracker.RestoreRun,
        pb.RestoreRunRequest(name=run.name),
    )
    assert error_info(error).reason == "RUN_NOT_DELETED"
    listed = shared_tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name))
    assert {r.run_id for r in listed.runs} == {run.run_id, other.run_id}
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        shared_tracker.RestoreRun,
        pb.RestoreRunRequest(name="experiments/-/runs/unknown"),
    )


def test_a_deleted_run_accepts_no_writes(shared_tracker: TrackerStub) -> None:
    run = new_run(shared_tracker, new_experiment(shared_tracker))
    log_params(shared_tracker, run, kept="1")
    shared_tracker.SetRunTags(pb.SetRunTagsRequest(run=run.name, tags={"t": "1"}))
    shared_tracker.DeleteRun(pb.DeleteRunRequest(name=run.name))

    writes = [
        lambda: log_params(shared_tracker, run, lr="0.1"),
        lambda: log_metrics(shared_tracker, run, [metric("loss", 1.0)], batch_id="b"),
        lambda: shared_tracker.SetRunTags(pb.SetRunTagsRequest(run=run.name, tags={"t": "2"})),
        lambda: shared_tracker.DeleteRunTag(pb.DeleteRunTagRequest(run=run.name, key="t")),
        lambda: update_run(shared_tracker, run.name, note="x"),
        lambda: update_run(shared_tracker, run.name, status=FINISHED),
        lambda: upload(shared_tracker, run.name, "model.bin", b"weights"),
    ]
    for write in writes:
        error = expect_error(grpc.StatusCode.FAILED_PRECONDITION, write)
        assert error_info(error).reason == "RUN_DELETED"
        assert "deleted" in error.details()
    # A stream of metrics is refused the same way.
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        shared_tracker.StreamMetrics,
        iter([pb.StreamMetricsRequest(run=run.name, metrics=[metric("loss", 1.0)])]),
    )
    assert error_info(error).reason == "RUN_DELETED"

    restored = shared_tracker.RestoreRun(pb.RestoreRunRequest(name=run.name))
    assert dict(restored.params) == {"kept": "1"}
    assert dict(restored.tags) == {"t": "1"}
    assert not restored.metrics
    assert not restored.artifacts
    assert restored.status == RUNNING
    assert restored.note == ""


def test_runs_of_a_deleted_experiment_cannot_be_restored_alone(
    shared_tracker: TrackerStub,
) -> None:
    experiment = new_experiment(shared_tracker)
    run = new_run(shared_tracker, experiment)
    shared_tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    assert get_run(shared_tracker, run.name).lifecycle_state == DELETED
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        shared_tracker.RestoreRun,
        pb.RestoreRunRequest(name=run.name),
    )
    assert experiment.display_name in error.details()
    assert error_info(error).reason == "EXPERIMENT_DELETED"
    assert get_run(shared_tracker, run.name).lifecycle_state == DELETED
    # Deleting it on its own is refused too: it is already deleted (with its experiment).
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        shared_tracker.DeleteRun,
        pb.DeleteRunRequest(name=run.name),
    )
    shared_tracker.RestoreExperiment(pb.RestoreExperimentRequest(name=experiment.name))
    assert get_run(shared_tracker, run.name).lifecycle_state == ACTIVE


def test_list_runs_of_an_unknown_experiment_is_not_found(shared_tracker: TrackerStub) -> None:
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        shared_tracker.ListRuns,
        pb.ListRunsRequest(parent="experiments/none"),
    )
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.ListRuns,
        pb.ListRunsRequest(parent="experiment/none"),
    )
    assert error_info(error).metadata["field"] == "parent"


def test_views_of_list_runs(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    run = new_run(
        shared_tracker, experiment, environment=environment_pb2.Environment(hostname="box")
    )
    log_params(shared_tracker, run, p="1")
    log_metrics(shared_tracker, run, [metric("m", 2.0, step=1)])
    upload(shared_tracker, run.name, "a.txt", b"a")

    def listed(view: int) -> run_pb2.Run:
        response = shared_tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name, view=view))
        assert len(response.runs) == 1
        return response.runs[0]

    standard = listed(0)  # STANDARD by default
    assert dict(standard.params) == {"p": "1"}
    assert [(m.key, m.value, m.step) for m in standard.metrics] == [("m", 2.0, 1)]
    assert not standard.artifacts
    assert not standard.HasField("environment")
    basic = listed(run_pb2.RUN_VIEW_BASIC)
    assert not basic.params and not basic.metrics
    full = listed(run_pb2.RUN_VIEW_FULL)
    assert [a.path for a in full.artifacts] == ["a.txt"]
    assert full.environment.hostname == "box"

    for call in (
        lambda: shared_tracker.ListRuns(pb.ListRunsRequest(parent=experiment.name, view=9)),
        lambda: shared_tracker.SearchRuns(pb.SearchRunsRequest(view=9)),
        lambda: get_run(shared_tracker, run.name, view=9),
    ):
        error = expect_error(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert error_info(error).metadata["field"] == "view"


# ------------------------------------------------------------------ lineage and versions


def test_versions_count_per_dataset_and_model_type(shared_tracker: TrackerStub) -> None:
    experiment = new_experiment(shared_tracker)
    other_experiment = new_experiment(shared_tracker)

    def version(dataset_id: str = "", model_type: str = "", where: object = experiment) -> int:
        return new_run(
            shared_tracker,
            where,  # type: ignore[arg-type]
            dataset_id=dataset_id,
            model_type=model_type,
        ).version

    assert version("vds-1", "ranking") == 1
    assert version("vds-1", "ranking") == 2
    assert version("vds-1", "retrieval") == 1
    assert version("vds-2", "ranking") == 1
    # Versions follow the lineage, not the experiment.
    assert version("vds-1", "ranking", other_experiment) == 3
    assert version("vds-1") == 1
    assert version(model_type="vds-only-type") == 1
    assert version() == 0
    assert version() == 0
    assert version("vds-1", "ranking") == 4
    # Version and lineage are kept and searchable.
    found = shared_tracker.SearchRuns(
        pb.SearchRunsRequest(
            experiment_ids=[experiment.experiment_id, other_experiment.experiment_id],
            filter="dataset_id = 'vds-1' AND model_type = 'ranking'",
            order_by="version",
        )
    )
    assert [r.version for r in found.runs] == [1, 2, 3, 4]
    assert all(r.lineage.dataset_id == "vds-1" for r in found.runs)


def test_concurrent_creations_get_distinct_gap_free_versions(
    tracker_server: ServerThread,
) -> None:
    """20 clients, each on its own channel, create runs on one (dataset, model_type) at once."""
    workers = 20
    with grpc.insecure_channel(tracker_server.address()) as setup_channel:
        setup = tracker_service_pb2_grpc.TrackerServiceStub(setup_channel)
        experiment = new_experiment(setup, "race")
        # Warm-up: a different pair, so the race below also covers the counter's first row.
        assert new_run(setup, experiment, dataset_id="other", model_type="x").version == 1

    barrier = threading.Barrier(workers)

    def create(index: int) -> int:
        with grpc.insecure_channel(tracker_server.address()) as channel:
            stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            barrier.wait(timeout=30)
            run = new_run(
                stub,
                experiment,
                dataset_id="race-ds",
                model_type="ranking",
                run_name=f"racer-{index}",
            )
            return int(run.version)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        versions = list(pool.map(create, range(workers)))

    assert sorted(versions) == list(range(1, workers + 1))
    with grpc.insecure_channel(tracker_server.address()) as channel:
        stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
        stored = stub.SearchRuns(
            pb.SearchRunsRequest(filter="dataset_id = 'race-ds'", page_size=100)
        )
        assert sorted(r.version for r in stored.runs) == list(range(1, workers + 1))
        assert new_run(stub, experiment, dataset_id="race-ds", model_type="ranking").version == 21


def test_concurrent_retries_with_one_request_id_create_one_run(
    tracker_server: ServerThread,
) -> None:
    """A client that retries while its first call is still running gets that call's run."""
    workers = 8
    with grpc.insecure_channel(tracker_server.address()) as channel:
        experiment = new_experiment(tracker_service_pb2_grpc.TrackerServiceStub(channel))
    barrier = threading.Barrier(workers)

    def create(_: int) -> run_pb2.Run:
        with grpc.insecure_channel(tracker_server.address()) as channel:
            stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            barrier.wait(timeout=30)
            return new_run(
                stub, experiment, request_id="same-call", dataset_id="ds-r", model_type="m"
            )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = list(pool.map(create, range(workers)))
    assert len({r.run_id for r in runs}) == 1
    assert {r.version for r in runs} == {1}
    with grpc.insecure_channel(tracker_server.address()) as channel:
        stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
        listed = stub.ListRuns(pb.ListRunsRequest(parent=experiment.name))
        assert [r.run_id for r in listed.runs] == [runs[0].run_id]
        # No version number was used up by the retries.
        assert new_run(stub, experiment, dataset_id="ds-r", model_type="m").version == 2


def test_a_huge_malformed_name_is_invalid_argument_not_a_metadata_overflow(
    shared_tracker: TrackerStub,
) -> None:
    huge = "experiments/" + "x" * 100_000
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.GetRun,
        pb.GetRunRequest(name=huge + "/runs/y"),
    )
    assert "100019 characters" in error.details()
    assert len(error.details()) < 1_000


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("git_commit", 256),
        ("git_branch", 256),
        ("python_version", 256),
        ("hostname", 256),
        ("platform", 256),
        ("user", 256),
        ("command", 65_536),
        ("git_remote", 65_536),
        ("device_info", 65_536),
        ("git_diff", 1_000_000),
        ("pip_freeze", 1_000_000),
    ],
)
def test_environment_fields_up_to_their_limit_are_stored_beyond_it_refused(
    shared_tracker: TrackerStub, field: str, limit: int
) -> None:
    experiment = new_experiment(shared_tracker)
    at_limit = new_run(
        shared_tracker, experiment, environment=environment_pb2.Environment(**{field: "é" * limit})
    )
    fetched = shared_tracker.GetRun(pb.GetRunRequest(name=at_limit.name))
    assert getattr(fetched.environment, field) == "é" * limit
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        new_run,
        shared_tracker,
        experiment,
        environment=environment_pb2.Environment(**{field: "x" * (limit + 1)}),
    )
    assert error_info(error).metadata["field"] == f"run.environment.{field}"
