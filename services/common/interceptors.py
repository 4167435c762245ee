"""Server interceptors shared by every Cairn service.

Order (outermost first): request id + structured access log, Prometheus metrics, bearer-token
auth, error mapping. Each wraps the method handler once per call; servicer code stays free
of cross-cutting concerns.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from services.common.errors import ERROR_DOMAIN, CairnError, PermissionDenied, Unauthenticated
from services.common.logs import request_id_var
from services.common.request_ids import valid_request_id
from services.common.rpc import Context, Handler, ServerInterceptor
from services.common.run_tokens import names_run, process_run_token_secret, verify_run_token

log = logging.getLogger("cairn.rpc")

REQUEST_ID_KEY = "x-request-id"
HEALTH_SERVICE_PREFIX = "/grpc.health.v1.Health/"

Behavior = Callable[..., Any]

STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
)
HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "Time to complete an RPC on the server.",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def _rpc_type(handler: Handler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _split_method(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


Around = Callable[[Context, Callable[[], Awaitable[Any]]], Awaitable[Any]]


def wrap_handler(
    handler: Handler,
    unary_around: Callable[[Behavior, Any, Context], Awaitable[Any]],
    stream_around: Callable[[Behavior, Any, Context], AsyncIterator[Any]],
) -> Handler:
    """Rebuild a method handler with its behaviour wrapped, whatever its streaming kind."""
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary_unary(request: Any, context: Context) -> Any:
            return await unary_around(inner, request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        async def stream_unary(requests: Any, context: Context) -> Any:
            return await unary_around(inner_su, requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: Context) -> Any:
            async for item in stream_around(inner_us, request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream
    assert inner_ss is not None, "a handler has exactly one behaviour"

    async def stream_stream(requests: Any, context: Context) -> Any:
        async for item in stream_around(inner_ss, requests, context):
            yield item

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )


async def _iterate(behavior: Behavior, request: Any, context: Context) -> AsyncIterator[Any]:
    result = behavior(request, context)
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:  # a coroutine that writes with context.write()
        await result


def final_code_name(context: Context) -> str:
    """The status a finished call ended with. A cancelled call is only asked whether it was
    cancelled: grpcio can crash when a cancelled call is asked for more."""
    if context.cancelled():
        return "CANCELLED"
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


class _WrappingInterceptor(ServerInterceptor):
    """Base: subclasses implement `before`/`after` hooks around every call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.wrap(handler, handler_call_details)

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        raise NotImplementedError


class RequestContextInterceptor(_WrappingInterceptor):
    """Gives every call a request id (the client's x-request-id or a new one), echoes it in
    the trailing metadata and writes one structured access-log line per call."""

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = details.method
        quiet = method.startswith(HEALTH_SERVICE_PREFIX)
        incoming = dict(details.invocation_metadata or ())

        def begin(context: Context) -> tuple[contextvars.Token[str], float, str]:
            supplied = incoming.get(REQUEST_ID_KEY)
            rid = valid_request_id(supplied if isinstance(supplied, str) else None)
            token = request_id_var.set(rid)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            # Read the peer now: asking a cancelled call for it can crash grpcio.
            return token, time.perf_counter(), str(context.peer())

        def end(context: Context, token: contextvars.Token[str], started: float, peer: str) -> None:
            elapsed_ms = (time.perf_counter() - started) * 1000
            code_name = final_code_name(context)
            if not quiet or code_name != "OK":
                level = (
                    logging.WARNING
                    if code_name in ("INTERNAL", "UNKNOWN", "DATA_LOSS")
                    else logging.INFO
                )
                log.log(
                    level,
                    "rpc %s %s",
                    method,
                    code_name,
                    extra={"duration_ms": round(elapsed_ms, 2), "peer": peer},
                )
            # A cancelled stream is finalized from another context: then there is nothing to undo.
            with contextlib.suppress(ValueError):
                request_id_var.reset(token)

        async def unary(behavior: Behavior, request: Any, context: Context) -> Any:
            token, started, peer = begin(context)
            try:
                return await behavior(request, context)
            finally:
                end(context, token, started, peer)

        async def stream(behavior: Behavior, request: Any, context: Context) -> AsyncIterator[Any]:
            token, started, peer = begin(context)
            try:
                async for item in _iterate(behavior, request, context):
                    yield item
            finally:
                end(context, token, started, peer)

        return wrap_handler(handler, unary, stream)


