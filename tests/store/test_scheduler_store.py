"""The scheduler store's guarantees, on SQLite and PostgreSQL: queued jobs are claimed by
exactly one reconciler even when several race (replicas), the concurrency limit holds
across them, and state moves by compare-and-set so a cancel racing a finish has one winner.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.common.db import Database
from services.common.timeutil import now_ms
from services.scheduler.store.models import (
    DatasetRow,
    FeatureConfigRow,
    JobRow,
    JobTransitionRow,
    ModelConfigRow,
)
from services.scheduler.store.store import SchedulerStore


@pytest.fixture
def store(database_url: str) -> Iterator[SchedulerStore]:
    database = Database(database_url)
    yield SchedulerStore(database)
    database.dispose()


def _seed(store: SchedulerStore, jobs: int) -> list[str]:
    now = now_ms()
    store.create(
        DatasetRow(
            dataset_id="d1",
            display_name="d",
            uri="/x.csv",
            format="CSV",
            user_column="u",
            item_column="i",
            timestamp_column="",
            columns_json="[]",
            row_count=1,
            size_bytes=1,
            create_time=now,
        ),
        "dataset",
        "d",
    )
    store.create(
        FeatureConfigRow(
            feature_config_id="f1",
            display_name="f",
            dataset_id="d1",
            query_features_json="[]",
            candidate_features_json="[]",
            query_tensor_dim=1,
            candidate_tensor_dim=1,
            create_time=now,
        ),
        "feature config",
        "f",
    )
    store.create(
        ModelConfigRow(
            model_config_id="m1",
            display_name="m",
            model_type="RETRIEVAL",
            optimizer="ADAGRAD",
            learning_rate=0.1,
            architecture_json="{}",
            create_time=now,
        ),
        "model config",
        "m",
    )
    ids = []
    for index in range(jobs):
        job_id = f"job{index:03d}"
        store.create_job(
            JobRow(
                job_id=job_id,
                display_name=job_id,
                kind="QUICK_TEST",
                feature_config_id="f1",
                model_config_id="m1",
                dataset_id="d1",
                model_type="RETRIEVAL",
                hardware_tier="SMALL",
                training_json="{}",
                experiment="e",
                state="QUEUED",
                create_time=now + index,
                update_time=now + index,
            ),
            "queued",
        )
        ids.append(job_id)
    return ids


def _race(workers: int, work: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_racing_reconcilers_claim_each_job_exactly_once(database_url: str) -> None:
    replicas = [SchedulerStore(Database(database_url)) for _ in range(4)]
    try:
        ids = _seed(replicas[0], 24)

        def claim_all(index: int) -> list[str]:
            claimed: list[str] = []
            while batch := replicas[index].claim_queued(f"replica-{index}", capacity=1000):
                claimed += [row.job_id for row in batch]
            return claimed

        claims = _race(4, claim_all)
        counts = Counter(job_id for claimed in claims for job_id in claimed)
        assert sorted(counts) == ids
        assert set(counts.values()) == {1}, "a job was claimed twice"
        with replicas[0].db.read() as session:
            submitting = Counter(
                t.job_id for t in session.query(JobTransitionRow).filter_by(state="SUBMITTING")
            )
        assert set(submitting.values()) == {1}
        owners = {row.job_id: row.claimed_by for row in replicas[0].jobs_in(["SUBMITTING"])}
        for index, claimed in enumerate(claims):
            assert all(owners[job_id] == f"replica-{index}" for job_id in claimed)
    finally:
        for replica in replicas:
            replica.db.dispose()


def test_the_concurrency_limit_holds_across_reconcilers(database_url: str) -> None:
    replicas = [SchedulerStore(Database(database_url)) for _ in range(3)]
    try:
        _seed(replicas[0], 10)
        claims = _race(3, lambda i: replicas[i].claim_queued(f"r{i}", capacity=4))
        assert sum(len(c) for c in claims) == 4
        assert replicas[0].claim_queued("late", capacity=4) == []
        assert len(replicas[0].jobs_in(["QUEUED"])) == 6
    finally:
        for replica in replicas:
            replica.db.dispose()


def test_a_cancel_racing_a_finish_has_one_winner(store: SchedulerStore) -> None:
    ids = _seed(store, 6)
    store.claim_queued("me", capacity=10)
    for job_id in ids:
        store.transition(job_id, ["SUBMITTING"], "RUNNING", "started")
        outcomes = _race(
            2,
            lambda i, job_id=job_id: store.transition(
                job_id,
                ["RUNNING"],
                ("CANCELLING", "SUCCEEDED")[i],
                "race",
            ),
        )
        winners = [o for o in outcomes if o is not None]
        assert len(winners) == 1
        assert store.get(JobRow, job_id, "job").state == winners[0].state
        history = [t.state for t in store.history([job_id])[job_id]]
        assert history == ["QUEUED", "SUBMITTING", "RUNNING", winners[0].state]


def test_finished_jobs_only_are_deleted(store: SchedulerStore) -> None:
    from services.common.errors import FailedPrecondition

    (job_id,) = _seed(store, 1)
    with pytest.raises(FailedPrecondition):
        store.delete_job(job_id)
    store.transition(job_id, ["QUEUED"], "CANCELLED", "cancelled")
    store.delete_job(job_id)
    assert store.history([job_id]) == {job_id: []}
