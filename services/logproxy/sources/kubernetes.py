"""Kubernetes pod logs: the logs of the pods the Kubernetes launcher's Jobs run (the job's
log_source: kind "kubernetes", attributes namespace, label_selector and container).

A job's pods are listed by label and ordered by when they were created; each pod's container
log is read with `timestamps=true`, so every line starts with the RFC 3339 time Kubernetes
stamped it with: that is the entry's time, and the rest of the line is parsed like a log
file's (services.logproxy.sources.files.RecordParser: headers, continuation lines, severity,
component). An entry's position is (the pod's place in that order, the line's index in the
pod's log), flattened into one int: positions only grow while the logs grow, so page tokens
stay stable. A pod still waiting to start (400 from the API) or gone (404) has no logs yet.

Following streams each pod's log (`follow=true`, unbuffered) in a thread of its own,
skipping the lines already read, and picks up pods that start later; it ends when the job
has ended and every pod's log has been read to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.errors import Unavailable
from services.common.kubernetes import api_client_from
from services.logproxy.sources import LogRecord
from services.logproxy.sources.files import RecordParser

log = logging.getLogger(__name__)

# position = pod index << POD_SHIFT | line index (a pod's log has fewer than 2**40 lines).
POD_SHIFT = 40
# A record being followed is complete when nothing was written for this long.
POLL_SECONDS = 0.5
# How often a follower lists the job's pods (new pods, pods that started, pods that ended).
PODS_POLL_SECONDS = 2.0
# A followed pod log that stays quiet this long is opened again (the client wants a limit).
STREAM_READ_TIMEOUT_SECONDS = 600.0
# Once the job has ended, how long its pods' streams may take to reach their ends.
END_GRACE_SECONDS = 10.0
_TERMINAL_PHASES = ("Succeeded", "Failed")
_STAMP = re.compile(
    r"^(?P<time>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2}) ?"
)
_EPOCH = dt.datetime.fromtimestamp(0, dt.UTC)


def split_timestamp(line: str) -> tuple[dt.datetime | None, str]:
    """The time Kubernetes put before a log line (RFC 3339, nanoseconds) and the line."""
    match = _STAMP.match(line)
    if match is None:
        return None, line
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    try:
        time = dt.datetime.fromisoformat(f"{match['time']}.{fraction}{zone}")
    except ValueError:
        return None, line
    return time, line[match.end() :]


@dataclass(frozen=True)
class PodSelector:
    """Which pods and container hold a job's logs."""

    namespace: str
    label_selector: str
    container: str

    @classmethod
    def of(cls, attributes: Mapping[str, str]) -> PodSelector:
        return cls(
            attributes.get("namespace") or "default",
            attributes.get("label_selector", ""),
            attributes.get("container", ""),
        )


@dataclass
class _PodLog:
    """What has been read of one pod's log: how many lines, and the parser's state."""

    name: str
    index: int
    parser: RecordParser
    lines: int = 0
    drained: bool = False  # read to its end after the pod ended

    def feed(self, line: str) -> LogRecord | None:
        time, text = split_timestamp(line)
        record = self.parser.feed((self.index << POD_SHIFT) | self.lines, text, time)
        self.lines += 1
        return record


@dataclass
class Snapshot:
    """A job's pod logs as read now (records oldest first), and where each pod's log ends:
    following continues from there."""

    where: PodSelector
    records: list[LogRecord] = field(default_factory=list)
    pods: dict[str, _PodLog] = field(default_factory=dict)


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return [line.rstrip("\r") for line in lines]


