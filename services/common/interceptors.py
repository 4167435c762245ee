"""Server interceptors shared by every Cairn service.

Order (outermost first): request id + structured access log, Prometheus metrics, bearer-token
auth, error mapping. Each wraps the method handler once per call; servicer code stays free
of cross-cutting concerns.
"""

from __future__ import annotations

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

from services.common.errors import ERROR_DOMAIN, CairnError
from services.common.logs import request_id_var
from services.common.request_ids import valid_request_id
from services.common.rpc import Context, Handler, ServerInterceptor

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


class AuthInterceptor(ServerInterceptor):
    """Bearer tokens from CAIRN_AUTH_TOKENS; health checks stay open for probes."""

    def __init__(self, tokens: frozenset[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                scheme, _, credential = str(value).partition(" ")
                if scheme.lower() != "bearer":
                    return False
                supplied = credential.strip().encode()
                # Compare against every token so timing does not reveal which one matched.
                matches = [hmac.compare_digest(supplied, token) for token in self._tokens]
                return any(matches)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or not self._tokens
            or handler_call_details.method.startswith(HEALTH_SERVICE_PREFIX)
            or self._authorized(handler_call_details)
        ):
            return handler

        async def deny_unary(_request: Any, context: Context) -> Any:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid bearer token: send 'authorization: Bearer <token>'",
            )

        async def deny_stream(_request: Any, context: Context) -> AsyncIterator[Any]:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid bearer token: send 'authorization: Bearer <token>'",
            )
            yield None  # pragma: no cover - abort raises

        async def deny(behavior: Behavior, request: Any, context: Context) -> Any:
            return await deny_unary(request, context)

        async def deny_iter(
            behavior: Behavior, request: Any, context: Context
        ) -> AsyncIterator[Any]:
            async for item in deny_stream(request, context):
                yield item

        return wrap_handler(handler, deny, deny_iter)


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


def default_interceptors(tokens: frozenset[str]) -> list[ServerInterceptor]:
    return [
        RequestContextInterceptor(),
        MetricsInterceptor(),
        AuthInterceptor(tokens),
        ErrorMappingInterceptor(),
    ]
