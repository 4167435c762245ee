"""Background metric delivery: buffer points, send them in batches, never lose or repeat one.

Points are queued by log_metric(s) and sent by one daemon thread in batches (per run, up to
`max_batch` points, at least every `interval` seconds). Every batch gets an id before its
first attempt and keeps it through retries, so a batch whose acknowledgement was lost is
recognised by the server and not stored twice. flush() waits until everything queued before
it is acknowledged; process exit flushes too (see Tracker).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from cairn.errors import CairnError, from_rpc_error
from cairn.tracker.v1 import metric_pb2

log = logging.getLogger("cairn.sdk")

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
    }
)


@dataclass(frozen=True)
class PendingPoint:
    run: str  # resource name
    metric: metric_pb2.Metric


SendBatch = Callable[[str, str, list[metric_pb2.Metric]], None]


class MetricSender:
    def __init__(
        self,
        send: SendBatch,
        *,
        max_batch: int = 1000,
        interval: float = 1.0,
        retry_for: float = 120.0,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._interval = interval
        self._retry_for = retry_for
        self._queue: deque[PendingPoint] = deque()
        self._lock = threading.Condition()
        self._queued = 0  # points ever queued
        self._done = 0  # points acknowledged (or given up on)
        self._errors: list[CairnError] = []
        self._urgent = False  # a flush is waiting: send partial batches now
        self._thread: threading.Thread | None = None

    def add(self, points: list[PendingPoint]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="cairn-metric-sender", daemon=True
                )
                self._thread.start()
            self._queue.extend(points)
            self._queued += len(points)
            if len(self._queue) >= self._max_batch:
                self._lock.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Block until every point queued so far is acknowledged; raise what failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._queued
            self._urgent = True
            self._lock.notify_all()
            while self._done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{target - self._done} metric points not yet acknowledged")
                self._lock.wait(remaining if remaining is not None else 0.5)
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    @property
    def pending(self) -> int:
        with self._lock:
            return self._queued - self._done

    def _take_batch(self) -> tuple[str, list[metric_pb2.Metric]] | None:
        """Pops up to max_batch consecutive points of the oldest point's run (lock held)."""
        if not self._queue:
            return None
        run = self._queue[0].run
        batch: list[metric_pb2.Metric] = []
        while self._queue and self._queue[0].run == run and len(batch) < self._max_batch:
            batch.append(self._queue.popleft().metric)
        return run, batch

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                if len(self._queue) < self._max_batch and not self._urgent:
                    # Let a partial batch fill for one interval, unless someone flushes.
                    self._lock.wait(self._interval)
                taken = self._take_batch()
                if not self._queue:
                    self._urgent = False
            if taken is None:
                continue
            run, batch = taken
            try:
                self._deliver(run, batch)
            finally:  # acknowledged or given up on: never leave flush() waiting for it
                with self._lock:
                    self._done += len(batch)
                    self._lock.notify_all()

    def _deliver(self, run: str, batch: list[metric_pb2.Metric]) -> None:
        batch_id = uuid.uuid4().hex
        give_up = time.monotonic() + self._retry_for
        delay = 0.2
        while True:
            try:
                self._send(run, batch_id, batch)
                return
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                if code in RETRYABLE and time.monotonic() < give_up:
                    log.warning("metric batch %s: %s; retrying in %.1fs", batch_id, code, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                self._give_up(batch_id, batch, from_rpc_error(error))
                return
            except Exception as error:
                # Anything else (a closed channel: "Cannot invoke RPC on closed channel") is
                # not going to get better by retrying. The thread must survive it, or every
                # later flush() would wait forever for points nobody sends.
                failure = CairnError(
                    f"metric batch of {len(batch)} points could not be sent: "
                    f"{type(error).__name__}: {error}"
                )
                failure.__cause__ = error
                self._give_up(batch_id, batch, failure)
                return

    def _give_up(self, batch_id: str, batch: list[metric_pb2.Metric], failure: CairnError) -> None:
        """Record a batch that will not be stored, for the next flush() to raise."""
        log.error("metric batch %s of %d points failed: %s", batch_id, len(batch), failure)
        with self._lock:
            self._errors.append(failure)
