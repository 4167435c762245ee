"""gRPC handlers of cairn.tracker.v1.TrackerService: unpack, call the domain, pack.

Domain calls are blocking (SQL, object storage) and run on the server's worker threads;
errors are mapped to statuses by the shared interceptor, never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from google.protobuf import empty_pb2

from cairn.tracker.v1 import (
    artifact_pb2,
    experiment_pb2,
    metric_pb2,
    run_pb2,
    run_table_pb2,
    tracker_service_pb2_grpc,
)
from cairn.tracker.v1 import (
    tracker_service_pb2 as pb,
)
from services.common.concurrency import BlockingRunner
from services.common.errors import CairnError, InvalidArgument
from services.common.rpc import Context
from services.tracker.service import TrackerService

# Uploads larger than this spill from memory to a temporary file while they stream in.
SPOOL_MEMORY_BYTES = 8 << 20


class TrackerServicer(tracker_service_pb2_grpc.TrackerServiceServicer):
    def __init__(self, service: TrackerService, runner: BlockingRunner) -> None:
        self.service = service
        self.run = runner.run

    # ------------------------------------------------------------------ experiments

    async def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: Context
    ) -> experiment_pb2.Experiment:
        return await self.run(
            self.service.create_experiment, request.experiment, request.request_id
        )

    async def GetExperiment(
        self, request: pb.GetExperimentRequest, context: Context
    ) -> experiment_pb2.Experiment:
        return await self.run(self.service.get_experiment, request.name)

    async def GetExperimentByName(
        self, request: pb.GetExperimentByNameRequest, context: Context
    ) -> experiment_pb2.Experiment:
        return await self.run(self.service.get_experiment_by_name, request.display_name)

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: Context
    ) -> pb.ListExperimentsResponse:
        experiments, token = await self.run(
            self.service.list_experiments,
            request.page_size,
            request.page_token,
            request.filter,
            request.order_by,
            request.lifecycle_filter,
        )
        return pb.ListExperimentsResponse(experiments=experiments, next_page_token=token)

    async def UpdateExperiment(
        self, request: pb.UpdateExperimentRequest, context: Context
    ) -> experiment_pb2.Experiment:
        return await self.run(
            self.service.update_experiment, request.experiment, list(request.update_mask.paths)
        )

    async def DeleteExperiment(
        self, request: pb.DeleteExperimentRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.run(self.service.delete_experiment, request.name)
        return empty_pb2.Empty()

    async def RestoreExperiment(
        self, request: pb.RestoreExperimentRequest, context: Context
    ) -> experiment_pb2.Experiment:
        return await self.run(self.service.restore_experiment, request.name)

    async def SetExperimentTags(
        self, request: pb.SetExperimentTagsRequest, context: Context
    ) -> pb.SetExperimentTagsResponse:
        await self.run(self.service.set_experiment_tags, request.experiment, dict(request.tags))
        return pb.SetExperimentTagsResponse()

    async def DeleteExperimentTag(
        self, request: pb.DeleteExperimentTagRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.run(self.service.delete_experiment_tag, request.experiment, request.key)
        return empty_pb2.Empty()

    async def PurgeDeleted(
        self, request: pb.PurgeDeletedRequest, context: Context
    ) -> pb.PurgeDeletedResponse:
        older_than_ms = request.older_than.ToMilliseconds()
        result = await self.run(
            self.service.purge_deleted,
            older_than_ms,
            list(request.experiment_ids),
            request.dry_run,
        )
        return pb.PurgeDeletedResponse(
            purged_experiment_count=result.experiment_count,
            purged_run_count=len(result.run_ids),
            freed_bytes=result.freed_bytes,
            purged_run_ids=result.run_ids,
        )

    # ------------------------------------------------------------------ runs

    async def CreateRun(self, request: pb.CreateRunRequest, context: Context) -> run_pb2.Run:
        return await self.run(
            self.service.create_run, request.parent, request.run, request.request_id
        )

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> run_pb2.Run:
        return await self.run(self.service.get_run, request.name, request.view)

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        runs, token = await self.run(
            self.service.list_runs,
            request.parent,
            request.filter,
            request.order_by,
            request.page_size,
            request.page_token,
            request.lifecycle_filter,
            request.view,
        )
        return pb.ListRunsResponse(runs=runs, next_page_token=token)

    async def SearchRuns(
        self, request: pb.SearchRunsRequest, context: Context
    ) -> pb.SearchRunsResponse:
        runs, token = await self.run(
            self.service.search_runs,
            list(request.experiment_ids),
            request.filter,
            request.order_by,
            request.page_size,
            request.page_token,
            request.lifecycle_filter,
            request.view,
        )
        return pb.SearchRunsResponse(runs=runs, next_page_token=token)

    async def QueryRunTable(
        self, request: pb.QueryRunTableRequest, context: Context
    ) -> run_table_pb2.RunTable:
        table = await self.run(
            self.service.query_run_table,
            list(request.experiment_ids),
            request.filter,
            request.lifecycle_filter,
            list(request.columns),
            request.order_by,
            request.limit,
        )
        return run_table_pb2.RunTable(
            run_ids=table.run_ids,
            experiment_ids=table.experiment_ids,
            truncated=table.truncated,
            columns=[
                run_table_pb2.RunTableColumn(
                    name=column.name,
                    kind=run_table_pb2.COLUMN_KIND_NUMBER
                    if column.kind == "number"
                    else run_table_pb2.COLUMN_KIND_TEXT,
                    numbers=column.numbers,
                    texts=column.texts,
                    present=column.present,
                )
                for column in table.columns
            ],
        )

    async def AggregateRuns(
        self, request: pb.AggregateRunsRequest, context: Context
    ) -> pb.AggregateRunsResponse:
        aggregates = [(_aggregate_function_name(a.function), a.column) for a in request.aggregates]
        rows = await self.run(
            self.service.aggregate_runs,
            list(request.experiment_ids),
            request.filter,
            request.lifecycle_filter,
            list(request.group_by),
            aggregates,
        )
        return pb.AggregateRunsResponse(
            rows=[run_table_pb2.AggregateRow(group=group, values=values) for group, values in rows]
        )

    async def ListRunKeys(
        self, request: pb.ListRunKeysRequest, context: Context
    ) -> pb.ListRunKeysResponse:
        keys = await self.run(
            self.service.list_run_keys,
            list(request.experiment_ids),
            request.filter,
            request.lifecycle_filter,
        )

        def counts(rows: list[tuple[str, int, int]]) -> list[run_table_pb2.RunKeyCount]:
            return [
                run_table_pb2.RunKeyCount(key=k, run_count=n, distinct_value_count=d)
                for k, n, d in rows
            ]

        return pb.ListRunKeysResponse(
            param_keys=counts(keys.params),
            metric_keys=counts(keys.metrics),
            tag_keys=counts(keys.tags),
            run_count=keys.run_count,
        )

    async def UpdateRun(self, request: pb.UpdateRunRequest, context: Context) -> run_pb2.Run:
        return await self.run(self.service.update_run, request.run, list(request.update_mask.paths))

    async def DeleteRun(self, request: pb.DeleteRunRequest, context: Context) -> empty_pb2.Empty:
        await self.run(self.service.delete_run, request.name)
        return empty_pb2.Empty()

    async def RestoreRun(self, request: pb.RestoreRunRequest, context: Context) -> run_pb2.Run:
        return await self.run(self.service.restore_run, request.name)

    # ------------------------------------------------------------------ params, tags, metrics

    async def LogParams(
        self, request: pb.LogParamsRequest, context: Context
    ) -> pb.LogParamsResponse:
        count = await self.run(self.service.log_params, request.run, dict(request.params))
        return pb.LogParamsResponse(new_param_count=count)

    async def LogMetrics(
        self, request: pb.LogMetricsRequest, context: Context
    ) -> pb.LogMetricsResponse:
        stored, duplicate = await self.run(
            self.service.log_metrics,
            request.run,
            request.batch_id,
            request.metrics,
            request.columns if request.HasField("columns") else None,
        )
        return pb.LogMetricsResponse(stored_point_count=stored, duplicate=duplicate)

    async def StreamMetrics(
        self,
        request_iterator: AsyncIterator[pb.StreamMetricsRequest],
        context: Context,
    ) -> pb.StreamMetricsResponse:
        response = pb.StreamMetricsResponse()
        # One batch is written while the next is received: ingest overlaps network and disk.
        # One write at a time, though: two in flight were 35% faster on PostgreSQL, but a
        # step's points split across two batches could then be stored (and read back) out
        # of their logging order, as ids are handed out in write order.
        pending: asyncio.Future[tuple[int, bool]] | None = None

        def account(result: tuple[int, bool]) -> None:
            stored, duplicate = result
            response.batch_count += 1
            response.stored_point_count += stored
            response.duplicate_batch_count += int(duplicate)

        stream = aiter(request_iterator)
        try:
            async for message in stream:
                if pending is not None:
                    account(await pending)
                pending = asyncio.ensure_future(
                    self.run(
                        self.service.log_metrics,
                        message.run,
                        message.batch_id,
                        message.metrics,
                        message.columns if message.HasField("columns") else None,
                    )
                )
            if pending is not None:
                account(await pending)
                pending = None
        except CairnError:
            await _drain(stream)
            raise
        finally:
            if pending is not None and not pending.done():
                # The client went away mid-stream: let the write finish (it is idempotent
                # and may already be committed) rather than leave a thread half done.
                await asyncio.wait([pending])
        return response

    async def ListMetricHistory(
        self, request: pb.ListMetricHistoryRequest, context: Context
    ) -> pb.ListMetricHistoryResponse:
        points, token, downsampled, total = await self.run(
            self.service.metric_history,
            request.run,
            request.metric_key,
            request.page_size,
            request.page_token,
            request.max_points,
            request.start_step,
            request.end_step,
            request.columnar,
        )
        response = pb.ListMetricHistoryResponse(
            next_page_token=token, downsampled=downsampled, total_point_count=total
        )
        if isinstance(points, metric_pb2.MetricColumns):
            response.columns.CopyFrom(points)
        else:
            response.points.extend(points)
        return response

    async def SetRunTags(
        self, request: pb.SetRunTagsRequest, context: Context
    ) -> pb.SetRunTagsResponse:
        await self.run(self.service.set_run_tags, request.run, dict(request.tags))
        return pb.SetRunTagsResponse()

    async def DeleteRunTag(
        self, request: pb.DeleteRunTagRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.run(self.service.delete_run_tag, request.run, request.key)
        return empty_pb2.Empty()

    # ------------------------------------------------------------------ artifacts

    async def UploadArtifact(
        self,
        request_iterator: AsyncIterator[pb.UploadArtifactRequest],
        context: Context,
    ) -> artifact_pb2.Artifact:
        messages = aiter(request_iterator)
        try:
            return await self._upload(messages, context)
        except CairnError:
            await _drain(messages)
            raise

    async def _upload(
        self, messages: AsyncIterator[pb.UploadArtifactRequest], context: Context
    ) -> artifact_pb2.Artifact:
        first = await anext(messages, None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidArgument(
                "the first UploadArtifact message must carry metadata", field="metadata"
            )
        meta = first.metadata
        target = await self.run(
            self.service.begin_upload,
            meta.run,
            meta.path,
            meta.artifact_type,
            meta.overwrite,
            meta.expected_sha256,
        )
        digest = hashlib.sha256()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
            async for message in messages:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidArgument(
                        "only the first UploadArtifact message may carry metadata",
                        field="metadata",
                    )
                digest.update(message.chunk)
                size += len(message.chunk)
                spool.write(message.chunk)
            await _ensure_client_finished(context)
            return await self.run(
                self.service.finish_upload,
                target,
                spool,  # type: ignore[arg-type]
                size,
                digest.hexdigest(),
            )

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        artifact, chunks = await self.run(self.service.open_download, request.run, request.path)
        reader = _ChunkReader(chunks)
        yield pb.DownloadArtifactResponse(artifact=artifact)
        try:
            while True:
                chunk = await self.run(reader.next_chunk)
                if chunk is None:
                    break
                yield pb.DownloadArtifactResponse(chunk=chunk)
        finally:
            # On cancellation a worker thread may still be inside next_chunk: close() waits
            # for it instead of closing a generator that is running.
            await self.run(reader.close)

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        artifacts, token = await self.run(
            self.service.list_artifacts,
            request.parent,
            request.path_prefix,
            request.page_size,
            request.page_token,
        )
        return pb.ListArtifactsResponse(artifacts=artifacts, next_page_token=token)


# How much of a rejected client stream is still read before the error is returned: see
# _drained_on_rejection.
DRAIN_LIMIT_BYTES = 256 << 20
DRAIN_LIMIT_SECONDS = 10.0


async def _ensure_client_finished(context: Context) -> None:
    """Make sure a client stream ended because the client finished it, not because it was
    cancelled: grpc.aio's request iterator ends the same way in both cases (a failed
    receive is reported as end-of-stream), and context.cancelled() may not know yet. A call
    the client cancelled is cancelled in the core by then, so sending on it fails: the
    initial metadata (sent now instead of with the response) is the probe. A truncated
    upload is never committed."""
    try:
        await context.send_initial_metadata(())
    except Exception:
        raise asyncio.CancelledError("the client cancelled the stream") from None


async def _drain(stream: AsyncIterator[Any]) -> None:
    """Read (and drop) what a rejected client stream still sends, within limits.

    A client still writing when the server answers early can lose the real status: grpcio's
    aio client then reports INTERNAL "Internal error from Core" instead (grpc/grpc#36066).
    Draining first lets the client finish writing before it reads the answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_LIMIT_SECONDS
    drained = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout_at(deadline):
            async for message in stream:
                drained += message.ByteSize()
                if drained > DRAIN_LIMIT_BYTES:
                    return


class _ChunkReader:
    """Reads an artifact's chunks from worker threads, one call at a time."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._lock = threading.Lock()

    def next_chunk(self) -> bytes | None:
        with self._lock:
            return next(self._chunks, None)

    def close(self) -> None:
        with self._lock:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()


def _aggregate_function_name(value: int) -> str:
    """COUNT, MIN... for an AggregateFunction; unknown numbers become a name the service
    rejects with the list of known ones."""
    if value in run_table_pb2.AggregateFunction.values() and value != 0:
        return run_table_pb2.AggregateFunction.Name(value).removeprefix("AGGREGATE_FUNCTION_")
    return "UNSPECIFIED" if value == 0 else str(value)
