"""Concurrent calls that used to corrupt data or fail, through the real TrackerService on
SQLite and PostgreSQL: purge vs restore, CreateRun/RestoreRun vs DeleteExperiment, and
writers upserting the same keys in opposite orders (PostgreSQL deadlocks)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import exc, text

from cairn.tracker.v1 import experiment_pb2, lifecycle_pb2, run_pb2, tracker_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.common.db import Database
from services.common.errors import Aborted
from services.common.settings import Settings

from cairn_testing import (
    PostgresDatabases,
    ServerThread,
    TrackerStub,
    download,
    error_info,
    expect_error,
    files_under,
    log_metrics,
    metric,
    new_experiment,
    new_run,
    upload,
)

ACTIVE = lifecycle_pb2.LIFECYCLE_STATE_ACTIVE
DELETED = lifecycle_pb2.LIFECYCLE_STATE_DELETED
ALL = lifecycle_pb2.LIFECYCLE_FILTER_ALL


def runs_of(tracker: TrackerStub, experiment: experiment_pb2.Experiment) -> list[run_pb2.Run]:
    return list(
        tracker.SearchRuns(
            pb.SearchRunsRequest(
                experiment_ids=[experiment.experiment_id], lifecycle_filter=ALL, page_size=1000
            )
        ).runs
    )


def rpc_code(call: Callable[..., Any], *args: Any) -> grpc.StatusCode:
    """The status code of a call: OK, or the code it failed with."""
    try:
        call(*args)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


# ------------------------------------------------------------------ B1: purge vs restore


def content(run: run_pb2.Run) -> bytes:
    return run.run_id.encode() * 40


def deleted_experiment_with_artifacts(
    tracker: TrackerStub, run_count: int
) -> tuple[experiment_pb2.Experiment, list[run_pb2.Run]]:
    experiment = new_experiment(tracker)

    def make_run(_: int) -> run_pb2.Run:
        run = new_run(tracker, experiment)
        upload(tracker, run.name, "model.bin", content(run))
        return run

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = sorted(pool.map(make_run, range(run_count)), key=lambda r: r.run_id)
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    return experiment, runs


@pytest.mark.parametrize("restore_when", ["first_blob_gone", "at_once", "restore_first"])
def test_a_restore_racing_a_purge_is_refused_or_keeps_everything(
    tracker: TrackerStub, settings: Settings, restore_when: str
) -> None:
    """The purge used to read its plan, delete blobs, then delete rows by id: a restore in
    between returned OK and the purge then destroyed the restored experiment."""
    experiment, runs = deleted_experiment_with_artifacts(tracker, 100)
    experiment_dir = (
        Path(settings.resolved_artifact_root()) / "experiments" / experiment.experiment_id
    )
    # The purge frees runs in run-id order: once the first run's directory is gone, the
    # purge is in the middle of deleting content, the widest window of the old race.
    first_run_dir = experiment_dir / "runs" / runs[0].run_id
    assert first_run_dir.is_dir()

    def restore() -> grpc.RpcError | None:
        try:
            tracker.RestoreExperiment(pb.RestoreExperimentRequest(name=experiment.name))
        except grpc.RpcError as error:
            return error
        return None

    purge = pb.PurgeDeletedRequest(experiment_ids=[experiment.experiment_id])
    with ThreadPoolExecutor(max_workers=2) as pool:
        if restore_when == "restore_first":
            restoring = pool.submit(restore)
            purging = pool.submit(tracker.PurgeDeleted, purge)
        else:
            purging = pool.submit(tracker.PurgeDeleted, purge)
            if restore_when == "first_blob_gone":
                deadline = time.monotonic() + 30
                while first_run_dir.exists() and not purging.done():
                    assert time.monotonic() < deadline
                    time.sleep(0.0005)
            restoring = pool.submit(restore)
        restore_error = restoring.result(timeout=60)
        response = purging.result(timeout=60)  # the purge itself must succeed either way

    if restore_error is None:
        # The restore won: the purge found nothing, and every run is whole.
        assert (response.purged_run_count, response.purged_experiment_count) == (0, 0)
        assert response.freed_bytes == 0
        restored = tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
        assert restored.lifecycle_state == ACTIVE
        assert restored.run_count == len(runs)
        now = runs_of(tracker, experiment)
        assert sorted(r.run_id for r in now) == [r.run_id for r in runs]
        assert all(r.lifecycle_state == ACTIVE for r in now)
        for run in runs:
            assert download(tracker, run.name, "model.bin")[1] == content(run)
    else:
        # The purge won: the restore was refused (or, on a slow machine, came after the purge
        # had finished), and nothing of the experiment is left.
        code = restore_error.code()
        assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND), (
            restore_error.details()
        )
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            assert error_info(restore_error).reason == "EXPERIMENT_PURGING"
            assert "being purged" in (restore_error.details() or "")
        assert response.purged_experiment_count == 1
        assert sorted(response.purged_run_ids) == [r.run_id for r in runs]
        assert response.freed_bytes == sum(len(content(r)) for r in runs)
        expect_error(
            grpc.StatusCode.NOT_FOUND,
            tracker.GetExperiment,
            pb.GetExperimentRequest(name=experiment.name),
        )
        assert runs_of(tracker, experiment) == []
        for run in runs[:: len(runs) // 10]:
            expect_error(grpc.StatusCode.NOT_FOUND, tracker.GetRun, pb.GetRunRequest(name=run.name))
        assert files_under(experiment_dir) == {}
    if restore_when == "first_blob_gone":
        # Deterministic: the restore came after the purge had begun deleting content.
        assert restore_error is not None


def test_purging_rows_look_deleted_and_cannot_be_restored(
    tracker: TrackerStub, settings: Settings
) -> None:
    """What a purge claimed (PURGING, e.g. left by an interrupted purge) reads as DELETED,
    refuses restore and delete, and the next purge finishes it, whatever its age."""
    experiment = new_experiment(tracker)
    runs = [new_run(tracker, experiment) for _ in range(2)]
    upload(tracker, runs[0].name, "a.bin", b"a" * 100)
    lone_experiment = new_experiment(tracker)
    lone = new_run(tracker, lone_experiment)
    upload(tracker, lone.name, "b.bin", b"b" * 50)
    tracker.DeleteRun(pb.DeleteRunRequest(name=lone.name))
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    database = Database(settings.database_url_for("tracker"))
    try:
        with database.write() as session:
            # As an interrupted purge leaves them; the deletion itself is recent.
            session.execute(text("UPDATE runs SET lifecycle_state = 'PURGING'"))
            session.execute(
                text("UPDATE experiments SET lifecycle_state = 'PURGING' WHERE experiment_id = :e"),
                {"e": experiment.experiment_id},
            )
    finally:
        database.dispose()

    got = tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
    assert got.lifecycle_state == DELETED and got.run_count == 0
    assert tracker.GetRun(pb.GetRunRequest(name=lone.name)).lifecycle_state == DELETED
    deleted_only = tracker.ListExperiments(
        pb.ListExperimentsRequest(lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY)
    )
    assert list(deleted_only.experiments) == []
    everything = tracker.ListExperiments(pb.ListExperimentsRequest(lifecycle_filter=ALL))
    assert {e.experiment_id: e.lifecycle_state for e in everything.experiments} == {
        experiment.experiment_id: DELETED,
        lone_experiment.experiment_id: ACTIVE,
    }
    all_runs = tracker.SearchRuns(pb.SearchRunsRequest(lifecycle_filter=ALL)).runs
    assert {r.run_id for r in all_runs} == {lone.run_id, *(r.run_id for r in runs)}
    assert all(r.lifecycle_state == DELETED for r in all_runs)
    none = tracker.SearchRuns(
        pb.SearchRunsRequest(lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_DELETED_ONLY)
    )
    assert list(none.runs) == []

    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        tracker.RestoreExperiment,
        pb.RestoreExperimentRequest(name=experiment.name),
    )
    assert error_info(error).reason == "EXPERIMENT_PURGING"
    error = expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        tracker.RestoreRun,
        pb.RestoreRunRequest(name=lone.name),
    )
    assert error_info(error).reason == "RUN_PURGING"
    for call, request in (
        (tracker.DeleteExperiment, pb.DeleteExperimentRequest(name=experiment.name)),
        (tracker.DeleteRun, pb.DeleteRunRequest(name=lone.name)),
    ):
        expect_error(grpc.StatusCode.FAILED_PRECONDITION, call, request)
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        tracker.CreateRun,
        pb.CreateRunRequest(parent=experiment.name, run=run_pb2.Run()),
    )

    dry = tracker.PurgeDeleted(pb.PurgeDeletedRequest(dry_run=True))
    assert (dry.purged_experiment_count, dry.purged_run_count, dry.freed_bytes) == (1, 3, 150)
    # Claimed rows are purged even under an age limit their deletion does not meet.
    hour = pb.PurgeDeletedRequest(older_than={"seconds": 3600})
    response = tracker.PurgeDeleted(hour)
    assert response.purged_experiment_count == 1
    assert set(response.purged_run_ids) == {lone.run_id, *(r.run_id for r in runs)}
    assert response.freed_bytes == 150
    assert [e.experiment_id for e in everything_now(tracker)] == [lone_experiment.experiment_id]
    assert files_under(Path(settings.resolved_artifact_root())) == {}


def everything_now(tracker: TrackerStub) -> list[experiment_pb2.Experiment]:
    return list(
        tracker.ListExperiments(pb.ListExperimentsRequest(lifecycle_filter=ALL)).experiments
    )


def test_purge_never_takes_an_active_run_of_a_deleted_experiment(
    tracker: TrackerStub, settings: Settings
) -> None:
    """An ACTIVE run inside a DELETED experiment (left by the old CreateRun race) is kept,
    and so is its experiment, which the purge skips instead of failing halfway."""
    experiment = new_experiment(tracker)
    deleted_run, active_run = new_run(tracker, experiment), new_run(tracker, experiment)
    for run in (deleted_run, active_run):
        upload(tracker, run.name, "m.bin", content(run))
    tracker.DeleteExperiment(pb.DeleteExperimentRequest(name=experiment.name))
    database = Database(settings.database_url_for("tracker"))
    try:
        with database.write() as session:
            session.execute(
                text(
                    "UPDATE runs SET lifecycle_state = 'ACTIVE', delete_time = NULL "
                    "WHERE run_id = :r"
                ),
                {"r": active_run.run_id},
            )
    finally:
        database.dispose()

    dry = tracker.PurgeDeleted(pb.PurgeDeletedRequest(dry_run=True))
    assert (dry.purged_experiment_count, list(dry.purged_run_ids)) == (0, [deleted_run.run_id])
    response = tracker.PurgeDeleted(pb.PurgeDeletedRequest())
    assert response.purged_experiment_count == 0
    assert list(response.purged_run_ids) == [deleted_run.run_id]
    got = tracker.GetExperiment(pb.GetExperimentRequest(name=experiment.name))
    assert got.lifecycle_state == DELETED
    assert [r.run_id for r in runs_of(tracker, experiment)] == [active_run.run_id]
    assert download(tracker, active_run.name, "m.bin")[1] == content(active_run)
    expect_error(grpc.StatusCode.NOT_FOUND, tracker.GetRun, pb.GetRunRequest(name=deleted_run.name))


# ------------------------------------------------------------------ B2: create/restore vs delete


def test_runs_created_or_restored_during_delete_experiment_end_up_deleted(
    tracker: TrackerStub,
) -> None:
    """CreateRun and RestoreRun used to read the experiment without a lock: on PostgreSQL a
    run committed just after DeleteExperiment's UPDATE stayed ACTIVE in a deleted one."""
    for _ in range(20):
        race_creates_and_restores_with_delete(tracker, creators=8, restorers=4)


