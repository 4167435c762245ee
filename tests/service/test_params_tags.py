"""Params (immutable, all-or-nothing) and tags (mutable) through the real TrackerService, on
SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from cairn.tracker.v1 import run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb

from cairn_testing import (
    TrackerStub,
    error_info,
    expect_error,
    log_params,
    new_experiment,
    new_run,
    shared_tracker,
)

__all__ = ["shared_tracker"]  # a fixture: importing it is what makes pytest see it


@pytest.fixture
def run(shared_tracker: TrackerStub) -> run_pb2.Run:
    return new_run(shared_tracker, new_experiment(shared_tracker))


def params_of(tracker: TrackerStub, run: run_pb2.Run) -> dict[str, str]:
    return dict(tracker.GetRun(pb.GetRunRequest(name=run.name)).params)


def tags_of(tracker: TrackerStub, run: run_pb2.Run) -> dict[str, str]:
    return dict(tracker.GetRun(pb.GetRunRequest(name=run.name)).tags)


# ------------------------------------------------------------------ params


def test_params_are_stored_and_counted(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    assert log_params(shared_tracker, run, lr="0.01", depth="6") == 2
    assert log_params(shared_tracker, run, lr="0.01", depth="6") == 0  # same values: fine
    assert log_params(shared_tracker, run, lr="0.01", layers="3") == 1
    assert log_params(shared_tracker, run) == 0
    assert params_of(shared_tracker, run) == {"lr": "0.01", "depth": "6", "layers": "3"}


def test_changing_a_param_is_already_exists_naming_key_and_values(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    log_params(shared_tracker, run, optimizer="adam")
    error = expect_error(
        grpc.StatusCode.ALREADY_EXISTS, log_params, shared_tracker, run, optimizer="sgd"
    )
    message = error.details()
    assert "optimizer" in message
    assert "adam" in message
    assert "sgd" in message
    assert "immutable" in message
    info = error_info(error)
    assert info.reason == "PARAM_IMMUTABLE"
    assert info.metadata["key"] == "optimizer"
    assert info.metadata["old_value"] == "adam"
    assert info.metadata["new_value"] == "sgd"
    assert params_of(shared_tracker, run) == {"optimizer": "adam"}


def test_a_rejected_call_writes_nothing(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    log_params(shared_tracker, run, seed="1")
    error = expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        log_params,
        shared_tracker,
        run,
        fresh="new",
        seed="2",
        another="x",
    )
    assert error_info(error).metadata["key"] == "seed"
    assert params_of(shared_tracker, run) == {"seed": "1"}
    # The new keys were not half-written: logging them now counts them as new.
    assert log_params(shared_tracker, run, fresh="new", another="x") == 2


def test_several_conflicts_are_all_reported(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    log_params(shared_tracker, run, a="1", b="2")
    error = expect_error(
        grpc.StatusCode.ALREADY_EXISTS, log_params, shared_tracker, run, a="10", b="20"
    )
    info = error_info(error)
    assert info.metadata["keys"] == "a,b"
    assert info.metadata["key"] == "a"
    assert "'b'" in error.details()
    assert "'20'" in error.details()


@pytest.mark.parametrize("length", [8_000, 32_768])
def test_long_param_values_round_trip(
    shared_tracker: TrackerStub, run: run_pb2.Run, length: int
) -> None:
    value = "".join(chr(ord("a") + i % 26) for i in range(length - 2)) + "é€"
    assert len(value) == length
    assert log_params(shared_tracker, run, long=value) == 1
    assert params_of(shared_tracker, run)["long"] == value
    assert log_params(shared_tracker, run, long=value) == 0
    # A conflict on a long value is reported with both values, shortened.
    error = expect_error(
        grpc.StatusCode.ALREADY_EXISTS, log_params, shared_tracker, run, long=value[:-1]
    )
    assert f"({length} characters)" in error.details()
    assert len(error.details()) < 2_000
    assert error_info(error).metadata["old_value"].startswith(value[:1000])


def test_param_value_over_the_limit_is_invalid_argument(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        log_params,
        shared_tracker,
        run,
        ok="1",
        huge="v" * 32_769,
    )
    assert "32768" in error.details()
    info = error_info(error)
    assert info.reason == "VALUE_TOO_LONG"
    assert info.metadata["key"] == "huge"
    assert info.metadata["length"] == "32769"
    assert params_of(shared_tracker, run) == {}


@pytest.mark.parametrize(
    "key",
    ["", "k" * 251, " padded", "tab\there", "new\nline", "nul\x00"],
    ids=["empty", "long", "space", "tab", "newline", "nul"],
)
def test_bad_param_keys_are_invalid_argument(
    shared_tracker: TrackerStub, run: run_pb2.Run, key: str
) -> None:
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.LogParams,
        pb.LogParamsRequest(run=run.name, params={key: "v", "fine": "1"}),
    )
    assert error_info(error).metadata["field"] == "params"
    assert params_of(shared_tracker, run) == {}


def test_longest_param_key_is_accepted(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    key = "k" * 250
    assert log_params(shared_tracker, run, **{key: "v", "with space/and.dots-ok": "1"}) == 2
    assert params_of(shared_tracker, run) == {key: "v", "with space/and.dots-ok": "1"}


@pytest.mark.parametrize(
    "value",
    ["", "  spaced  ", "ünïcødé ✓ 日本", "back\\slash", 'quote\'s "both"', "line\nbreak", "a\x00b"],
    ids=["empty", "spaces", "unicode", "backslash", "quotes", "newline", "nul"],
)
def test_param_values_round_trip_exactly_or_are_refused(
    shared_tracker: TrackerStub, run: run_pb2.Run, value: str
) -> None:
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL: refused on every database, never INTERNAL.
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT, log_params, shared_tracker, run, v=value
        )
        assert "NUL" in error.details()
        assert params_of(shared_tracker, run) == {}
        return
    assert log_params(shared_tracker, run, v=value) == 1
    assert params_of(shared_tracker, run) == {"v": value}


def test_too_many_params_in_one_call(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    params = {f"p{i}": str(i) for i in range(1001)}
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.LogParams,
        pb.LogParamsRequest(run=run.name, params=params),
    )
    assert "1000" in error.details()
    del params["p1000"]
    assert (
        shared_tracker.LogParams(pb.LogParamsRequest(run=run.name, params=params)).new_param_count
        == 1000
    )
    assert len(params_of(shared_tracker, run)) == 1000


def test_log_params_to_unknown_run_is_not_found(shared_tracker: TrackerStub) -> None:
    for params in ({"a": "1"}, {}):
        error = expect_error(
            grpc.StatusCode.NOT_FOUND,
            shared_tracker.LogParams,
            pb.LogParamsRequest(run="experiments/-/runs/ghost", params=params),
        )
        assert error_info(error).reason == "RUN_NOT_FOUND"


def test_concurrent_different_values_for_one_key_one_wins(
    shared_tracker: TrackerStub, run: run_pb2.Run
) -> None:
    writers = 8
    barrier = threading.Barrier(writers)

    def write(index: int) -> str:
        barrier.wait(timeout=30)
        try:
            log_params(shared_tracker, run, seed=str(index))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error.details()
            return "conflict"
        return str(index)

    with ThreadPoolExecutor(max_workers=writers) as pool:
        outcomes = list(pool.map(write, range(writers)))
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1
    assert params_of(shared_tracker, run) == {"seed": winners[0]}


# ------------------------------------------------------------------ tags


def test_tags_set_overwrite_and_delete(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    shared_tracker.SetRunTags(pb.SetRunTagsRequest(run=run.name, tags={"a": "1", "b": "2"}))
    assert tags_of(shared_tracker, run) == {"a": "1", "b": "2"}
    shared_tracker.SetRunTags(pb.SetRunTagsRequest(run=run.name, tags={"a": "changed", "c": ""}))
    assert tags_of(shared_tracker, run) == {"a": "changed", "b": "2", "c": ""}
    shared_tracker.SetRunTags(pb.SetRunTagsRequest(run=run.name, tags={}))
    assert tags_of(shared_tracker, run) == {"a": "changed", "b": "2", "c": ""}

    shared_tracker.DeleteRunTag(pb.DeleteRunTagRequest(run=run.name, key="b"))
    assert tags_of(shared_tracker, run) == {"a": "changed", "c": ""}
    error = expect_error(
        grpc.StatusCode.NOT_FOUND,
        shared_tracker.DeleteRunTag,
        pb.DeleteRunTagRequest(run=run.name, key="b"),
    )
    assert "'b'" in error.details()
    info = error_info(error)
    assert info.reason == "TAG_NOT_FOUND"
    assert info.metadata["key"] == "b"
    # A param is not a tag.
    log_params(shared_tracker, run, p="1")
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        shared_tracker.DeleteRunTag,
        pb.DeleteRunTagRequest(run=run.name, key="p"),
    )


def test_tag_limits(shared_tracker: TrackerStub, run: run_pb2.Run) -> None:
    shared_tracker.SetRunTags(pb.SetRunTagsRequest(run=run.name, tags={"t" * 250: "v" * 8000}))
    assert tags_of(shared_tracker, run) == {"t" * 250: "v" * 8000}
    for tags in ({"t": "v" * 8001}, {"t" * 251: "v"}, {"": "v"}):
        error = expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            shared_tracker.SetRunTags,
            pb.SetRunTagsRequest(run=run.name, tags={"other": "x", **tags}),
        )
        assert error_info(error).metadata["field"] == "tags"
    error = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        shared_tracker.DeleteRunTag,
        pb.DeleteRunTagRequest(run=run.name, key=""),
    )
    assert error_info(error).metadata["field"] == "key"
    assert tags_of(shared_tracker, run) == {"t" * 250: "v" * 8000}


def test_tags_on_unknown_run_are_not_found(shared_tracker: TrackerStub) -> None:
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        shared_tracker.SetRunTags,
        pb.SetRunTagsRequest(run="experiments/-/runs/ghost", tags={"a": "1"}),
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        shared_tracker.DeleteRunTag,
        pb.DeleteRunTagRequest(run="experiments/-/runs/ghost", key="a"),
    )
