"""Analytics' data access: the tracker's read RPCs (analytics owns no tables).

Each method is one tracker call made on behalf of the incoming RPC (CallOptions carries its
credentials, request id and deadline); tracker errors keep their status.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc.aio

from cairn.tracker.v1 import run_pb2, run_table_pb2, tracker_service_pb2, tracker_service_pb2_grpc
from services.common.clients import CallOptions, backend_error
from services.common.filtering import all_of, quote_text

BACKEND = "tracker"


@dataclass(frozen=True)
class Scope:
    """The runs an analysis covers."""

    experiment_ids: tuple[str, ...] = ()
    filter: str = ""
    model_type: str = ""

    def filter_text(self, *conditions: str) -> str:
        model = f"model_type = {quote_text(self.model_type)}" if self.model_type else ""
        return all_of(self.filter, model, *conditions)

    def without_model_type(self) -> Scope:
        return Scope(self.experiment_ids, self.filter, "")


@dataclass
class Column:
    """One column of a RunTable, decoded: numbers (NaN when absent) or texts (None when
    absent)."""

    name: str
    numeric: bool
    numbers: list[float] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)

    def value(self, row: int) -> float | str | None:
        if self.numeric:
            number = self.numbers[row]
            return None if math.isnan(number) else number
        return self.texts[row]


@dataclass
class Table:
    run_ids: list[str]
    experiment_ids: list[str]
    columns: dict[str, Column]
    truncated: bool

    def __len__(self) -> int:
        return len(self.run_ids)


@dataclass(frozen=True)
class History:
    steps: list[int]
    values: list[float]
    downsampled: bool


@dataclass(frozen=True)
class KeyCount:
    key: str
    run_count: int
    distinct_values: int


@dataclass
class KeyCounts:
    run_count: int
    params: list[KeyCount]
    metrics: list[KeyCount]
    tags: list[KeyCount]

    def varied_params(self) -> list[str]:
        """Params that take more than one value (or are missing from some runs)."""
        return [
            k.key for k in self.params if k.distinct_values > 1 or 0 < k.run_count < self.run_count
        ]


def _column(proto: run_table_pb2.RunTableColumn) -> Column:
    if proto.kind == run_table_pb2.COLUMN_KIND_NUMBER:
        return Column(proto.name, True, numbers=list(proto.numbers))
    texts: list[str | None] = [
        text if present else None for text, present in zip(proto.texts, proto.present, strict=True)
    ]
    return Column(proto.name, False, texts=texts)


class TrackerReader:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)  # type: ignore[no-untyped-call]

    async def query_table(
        self,
        scope: Scope,
        columns: Sequence[str],
        options: CallOptions,
        *,
        conditions: Sequence[str] = (),
        order_by: str = "",
        limit: int = 0,
    ) -> Table:
        request = tracker_service_pb2.QueryRunTableRequest(
            experiment_ids=scope.experiment_ids,
            filter=scope.filter_text(*conditions),
            columns=list(dict.fromkeys(columns)),
            order_by=order_by,
            limit=limit,
        )
        try:
            response = await self._stub.QueryRunTable(
                request, metadata=options.metadata, timeout=options.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, BACKEND) from None
        return Table(
            list(response.run_ids),
            list(response.experiment_ids),
            {c.name: _column(c) for c in response.columns},
            response.truncated,
        )

    async def aggregate(
        self,
        scope: Scope,
        group_by: Sequence[str],
        aggregates: Sequence[tuple[int, str]],
        options: CallOptions,
        *,
        conditions: Sequence[str] = (),
    ) -> list[tuple[list[str], list[float]]]:
        request = tracker_service_pb2.AggregateRunsRequest(
            experiment_ids=scope.experiment_ids,
            filter=scope.filter_text(*conditions),
            group_by=list(group_by),
            aggregates=[
                run_table_pb2.Aggregate(function=function, column=column)  # type: ignore[arg-type]
                for function, column in aggregates
            ],
        )
        try:
            response = await self._stub.AggregateRuns(
                request, metadata=options.metadata, timeout=options.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, BACKEND) from None
        return [(list(row.group), list(row.values)) for row in response.rows]

    async def keys(
        self, scope: Scope, options: CallOptions, *, conditions: Sequence[str] = ()
    ) -> KeyCounts:
        request = tracker_service_pb2.ListRunKeysRequest(
            experiment_ids=scope.experiment_ids, filter=scope.filter_text(*conditions)
        )
        try:
            response = await self._stub.ListRunKeys(
                request, metadata=options.metadata, timeout=options.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, BACKEND) from None

        def counts(keys: Sequence[run_table_pb2.RunKeyCount]) -> list[KeyCount]:
            return [KeyCount(k.key, k.run_count, k.distinct_value_count) for k in keys]

        return KeyCounts(
            response.run_count,
            counts(response.param_keys),
            counts(response.metric_keys),
            counts(response.tag_keys),
        )

    async def get_run(self, name: str, options: CallOptions) -> run_pb2.Run:
        request = tracker_service_pb2.GetRunRequest(name=name, view=run_pb2.RUN_VIEW_STANDARD)
        try:
            return await self._stub.GetRun(  # type: ignore[no-any-return]
                request, metadata=options.metadata, timeout=options.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, BACKEND) from None

    async def history(
        self, run_name: str, metric_key: str, max_points: int, options: CallOptions
    ) -> History:
        request = tracker_service_pb2.ListMetricHistoryRequest(
            run=run_name, metric_key=metric_key, max_points=max_points
        )
        try:
            response = await self._stub.ListMetricHistory(
                request, metadata=options.metadata, timeout=options.timeout
            )
        except grpc.aio.AioRpcError as error:
            raise backend_error(error, BACKEND) from None
        return History(
            [p.step for p in response.points],
            [p.value for p in response.points],
            response.downsampled,
        )