def race_creates_and_restores_with_delete(
    tracker: TrackerStub, creators: int, restorers: int
) -> None:
    experiment = new_experiment(tracker)
    to_restore = [new_run(tracker, experiment) for _ in range(restorers)]
    for run in to_restore:
        tracker.DeleteRun(pb.DeleteRunRequest(name=run.name))
    barrier = threading.Barrier(creators + restorers + 1)
    create = pb.CreateRunRequest(
        parent=experiment.name, run=run_pb2.Run(environment={"git_diff": "x" * 100_000})
    )

    def call(method: Callable[..., Any], request: Any) -> grpc.StatusCode:
        barrier.wait()
        return rpc_code(method, request)

    with ThreadPoolExecutor(max_workers=creators + restorers + 1) as pool:
        futures = [pool.submit(call, tracker.CreateRun, create) for _ in range(creators)]
        futures += [
            pool.submit(call, tracker.RestoreRun, pb.RestoreRunRequest(name=run.name))
            for run in to_restore
        ]
        deleted = pool.submit(
            call, tracker.DeleteExperiment, pb.DeleteExperimentRequest(name=experiment.name)
        )
    assert deleted.result() == grpc.StatusCode.OK
    codes = [f.result() for f in futures]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}, codes
    runs = runs_of(tracker, experiment)
    assert len(runs) == restorers + codes[:creators].count(grpc.StatusCode.OK)
    active = [r.run_id for r in runs if r.lifecycle_state != DELETED]
    assert active == [], f"ACTIVE runs in a deleted experiment: {active}"
    # Every run that was ACTIVE when the experiment was deleted was deleted with it: a restore
    # of the experiment brings back exactly the runs created or restored first.
    restored = tracker.RestoreExperiment(pb.RestoreExperimentRequest(name=experiment.name))
    assert restored.run_count == codes.count(grpc.StatusCode.OK)


