"""The SDK refuses what the tracker would refuse before it queues anything, its background
sender survives any failure, and numpy values are logged as the numbers they are.

Against a real tracker on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import cairn
from cairn.tracker.v1 import metric_pb2, tracker_service_pb2, tracker_service_pb2_grpc
from cairn.validation import (
    MAX_ENTRIES_PER_CALL,
    MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
)

from cairn_testing import ServerThread

BAD_KEYS = ["acc ", " acc", "acc\n", "a\tb", "", "k" * (MAX_KEY_LENGTH + 1), "nul\x00"]
GOOD_KEYS = ["a b", "val/loss", "ü-accuracy", "k" * MAX_KEY_LENGTH, "x.y:z"]


@pytest.fixture
def client(tracker_server: ServerThread) -> Iterator[cairn.Tracker]:
    with cairn.Tracker(
        tracker_server.address(), flush_interval=0.2, capture_environment=False
    ) as tracker:
        yield tracker


def _refused_locally(error: cairn.CairnError) -> bool:
    """An error the SDK raised itself carries no gRPC status: nothing was sent."""
    return error.code is None


def test_a_bad_metric_key_raises_at_once_and_every_other_point_is_stored(
    client: cairn.Tracker,
) -> None:
    run = client.start_run("robustness")
    for step in range(50):
        client.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    with pytest.raises(cairn.InvalidArgumentError) as info:
        client.log_metrics({"acc ": 0.5}, step=50)
    assert _refused_locally(info.value)
    assert info.value.reason == "INVALID_KEY"
    assert "'acc '" in info.value.message and "surrounding whitespace" in info.value.message
    # A call with one bad key queues none of its points, not even the good ones.
    with pytest.raises(cairn.InvalidArgumentError):
        client.log_metrics({"loss": 123.0, " acc": 0.5}, step=50)
    with pytest.raises(cairn.InvalidArgumentError):
        client.log_metric("acc\n", 0.5, step=50)
    for step in range(51, 60):
        client.log_metrics({"loss": 0.01}, step=step)

    client.flush(timeout=30)  # nothing was refused: no batch was poisoned

    history = client.get_metric_history(run.run_id, "loss")
    assert [p.step for p in history] == [*range(50), *range(51, 60)]
    assert 123.0 not in {p.value for p in history}
    assert set(client.get_run(run.run_id).metrics) == {"loss"}


def test_sdk_and_tracker_agree_on_every_key(
    client: cairn.Tracker, tracker: tracker_service_pb2_grpc.TrackerServiceStub
) -> None:
    run = client.start_run("robustness")
    name = f"experiments/-/runs/{run.run_id}"
    for key in BAD_KEYS:
        with pytest.raises(cairn.InvalidArgumentError) as info:
            client.log_metric(key, 1.0)
        assert _refused_locally(info.value), key
        for refuse in (
            lambda k: client.log_params({k: 1}),
            lambda k: client.set_tags({k: "x"}),
            lambda k: client.delete_tag(k),
        ):
            with pytest.raises(cairn.InvalidArgumentError) as info:
                refuse(key)
            assert _refused_locally(info.value), key
        # ...and the tracker refuses the same key when it is sent anyway.
        with pytest.raises(grpc.RpcError) as rpc:
            tracker.LogMetrics(
                tracker_service_pb2.LogMetricsRequest(
                    run=name, metrics=[metric_pb2.Metric(key=key, value=1.0)]
                )
            )
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, key

    for step, key in enumerate(GOOD_KEYS):
        client.log_metric(key, float(step), step=step)
    client.log_params({key: "v" for key in GOOD_KEYS})
    client.set_tags({key: "t" for key in GOOD_KEYS})
    client.flush(timeout=30)
    stored = client.get_run(run.run_id)
    assert set(stored.metrics) == set(GOOD_KEYS)
    assert set(stored.params) == set(GOOD_KEYS)
    assert set(GOOD_KEYS) <= set(stored.tags)


def test_params_and_tags_over_a_limit_are_refused_before_sending(client: cairn.Tracker) -> None:
    run = client.start_run("robustness")
    client.log_params({"kept": 1})
    refusals = [
        (lambda: client.log_params({"ok": 1, "big": "p" * (MAX_PARAM_VALUE_LENGTH + 1)}), "big"),
        (lambda: client.set_tags({"ok": 1, "big": "t" * (MAX_TAG_VALUE_LENGTH + 1)}), "big"),
        (lambda: client.log_params({f"p{i}": i for i in range(MAX_ENTRIES_PER_CALL + 1)}), ""),
        (lambda: client.log_params({"ok": 1, "bad ": 2}), "bad "),
    ]
    for call, key in refusals:
        with pytest.raises(cairn.InvalidArgumentError) as info:
            call()
        assert _refused_locally(info.value)
        assert key in info.value.message
    assert info.value.reason == "INVALID_KEY"  # the last one
    # At the limit is fine, and nothing of the refused calls was stored.
    client.log_params({"at_limit": "p" * MAX_PARAM_VALUE_LENGTH})
    client.set_tags({"at_limit": "t" * MAX_TAG_VALUE_LENGTH})
    stored = client.get_run(run.run_id)
    assert set(stored.params) == {"kept", "at_limit"}
    assert "ok" not in stored.tags and "big" not in stored.tags
    with pytest.raises(cairn.InvalidArgumentError) as started:
        client.start_run("robustness", tags={"bad\n": "x"})
    assert _refused_locally(started.value)


def test_numpy_params_are_numbers(client: cairn.Tracker) -> None:
    deep = client.start_run(
        "numpy-params", run_name="deep", tags={"seed": np.int32(7), "frac": np.float32(0.1)}
    )
    client.log_params(
        {
            "max_depth": np.int64(8),
            "learning_rate": np.float32(0.5),
            "early_stopping": np.bool_(True),
            "layers": [np.int64(64), np.int64(32)],
        }
    )
    client.end_run()
    client.start_run("numpy-params", run_name="shallow")
    client.log_params({"max_depth": np.int64(3), "learning_rate": np.float64(0.25)})
    client.end_run()

    stored = client.get_run(deep.run_id)
    assert stored.params == {
        "max_depth": "8",
        "learning_rate": "0.5",
        "early_stopping": "True",
        "layers": "[64, 32]",
    }
    assert stored.tags == {"seed": "7", "frac": "0.1"}
    found = client.search_runs("numpy-params", filter_string="params.max_depth > 5")
    assert [r.run_name for r in found] == ["deep"]
    by_rate = client.search_runs(
        "numpy-params", filter_string="params.learning_rate < 0.3 AND params.max_depth <= 3"
    )
    assert [r.run_name for r in by_rate] == ["shallow"]


def test_a_closed_channel_makes_flush_raise_instead_of_hanging(client: cairn.Tracker) -> None:
    run = client.start_run("robustness")
    client.log_metrics({"loss": 1.0}, step=0)
    client.flush(timeout=30)

    client._channel.close()
    client.log_metrics({"loss": 0.5}, step=1)
    began = time.monotonic()
    with pytest.raises(cairn.CairnError) as info:
        client.flush(timeout=10)
    assert time.monotonic() - began < 5
    assert not isinstance(info.value, TimeoutError)
    assert "could not be sent" in info.value.message
    assert "closed channel" in info.value.message
    # The sender survived: the next points fail promptly too, and the error is reported once.
    client.log_metrics({"loss": 0.25}, step=2)
    with pytest.raises(cairn.CairnError):
        client.flush(timeout=10)
    client.flush(timeout=10)
    assert client._sender.pending == 0

    with cairn.Tracker(client.target, capture_environment=False) as fresh:
        assert [p.step for p in fresh.get_metric_history(run.run_id, "loss")] == [0]
