"""PurgeDeleted through the real TrackerService: rows go, artifact storage is freed, and only
what was deleted long enough ago goes, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from sqlalchemy import text

from cairn.tracker.v1 import lifecycle_pb2, run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.common.db import Database
from services.common.settings import Settings
from services.common.timeutil import now_ms

from cairn_testing import (
    MiB,
    TrackerStub,
    download,
    error_info,
    expect_error,
    files_under,
    log_metrics,
    log_params,
    metric,
    new_experiment,
    new_run,
    upload,
)

ALL = lifecycle_pb2.LIFECYCLE_FILTER_ALL


def purge(
    tracker: TrackerStub,
    older_than_s: float = 0,
    experiment_ids: tuple[str, ...] = (),
    dry_run: bool = False,
) -> pb.PurgeDeletedResponse:
    older_than = duration_pb2.Duration()
    older_than.FromNanoseconds(int(older_than_s * 1e9))
    return tracker.PurgeDeleted(
        pb.PurgeDeletedRequest(
            older_than=older_than, experiment_ids=experiment_ids, dry_run=dry_run
        )
    )


def run_dir(settings: Settings, run: run_pb2.Run) -> Path:
    return (
        Path(settings.resolved_artifact_root())
        / "experiments"
        / run.experiment_id
        / "runs"
        / run.run_id
    )


def all_run_ids(tracker: TrackerStub) -> set[str]:
    response = tracker.SearchRuns(pb.SearchRunsRequest(lifecycle_filter=ALL, page_size=1000))
    return {r.run_id for r in response.runs}


def test_purging_a_deleted_run_removes_rows_and_frees_storage(
    tracker: TrackerStub, settings: Settings
) -> None:
    experiment = new_experiment(tracker)
    doomed, kept = new_run(tracker, experiment), new_run(tracker, experiment)
    model = os.urandom(2 * MiB + 11)
    plot = os.urandom(1000)
    upload(tracker, doomed.name, "model.bin", model)
    upload(tracker, doomed.name, "plots/loss.png", plot)
    upload(tracker, doomed.name, "copy-of-model.bin", model)  # content-addressed: no new bytes
    log_params(tracker, doomed, lr="0.1")
    log_metrics(tracker, doomed, [metric("loss", 1.0, step=s) for s in range(100)], "b1")
    tracker.SetRunTags(pb.SetRunTagsRequest(run=doomed.name, tags={"t": "1"}))
    upload(tracker, kept.name, "model.bin", model)
    kept_files = files_under(run_dir(settings, kept))
    assert sum(files_under(run_dir(settings, doomed)).values()) == len(model) + len(plot)

    tracker.DeleteRun(pb.DeleteRunRequest(name=doomed.name))
    response = purge(tracker)

    assert response.purged_run_count == 1
    assert list(response.purged_run_ids) == [doomed.run_id]
    assert response.purged_experiment_count == 0
    assert response.freed_bytes == len(model) + len(plot)
    error = expect_error(
        grpc.StatusCode.NOT_FOUND, tracker.GetRun, pb.GetRunRequest(name=doomed.name)
    )
    assert error_info(error).reason == "RUN_NOT_FOUND"
    expect_error(
        grpc.StatusCode.NOT_FOUND, log_metrics, tracker, doomed, [metric("loss", 1.0)], "b1"
    )
    assert not run_dir(settings, doomed).exists()
    assert all_run_ids(tracker) == {kept.run_id}
    # Nothing else was touched.
    assert files_under(run_dir(settings, kept)) == kept_files
    assert download(tracker, kept.name, "model.bin")[1] == model
    # A second purge finds nothing.
    again = purge(tracker)
    assert (again.purged_run_count, again.freed_bytes) == (0, 0)


def test_overwritten_content_is_freed_too(tracker: TrackerStub, settings: Settings) -> None:
    run = new_run(tracker, new_experiment(tracker))
    upload(tracker, run.name, "model.bin", b"a" * 3000)
    upload(tracker, run.name, "model.bin", b"b" * 5000, overwrite=True)
    tracker.DeleteRun(pb.DeleteRunRequest(name=run.name))
    assert purge(tracker).freed_bytes == 8000
    assert not run_dir(settings, run).exists()


def test_dry_run_changes_nothing(tracker: TrackerStub, settings: Settings) -> None:
    experiment = new_experiment(tracker)
    run = new_run(tracker, experiment)
    upload(tracker, run.name, "data.csv", b"x" * 12345)
    tracker.DeleteRun(pb.DeleteRunRequest(name=run.name))
    gone = new_experiment(tracker)
    new_run(tracker, gone)
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=gone.name))
    files = files_under(Path(settings.resolved_artifact_root()))

    report = purge(tracker, dry_run=True)
    assert report.purged_run_count == 2
    assert report.purged_experiment_count == 1
    assert report.freed_bytes == 12345
    assert run.run_id in report.purged_run_ids

    assert files_under(Path(settings.resolved_artifact_root())) == files
    assert tracker.GetRun(pb.GetRunRequest(name=run.name)).lifecycle_state == (
        lifecycle_pb2.LIFECYCLE_STATE_DELETED
    )
    assert tracker.GetExperiment(pb.GetExperimentRequest(name=gone.name)).display_name
    restored = tracker.RestoreRun(pb.RestoreRunRequest(name=run.name))
    assert [a.path for a in restored.artifacts] == ["data.csv"]
    assert download(tracker, run.name, "data.csv")[1] == b"x" * 12345


def test_recently_deleted_runs_are_kept(tracker: TrackerStub, settings: Settings) -> None:
    experiment = new_experiment(tracker)
    old, recent = new_run(tracker, experiment), new_run(tracker, experiment)
    upload(tracker, old.name, "a.bin", b"o" * 100)
    upload(tracker, recent.name, "a.bin", b"r" * 200)
    tracker.DeleteRun(pb.DeleteRunRequest(name=old.name))
    tracker.DeleteRun(pb.DeleteRunRequest(name=recent.name))
    assert purge(tracker, older_than_s=3600).purged_run_count == 0
    # Backdate the old deletion in the database (two hours): no wall-clock race with a
    # loaded machine, which a sleep between the deletes had.
    database = Database(settings.database_url_for("tracker"))
    try:
        with database.write() as session:
            session.execute(
                text("UPDATE runs SET delete_time = :t WHERE run_id = :id"),
                {"t": now_ms() - 2 * 3600 * 1000, "id": old.run_id},
            )
    finally:
        database.dispose()

    response = purge(tracker, older_than_s=3600)
    assert list(response.purged_run_ids) == [old.run_id]
    assert response.freed_bytes == 100
    assert not run_dir(settings, old).exists()
    assert files_under(run_dir(settings, recent)) != {}
    recent_now = tracker.GetRun(pb.GetRunRequest(name=recent.name))
    assert recent_now.lifecycle_state == lifecycle_pb2.LIFECYCLE_STATE_DELETED
    assert list(purge(tracker).purged_run_ids) == [recent.run_id]


def test_deleted_experiments_are_purged_with_all_their_runs(
    tracker: TrackerStub, settings: Settings
) -> None:
    experiment = new_experiment(tracker, "to-purge", tags={"a": "b"})
    runs = [new_run(tracker, experiment) for _ in range(3)]
    tracker.DeleteRun(pb.DeleteRunRequest(name=runs[0].name))  # deleted on its own first
    for index, run in enumerate(runs[1:]):
        upload(tracker, run.name, "m.bin", bytes([index]) * 1000)
        log_params(tracker, run, p=str(index))
    survivor_experiment = new_experiment(tracker, "survivor")
    survivor = new_run(tracker, survivor_experiment)
    upload(tracker, survivor.name, "m.bin", b"s" * 10)
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))

    response = purge(tracker)
    assert response.purged_experiment_count == 1
    assert response.purged_run_count == 3
    assert set(response.purged_run_ids) == {r.run_id for r in runs}
    assert response.freed_bytes == 2000
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        tracker.GetExperiment,
        pb.GetExperimentRequest(name=experiment.name),
    )
    for run in runs:
        expect_error(grpc.StatusCode.NOT_FOUND, tracker.GetRun, pb.GetRunRequest(name=run.name))
    assert not (
        Path(settings.resolved_artifact_root()) / "experiments" / experiment.experiment_id
    ).exists()
    # The display name is free again.
    assert new_experiment(tracker, "to-purge").experiment_id != experiment.experiment_id
    # The active experiment and its run are untouched.
    assert all_run_ids(tracker) == {survivor.run_id}
    assert download(tracker, survivor.name, "m.bin")[1] == b"s" * 10


def test_active_and_restored_runs_are_never_purged(
    tracker: TrackerStub, settings: Settings
) -> None:
    experiment = new_experiment(tracker)
    active = new_run(tracker, experiment)
    restored = new_run(tracker, experiment)
    finished = new_run(tracker, experiment)
    for run in (active, restored, finished):
        upload(tracker, run.name, "m.bin", run.run_id.encode())
    tracker.UpdateRun(
        pb.UpdateRunRequest(run=run_pb2.Run(name=finished.name, status=run_pb2.RUN_STATUS_FINISHED))
    )
    tracker.DeleteRun(pb.DeleteRunRequest(name=restored.name))
    tracker.RestoreRun(pb.RestoreRunRequest(name=restored.name))
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    tracker.RestoreExperiment(pb.RestoreExperimentRequest(name=experiment.name))

    response = purge(tracker)
    assert (response.purged_run_count, response.purged_experiment_count) == (0, 0)
    assert response.freed_bytes == 0
    for run in (active, restored, finished):
        assert download(tracker, run.name, "m.bin")[1] == run.run_id.encode()
    assert all_run_ids(tracker) == {active.run_id, restored.run_id, finished.run_id}


def test_purge_can_be_limited_to_experiments(tracker: TrackerStub) -> None:
    first, second = new_experiment(tracker), new_experiment(tracker)
    run_a, run_b = new_run(tracker, first), new_run(tracker, second)
    for run in (run_a, run_b):
        tracker.DeleteRun(pb.DeleteRunRequest(name=run.name))
    response = purge(tracker, experiment_ids=(second.experiment_id,))
    assert list(response.purged_run_ids) == [run_b.run_id]
    assert tracker.GetRun(pb.GetRunRequest(name=run_a.name)).run_id == run_a.run_id
    assert list(purge(tracker, experiment_ids=("unknown",)).purged_run_ids) == []
    assert list(purge(tracker).purged_run_ids) == [run_a.run_id]


def test_purge_rejects_bad_arguments(tracker: TrackerStub) -> None:
    run = new_run(tracker, new_experiment(tracker))
    tracker.DeleteRun(pb.DeleteRunRequest(name=run.name))
    for older_than in (
        duration_pb2.Duration(seconds=-1),
        duration_pb2.Duration(seconds=10**17),  # beyond what a Duration may hold
    ):
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            tracker.PurgeDeleted,
            pb.PurgeDeletedRequest(older_than=older_than),
        )
        assert error_info(error).metadata["field"] == "older_than"
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        tracker.PurgeDeleted,
        pb.PurgeDeletedRequest(experiment_ids=["a\x00b"]),
    )
    assert error_info(error).metadata["field"] == "experiment_ids"
    assert tracker.GetRun(pb.GetRunRequest(name=run.name)).run_id == run.run_id


def test_content_replaced_by_an_overwrite_is_freed_by_purge(
    tracker: TrackerStub, settings: Settings
) -> None:
    experiment = new_experiment(tracker)
    run = new_run(tracker, experiment)
    first, second, third = os.urandom(5000), os.urandom(7000), os.urandom(300)
    upload(tracker, run.name, "checkpoint.pt", first)
    upload(tracker, run.name, "checkpoint.pt", second, overwrite=True)
    # The same content as the first upload, under another path: still referenced.
    upload(tracker, run.name, "checkpoint.pt", third, overwrite=True)
    upload(tracker, run.name, "best.pt", first)
    assert sorted(files_under(run_dir(settings, run)).values()) == [300, 5000, 7000]

    # Fresh orphans survive a purge with a cut-off; dry_run only reports.
    assert purge(tracker, older_than_s=3600).freed_bytes == 0
    assert purge(tracker, dry_run=True).freed_bytes == 7000
    assert sorted(files_under(run_dir(settings, run)).values()) == [300, 5000, 7000]

    response = purge(tracker)
    assert response.freed_bytes == 7000  # only `second`: `first` is referenced by best.pt
    assert list(response.purged_run_ids) == []
    assert sorted(files_under(run_dir(settings, run)).values()) == [300, 5000]
    assert download(tracker, run.name, "checkpoint.pt")[1] == third
    assert download(tracker, run.name, "best.pt")[1] == first
    assert purge(tracker).freed_bytes == 0  # nothing left to sweep


def test_an_orphan_uploaded_again_is_kept(tracker: TrackerStub, settings: Settings) -> None:
    experiment = new_experiment(tracker)
    run = new_run(tracker, experiment)
    old, new = os.urandom(4000), os.urandom(10)
    upload(tracker, run.name, "model.bin", old)
    upload(tracker, run.name, "model.bin", new, overwrite=True)
    upload(tracker, run.name, "model.bin", old, overwrite=True)  # back to the first content
    assert purge(tracker).freed_bytes == 10
    assert download(tracker, run.name, "model.bin")[1] == old
