"""Per-request plumbing of the MLflow layer: the tracker call with the caller's credentials
and a deadline, the default-experiment alias, and the endpoint wrapper that turns every
failure into MLflow's error format.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from cairn.tracker.v1 import experiment_pb2, tracker_service_pb2_grpc
from cairn.tracker.v1 import tracker_service_pb2 as pb
from services.gateway import limits
from services.gateway.backends import Backends
from services.gateway.mlflow.protocol import (
    INTERNAL_ERROR,
    NOT_IMPLEMENTED,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
    MlflowError,
    error_response,
    from_idle_timeout,
    from_input_error,
    from_rpc_error,
    invalid_parameter,
)

log = logging.getLogger(__name__)

TRACKER = "cairn.tracker.v1.TrackerService"
DEFAULT_EXPERIMENT_ALIAS = "0"
DEFAULT_EXPERIMENT_NAME = "Default"
# Ids of Cairn resources (services/tracker/names.py) and MLflow's own experiment id rule.
ID_PATTERN = re.compile(r"[A-Za-z0-9_\-]{1,64}")
# HTTP status for a request whose client went away (nginx's convention; nothing is sent).
CLIENT_CLOSED_REQUEST = 499
# Wrapped Cairn page tokens: MLflow clients treat them as opaque.
TOKEN_PREFIX = "cairn1."


class Call:
    """One HTTP request's access to the tracker: the caller's Authorization passes through
    as gRPC metadata with the request id, and every call has a deadline."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
        self.stub = stub
        self.metadata = metadata
        self.timeout = timeout
        self.used_cached_default = False

    async def unary(self, method: str, request: Message) -> Any:
        try:
            return await getattr(self.stub, method)(
                request, timeout=self.timeout, metadata=self.metadata
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None


class DefaultExperiment:
    """MLflow's experiment "0", which always exists, is the Cairn experiment named "Default"
    (created on first use). MLflow clients keep seeing the id "0" for it, in experiments,
    runs and artifact URIs; Cairn's own API shows its real id."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._missing_until = 0.0
        self._lock = asyncio.Lock()

    async def ensure(self, call: Call) -> str:
        """Cairn's id of the default experiment, creating it if needed."""
        if self._id is not None:
            call.used_cached_default = True
            return self._id
        async with self._lock:
            if self._id is None:
                try:
                    experiment = await self._by_name(call)
                except MlflowError as error:
                    if error.error_code != RESOURCE_DOES_NOT_EXIST:
                        raise
                    experiment = await self._create(call)
                self._id = str(experiment.experiment_id)
            return self._id

    async def known(self, call: Call) -> str | None:
        """Cairn's id of the default experiment if it exists (it is not created)."""
        if self._id is not None or time.monotonic() < self._missing_until:
            return self._id
        try:
            experiment = await self._by_name(call)
        except MlflowError as error:
            if error.error_code != RESOURCE_DOES_NOT_EXIST:
                raise
            self._missing_until = time.monotonic() + 5.0
            return None
        self._id = str(experiment.experiment_id)
        return self._id

    def observe(self, experiment: experiment_pb2.Experiment) -> None:
        if experiment.display_name == DEFAULT_EXPERIMENT_NAME:
            self._id = experiment.experiment_id

    def forget(self) -> None:
        self._id = None

    def alias(self, experiment_id: str, known: str | None) -> str:
        return DEFAULT_EXPERIMENT_ALIAS if experiment_id == known else experiment_id

    async def cairn_id(self, call: Call, experiment_id: str) -> str:
        """Cairn's id for the experiment id an MLflow client sent ("0" or "" is the default
        experiment)."""
        if experiment_id in ("", DEFAULT_EXPERIMENT_ALIAS):
            return await self.ensure(call)
        if not ID_PATTERN.fullmatch(experiment_id):
            raise invalid_parameter(f"Invalid experiment ID: {experiment_id[:100]!r}")
        return experiment_id

    async def _by_name(self, call: Call) -> experiment_pb2.Experiment:
        request = pb.GetExperimentByNameRequest(display_name=DEFAULT_EXPERIMENT_NAME)
        experiment: experiment_pb2.Experiment = await call.unary("GetExperimentByName", request)
        return experiment

    async def _create(self, call: Call) -> experiment_pb2.Experiment:
        request = pb.CreateExperimentRequest(
            experiment=experiment_pb2.Experiment(
                display_name=DEFAULT_EXPERIMENT_NAME,
                description="MLflow's default experiment (id 0 for MLflow clients).",
            )
        )
        try:
            created: experiment_pb2.Experiment = await call.unary("CreateExperiment", request)
            return created
        except MlflowError as error:
            if error.error_code != RESOURCE_ALREADY_EXISTS:
                raise
            return await self._by_name(call)  # created concurrently


def wrap_token(token: str) -> str:
    return TOKEN_PREFIX + token if token else ""


def unwrap_token(token: str) -> str:
    if not token:
        return ""
    if not token.startswith(TOKEN_PREFIX):
        raise invalid_parameter(f"Invalid page token {token[:100]!r}")
    return token[len(TOKEN_PREFIX) :]


Handler = Callable[[Request, Call], Awaitable[Response | dict[str, Any]]]


class Endpoints:
    """Turns handlers into Starlette endpoints: builds the Call, answers dicts as JSON and
    every failure in MLflow's error format (never a traceback)."""

    def __init__(self, backends: Backends, default: DefaultExperiment) -> None:
        self.backends = backends
        self.default = default
        self._channel: Any = None
        self._stub: Any = None

    def stub(self) -> Any:
        """The tracker stub on the backends' current channel (reopened after a restart)."""
        channel = self.backends.channel_for(TRACKER)
        if channel is not self._channel:
            self._stub = tracker_service_pb2_grpc.TrackerServiceStub(channel)  # type: ignore[no-untyped-call]
            self._channel = channel
        return self._stub

    def __call__(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            request_id = limits.valid_request_id(request.headers.get("x-request-id"))
            request.state.idle_seconds = self.backends.timeout  # body reads (limits)
            call: Call | None = None
            try:
                try:
                    call = Call(self.stub(), _metadata(request, request_id), self.backends.timeout)
                    result = await handler(request, call)
                except limits.GatewayInputError as error:
                    raise from_input_error(error) from None
                except limits.IdleTimeoutError as error:
                    raise from_idle_timeout(error) from None
                response = result if isinstance(result, Response) else JSONResponse(result)
                response.headers["X-Request-Id"] = request_id
                return response
            except ClientDisconnect:
                log.info("MLflow %s %s: the client disconnected", request.method, request.url.path)
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            except asyncio.CancelledError:
                if being_cancelled():
                    raise  # the server is stopping this request: let it
                # A tracker call cancelled from this side (its request stream failed).
                log.warning(
                    "MLflow %s %s: the tracker call was cancelled", request.method, request.url.path
                )
                return error_response("CANCELLED", "the tracker call was cancelled", request_id)
            except MlflowError as error:
                if (
                    error.error_code == RESOURCE_DOES_NOT_EXIST
                    and call
                    and call.used_cached_default
                ):
                    self.default.forget()  # the default experiment may have been purged
                failed = error.http_status >= 500 and error.error_code != NOT_IMPLEMENTED
                level = logging.WARNING if failed else logging.DEBUG
                log.log(level, "MLflow %s %s: %s", request.method, request.url.path, error.message)
                return error.response(request_id)
            except Exception:
                log.exception("MLflow %s %s failed", request.method, request.url.path)
                return error_response(
                    INTERNAL_ERROR, f"internal error (request id {request_id})", request_id
                )

        endpoint.__name__ = handler.__name__
        return endpoint


def being_cancelled() -> bool:
    """Whether the current task itself is being cancelled (not merely a call it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _metadata(request: Request, request_id: str) -> tuple[tuple[str, str], ...]:
    metadata = [("x-request-id", request_id)]
    authorization = request.headers.get("authorization")
    if authorization is not None:
        if not authorization.isascii() or not authorization.isprintable():
            raise MlflowError("UNAUTHENTICATED", "malformed Authorization header")
        metadata.append(("authorization", authorization))
    return tuple(metadata)