# ------------------------------------------------------------------ M1: key order, deadlocks


def test_writers_using_opposite_key_orders_all_succeed(tracker: TrackerStub) -> None:
    """Upserts in batch order deadlocked on PostgreSQL (INTERNAL); they now lock in key
    order. 8 writers, half of them with the keys reversed, on one run: metrics (latest
    values), tags and params."""
    run = new_run(tracker, new_experiment(tracker))
    keys = [f"k{i:02d}" for i in range(30)]
    writers, calls = 8, 12

    def write(writer: int) -> list[grpc.StatusCode]:
        order = keys[::-1] if writer % 2 else keys
        codes = []
        for call in range(calls):
            step = call * writers + writer  # unique per call: the newest point is known
            points = [metric(k, step * 100 + keys.index(k), step=step) for k in order]
            codes.append(rpc_code(log_metrics, tracker, run, points, uuid.uuid4().hex))
            tags = pb.SetRunTagsRequest(run=run.name, tags={k: str(step) for k in order})
            codes.append(rpc_code(tracker.SetRunTags, tags))
            params = {f"{k}-{call}": "same" for k in order}  # every writer logs these
            codes.append(
                rpc_code(tracker.LogParams, pb.LogParamsRequest(run=run.name, params=params))
            )
        return codes

    with ThreadPoolExecutor(max_workers=writers) as pool:
        results = [code for codes in pool.map(write, range(writers)) for code in codes]
    assert [code for code in results if code != grpc.StatusCode.OK] == []

    stored = tracker.GetRun(pb.GetRunRequest(name=run.name))
    last_step = calls * writers - 1
    assert [(m.key, m.step, m.value) for m in stored.metrics] == [
        (k, last_step, last_step * 100 + i) for i, k in enumerate(keys)
    ]
    assert len(stored.params) == len(keys) * calls
    assert set(stored.params.values()) == {"same"}
    assert set(stored.tags) == set(keys)
    history = tracker.ListMetricHistory(
        pb.ListMetricHistoryRequest(run=run.name, metric_key="k07", page_size=1000)
    )
    assert len(history.points) == writers * calls