class MetricsInterceptor(_WrappingInterceptor):
    """Prometheus counters and latency histograms named as in go-grpc-prometheus."""

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        service, method = _split_method(details.method)
        kind = _rpc_type(handler)
        started = STARTED.labels(service, method, kind)
        latency = LATENCY.labels(service, method, kind)

        def finish(context: Context, began: float) -> None:
            latency.observe(time.perf_counter() - began)
            HANDLED.labels(service, method, kind, final_code_name(context)).inc()

        async def unary(behavior: Behavior, request: Any, context: Context) -> Any:
            started.inc()
            began = time.perf_counter()
            try:
                return await behavior(request, context)
            finally:
                finish(context, began)

        async def stream(behavior: Behavior, request: Any, context: Context) -> AsyncIterator[Any]:
            started.inc()
            began = time.perf_counter()
            try:
                async for item in _iterate(behavior, request, context):
                    yield item
            finally:
                finish(context, began)

        return wrap_handler(handler, unary, stream)


RunOf = Callable[[Any], str | None]

TRACKER_SERVICE_PREFIX = "/cairn.tracker.v1.TrackerService/"


def _upload_run(message: Any) -> str | None:
    """An UploadArtifact message names its run in its metadata; content chunks name none."""
    return str(message.metadata.run) if message.WhichOneof("payload") == "metadata" else None


# What a run token may call, and where each request message names the run it touches: the
# tracker's run-writing RPCs, and GetRun to read the run back.
RUN_TOKEN_METHODS: dict[str, RunOf] = {
    TRACKER_SERVICE_PREFIX + "GetRun": lambda request: str(request.name),
    TRACKER_SERVICE_PREFIX + "LogMetrics": lambda request: str(request.run),
    TRACKER_SERVICE_PREFIX + "StreamMetrics": lambda request: str(request.run),
    TRACKER_SERVICE_PREFIX + "LogParams": lambda request: str(request.run),
    TRACKER_SERVICE_PREFIX + "SetRunTags": lambda request: str(request.run),
    TRACKER_SERVICE_PREFIX + "UploadArtifact": _upload_run,
}

# What is read (and dropped) of a client stream rejected mid-way, so the client finishes
# writing and sees the real status (grpc/grpc#36066), as the tracker's servicer does.
DRAIN_LIMIT_BYTES = 256 << 20
DRAIN_LIMIT_SECONDS = 10.0


async def drain_rejected_stream(stream: AsyncIterator[Any]) -> None:
    """Read and drop what a rejected client stream still sends, within the limits above."""
    drained = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_LIMIT_SECONDS):
            async for message in stream:
                drained += message.ByteSize()
                if drained > DRAIN_LIMIT_BYTES:
                    return


def _shown(name: str, limit: int = 120) -> str:
    """A client-supplied name for an error message: never the whole of a huge one."""
    return repr(name) if len(name) <= limit else f"{name[:limit]!r}... ({len(name)} characters)"


class AuthInterceptor(ServerInterceptor):
    """Bearer tokens: those of CAIRN_AUTH_TOKENS may call anything; a run token
    (services.common.run_tokens) may only call RUN_TOKEN_METHODS on its own run, checked on
    every request message before the servicer sees it. Health checks stay open for probes.
    Without CAIRN_AUTH_TOKENS auth is off (loopback only) and credentials are ignored."""

    def __init__(self, tokens: frozenset[str], run_token_secret: bytes | None = None) -> None:
        self._tokens = [t.encode() for t in tokens]
        self._run_token_secret = run_token_secret

    @staticmethod
    def _bearer(details: grpc.HandlerCallDetails) -> str | None:
        """The credential of an `authorization: Bearer <credential>` header, if one came."""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                scheme, _, credential = str(value).partition(" ")
                return credential.strip() if scheme.lower() == "bearer" else None
        return None

    def _is_full_token(self, credential: str) -> bool:
        supplied = credential.encode()
        # Compare against every token so timing does not reveal which one matched.
        matches = [hmac.compare_digest(supplied, token) for token in self._tokens]
        return any(matches)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not self._tokens or method.startswith(HEALTH_SERVICE_PREFIX):
            return handler
        credential = self._bearer(handler_call_details)
        if credential and self._is_full_token(credential):
            return handler
        secret = self._run_token_secret or process_run_token_secret()
        run = verify_run_token(secret, credential) if credential else None
        if run is None:
            return _denied(
                handler,
                Unauthenticated(
                    "missing or invalid bearer token: send 'authorization: Bearer <token>'"
                ),
                method,
            )
        run_of = RUN_TOKEN_METHODS.get(method)
        if run_of is None:
            _, name = _split_method(method)
            return _denied(handler, _outside_run(run, method, f"{name} is not allowed"), method)
        return _scoped_to_run(handler, run, run_of, method)