class KubernetesLogs:
    """Reads and follows the logs of a job's pods through the official client."""

    def __init__(
        self,
        api_client: Any | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        request_timeout_seconds: float = 30.0,
    ) -> None:
        self.api_client = api_client or api_client_from(kubeconfig, context)
        self.core = client.CoreV1Api(self.api_client)
        self._timeout = request_timeout_seconds

    # ------------------------------------------------------------------ reading

    def pods(self, where: PodSelector) -> list[Any]:
        """The job's pods (V1Pod), oldest first."""
        listed = self.core.list_namespaced_pod(
            where.namespace, label_selector=where.label_selector, _request_timeout=self._timeout
        )
        return sorted(
            listed.items or [],
            key=lambda pod: (pod.metadata.creation_timestamp or _EPOCH, pod.metadata.name),
        )

    def _read_log(self, where: PodSelector, pod: str) -> str | None:
        """The pod's whole log, timestamped; None while it has none (waiting, or gone)."""
        try:
            response: Any = self.core.read_namespaced_pod_log(
                pod,
                where.namespace,
                container=where.container or None,
                timestamps=True,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        except ApiException as error:
            if error.status in (400, 404):
                return None
            raise
        try:
            return bytes(response.data).decode("utf-8", "replace")
        finally:
            response.release_conn()

    def read(self, where: PodSelector) -> Snapshot:
        """Every record of the job's pods, oldest first (blocking: run it in a thread).
        Unavailable when the Kubernetes API cannot be reached or refuses."""
        try:
            return self._read_all(where)
        except ApiException as error:
            raise Unavailable(
                f"the Kubernetes API refused to give the logs of {where.label_selector} in "
                f"{where.namespace}: {error.status} {error.reason}",
                reason="KUBERNETES_API_ERROR",
                metadata={"status": error.status},
            ) from None
        except urllib3.exceptions.HTTPError as error:
            raise Unavailable(
                f"cannot reach the Kubernetes API: {error}", reason="KUBERNETES_API_ERROR"
            ) from None

    def _read_all(self, where: PodSelector) -> Snapshot:
        snapshot = Snapshot(where)
        for index, pod in enumerate(self.pods(where)):
            name = str(pod.metadata.name)
            state = _PodLog(name, index, RecordParser(f"pod/{name}/{where.container}"))
            snapshot.pods[name] = state
            text = self._read_log(where, name)
            if text is None:
                continue
            for line in _lines(text):
                record = state.feed(line)
                if record is not None:
                    snapshot.records.append(record)
            last = state.parser.flush()
            if last is not None:
                snapshot.records.append(last)
            if (pod.status.phase if pod.status else None) in _TERMINAL_PHASES:
                state.drained = True
        return snapshot

    # ------------------------------------------------------------------ following

    async def follow(
        self, snapshot: Snapshot, finished: Callable[[], Awaitable[bool]]
    ) -> AsyncIterator[LogRecord]:
        """Records written after `snapshot`, as they are written, until `finished()` says
        the job has ended and its pods' logs have been read to their ends."""
        where = snapshot.where
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[_Stream, str | None]] = asyncio.Queue()
        streams: dict[str, _Stream] = {}
        listed_at = -math.inf
        ended_at: float | None = None

        def deliver(stream: _Stream, line: str | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (stream, line))

        try:
            while True:
                if loop.time() - listed_at >= PODS_POLL_SECONDS:
                    listed_at = loop.time()
                    pods = await asyncio.to_thread(self._pods_or_none, where)
                    for index, pod in enumerate(pods or []):
                        name = str(pod.metadata.name)
                        state = snapshot.pods.get(name)
                        if state is None:
                            parser = RecordParser(f"pod/{name}/{where.container}")
                            state = snapshot.pods[name] = _PodLog(name, index, parser)
                        if state.drained or name in streams:
                            continue
                        phase = pod.status.phase if pod.status else None
                        stream = _Stream(self, where, name, state.lines, phase, deliver)
                        streams[name] = stream
                        stream.start()
                    if pods is not None:
                        # Pods that are gone have nothing more to say.
                        current = {str(p.metadata.name) for p in pods}
                        for name, state in snapshot.pods.items():
                            if name not in current and name not in streams:
                                state.drained = True
                try:
                    stream, line = await asyncio.wait_for(queue.get(), POLL_SECONDS)
                except TimeoutError:
                    for state in snapshot.pods.values():
                        record = state.parser.flush()
                        if record is not None:
                            yield record
                    if await finished():
                        if ended_at is None:
                            ended_at = loop.time()
                            listed_at = -math.inf  # see the pods' final phases
                            continue
                        if not streams and all(s.drained for s in snapshot.pods.values()):
                            return
                        if loop.time() - ended_at > END_GRACE_SECONDS:
                            return
                    continue
                state = snapshot.pods[stream.pod]
                if line is None:
                    streams.pop(stream.pod, None)
                    # A stream ends by itself when the container has ended (or the
                    # server cut it: then, while the pod runs, it is opened again).
                    ended = stream.phase in _TERMINAL_PHASES or ended_at is not None
                    if stream.complete and ended:
                        state.drained = True
                    continue
                record = state.feed(line)
                if record is not None:
                    yield record
        finally:
            for stream in streams.values():
                stream.stop()

    def _pods_or_none(self, where: PodSelector) -> list[Any] | None:
        try:
            return self.pods(where)
        except Exception as error:  # an API hiccup: the next poll tries again
            log.warning("cannot list the pods of %s: %s", where.label_selector, error)
            return None


class _Stream(threading.Thread):
    """Streams one pod's log (follow=true) from line `skip` on, handing each line to
    `deliver`, then None when the stream ends (`complete` if it ended by itself)."""

    def __init__(
        self,
        logs: KubernetesLogs,
        where: PodSelector,
        pod: str,
        skip: int,
        phase: str | None,
        deliver: Callable[[_Stream, str | None], None],
    ) -> None:
        super().__init__(name=f"pod-log-{pod}", daemon=True)
        self.logs = logs
        self.where = where
        self.pod = pod
        self.skip = skip
        self.phase = phase  # the pod's phase when the stream started
        self.deliver = deliver
        self.complete = False
        self._lock = threading.Lock()
        self._stopped = False
        self._response: Any = None

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # already closed
                response.shutdown()  # unblocks the read in the thread

    def run(self) -> None:
        try:
            self._stream()
        except ApiException as error:
            if error.status not in (400, 404):  # waiting to start, or gone: not yet/no more
                log.warning("cannot follow the log of pod %s: %s", self.pod, error.reason)
        except Exception as error:
            if not self._stopped:
                log.warning("the log stream of pod %s broke: %s", self.pod, error)
        finally:
            self.deliver(self, None)

    def _stream(self) -> None:
        # A quiet log is not a dead one: a long read timeout, after which the follower
        # opens the stream again (skipping what it has read).
        timeout = (self.logs._timeout, STREAM_READ_TIMEOUT_SECONDS)
        response: Any = self.logs.core.read_namespaced_pod_log(
            self.pod,
            self.where.namespace,
            container=self.where.container or None,
            timestamps=True,
            follow=True,
            _preload_content=False,
            _request_timeout=timeout,
        )
        with self._lock:
            self._response = response
            stopped = self._stopped
        try:
            if stopped:
                return
            seen = 0
            partial = b""
            for chunk in response.stream(64 * 1024, decode_content=True):
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                for raw in lines:
                    seen += 1
                    if seen > self.skip:
                        self.deliver(self, raw.decode("utf-8", "replace").rstrip("\r"))
                if self._stopped:
                    return
            if partial and seen >= self.skip:
                self.deliver(self, partial.decode("utf-8", "replace").rstrip("\r"))
            self.complete = not self._stopped
        finally:
            response.release_conn()