def test_a_postgresql_deadlock_is_aborted_and_retryable(postgres: PostgresDatabases) -> None:
    """Whatever still deadlocks is ABORTED with a message to retry, never INTERNAL."""
    url = postgres.fresh()
    database = Database(url)
    try:
        with database.write() as session:
            session.execute(text("CREATE TABLE locks (id int PRIMARY KEY, n int)"))
            session.execute(text("INSERT INTO locks VALUES (1, 0), (2, 0)"))
        barrier = threading.Barrier(2)

        def lock_in(order: tuple[int, int]) -> BaseException | None:
            try:
                with database.write() as session:
                    for position, row in enumerate(order):
                        session.execute(
                            text("UPDATE locks SET n = n + 1 WHERE id = :id"), {"id": row}
                        )
                        if position == 0:
                            barrier.wait()
            except (Aborted, exc.DBAPIError) as error:
                return error
            return None

        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(lock_in, [(1, 2), (2, 1)]))
        errors = [e for e in outcomes if e is not None]
        assert len(errors) == 1, outcomes
        error = errors[0]
        assert isinstance(error, Aborted), repr(error)
        assert error.reason == "TRANSACTION_CONFLICT"
        assert error.metadata == {"sqlstate": "40P01"}
        assert "retry" in error.message
    finally:
        database.dispose()
        postgres.drop(url)


def test_serialization_failures_are_aborted_too(postgres: PostgresDatabases) -> None:
    url = postgres.fresh()
    database = Database(url)
    try:
        with pytest.raises(Aborted) as info, database.write() as session:
            session.execute(
                text(
                    "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = "
                    "'serialization_failure'; END $$"
                )
            )
        assert info.value.metadata == {"sqlstate": "40001"}
        # Other database errors are left alone.
        with pytest.raises(exc.ProgrammingError), database.write() as session:
            session.execute(text("SELECT * FROM no_such_table"))
    finally:
        database.dispose()
        postgres.drop(url)


def test_concurrent_tag_replacements_of_one_experiment_all_succeed(
    tracker_server: ServerThread,
) -> None:
    with grpc.insecure_channel(tracker_server.address()) as channel:
        stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)
        experiment = stub.CreateExperiment(
            pb.CreateExperimentRequest(
                experiment=experiment_pb2.Experiment(display_name="tag-race")
            )
        )
    barrier = threading.Barrier(8)

    def replace(index: int) -> None:
        with grpc.insecure_channel(tracker_server.address()) as own:
            own_stub = tracker_service_pb2_grpc.TrackerServiceStub(own)
            barrier.wait()
            own_stub.UpdateExperiment(
                pb.UpdateExperimentRequest(
                    experiment=experiment_pb2.Experiment(
                        name=experiment.name, tags={"writer": str(index), "shared": "x"}
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
                )
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(replace, range(8)))  # any failure re-raises here
    with grpc.insecure_channel(tracker_server.address()) as channel:
        final = tracker_service_pb2_grpc.TrackerServiceStub(channel).GetExperiment(
            pb.GetExperimentRequest(name=experiment.name)
        )
    assert set(final.tags) == {"writer", "shared"}
    assert final.tags["writer"] in {str(i) for i in range(8)}