def _outside_run(run: str, method: str, why: str) -> PermissionDenied:
    return PermissionDenied(
        f"this token may only write run {run}: {why}",
        reason="RUN_TOKEN_SCOPE",
        metadata={"run": run, "method": method},
    )


def _denied(handler: Handler, error: CairnError, method: str) -> Handler:
    """The handler with its behaviour replaced by failing with `error`."""

    async def deny(_behavior: Behavior, _request: Any, context: Context) -> Any:
        await abort_with(context, error, method)

    async def deny_stream(
        _behavior: Behavior, _request: Any, context: Context
    ) -> AsyncIterator[Any]:
        await abort_with(context, error, method)
        yield None  # pragma: no cover - abort raises

    return wrap_handler(handler, deny, deny_stream)


def _scoped_to_run(handler: Handler, run: str, run_of: RunOf, method: str) -> Handler:
    """The handler, admitting only request messages that name `run`. In a client stream a
    message naming no run (an artifact chunk) belongs to the run named before it."""

    async def reject(requested: str | None, context: Context) -> None:
        why = "this request names no run" if requested is None else f"not {_shown(requested)}"
        await abort_with(context, _outside_run(run, method, why), method)

    async def checked_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
        stream = aiter(requests)
        named = False
        async for message in stream:
            requested = run_of(message)
            if requested is None and named:
                yield message
                continue
            if requested is None or not names_run(requested, run):
                await drain_rejected_stream(stream)
                await reject(requested, context)
            named = True
            yield message

    async def admit(request: Any, context: Context) -> Any:
        """The request (or request stream) the servicer may see."""
        if handler.request_streaming:
            return checked_stream(request, context)
        requested = run_of(request)
        if not names_run(requested or "", run):
            await reject(requested, context)
        return request

    async def unary(behavior: Behavior, request: Any, context: Context) -> Any:
        return await behavior(await admit(request, context), context)

    async def stream(behavior: Behavior, request: Any, context: Context) -> AsyncIterator[Any]:
        async for item in _iterate(behavior, await admit(request, context), context):
            yield item

    return wrap_handler(handler, unary, stream)


class ErrorMappingInterceptor(_WrappingInterceptor):
    """Domain errors -> canonical status + google.rpc.ErrorInfo; anything else -> INTERNAL
    with the request id and no traceback or SQL text for the client."""

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = details.method

        async def unary(behavior: Behavior, request: Any, context: Context) -> Any:
            try:
                return await behavior(request, context)
            except Exception as error:
                await abort_with(context, error, method)

        async def stream(behavior: Behavior, request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for item in _iterate(behavior, request, context):
                    yield item
            except Exception as error:
                await abort_with(context, error, method)

        return wrap_handler(handler, unary, stream)


def status_for(error: Exception) -> status_pb2.Status:
    """The google.rpc.Status a client sees for an exception raised while serving."""
    rid = request_id_var.get()
    if isinstance(error, CairnError):
        info = error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
        )
        if rid:
            info.metadata["request_id"] = rid
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=error.code.value, message=error.message, details=[detail])
    message = "internal error" + (f" (request id {rid})" if rid else "")
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"request_id": rid} if rid else {}
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    return status_pb2.Status(code=code_pb2.INTERNAL, message=message, details=[detail])


async def abort_with(context: Context, error: Exception, method: str) -> None:
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if not isinstance(error, CairnError):
        log.exception("unhandled error in %s", method, exc_info=error)
    status = rpc_status.to_status(status_for(error))
    trailing = (*tuple(status.trailing_metadata), (REQUEST_ID_KEY, request_id_var.get()))
    await context.abort(status.code, status.details, trailing)


def default_interceptors(
    tokens: frozenset[str], run_token_secret: bytes | None = None
) -> list[ServerInterceptor]:
    """The interceptors of every server. `run_token_secret` verifies run tokens (pass
    services.common.run_tokens.run_token_secret(settings)); None: this process's random key."""
    return [
        RequestContextInterceptor(),
        MetricsInterceptor(),
        AuthInterceptor(tokens, run_token_secret),
        ErrorMappingInterceptor(),
    ]
