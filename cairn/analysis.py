"""A client of Cairn's analytics service (comparisons, leaderboards, the dashboard,
hyperparameter insight, suggested experiments).

    from cairn.analysis import Analytics
    with Analytics() as analytics:                       # CAIRN_ANALYTICS_URI, 127.0.0.1:50053
        board = analytics.leaderboard(["<experiment id>"], metric="val_loss")

Every method returns the service's response message (cairn.analytics.v1); failures raise the
same CairnError subclasses as the tracker client.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc

from cairn.analytics.v1 import analytics_service_pb2 as pb
from cairn.analytics.v1 import analytics_service_pb2_grpc
from cairn.errors import from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50053"
T = TypeVar("T")
GoalName = Literal["minimize", "maximize"] | None
_DIRECTIONS = {
    None: pb.DIRECTION_UNSPECIFIED,
    "minimize": pb.DIRECTION_MINIMIZE,
    "maximize": pb.DIRECTION_MAXIMIZE,
}
_GROUPS = {
    None: pb.GROUP_BY_UNSPECIFIED,
    "model_type": pb.GROUP_BY_MODEL_TYPE,
    "dataset": pb.GROUP_BY_DATASET,
}
_METHODS = {
    "ped_anova": pb.IMPORTANCE_METHOD_PED_ANOVA,
    "fanova": pb.IMPORTANCE_METHOD_FANOVA,
}


def _scope(
    experiment_ids: Sequence[str], filter: str, model_type: str, metric: str, direction: GoalName
) -> dict[str, Any]:
    """The request fields every analysis shares: which runs, which metric, which way."""
    return {
        "experiment_ids": list(experiment_ids),
        "filter": filter,
        "model_type": model_type,
        "metric": metric,
        "direction": _DIRECTIONS[direction],
    }


class Analytics:
    def __init__(
        self, target: str | None = None, *, token: str | None = None, timeout: float = 120.0
    ) -> None:
        self.target = target or os.environ.get("CAIRN_ANALYTICS_URI") or DEFAULT_TARGET
        token = token if token is not None else os.environ.get("CAIRN_TOKEN")
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._timeout = timeout
        self._channel = grpc.insecure_channel(
            self.target, options=[("grpc.max_receive_message_length", 256 << 20)]
        )
        self.stub = analytics_service_pb2_grpc.AnalyticsServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def _call(self, method: Callable[..., Any], request: Any, response: type[T]) -> T:
        try:
            result = method(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        assert isinstance(result, response)
        return result

    def compare_runs(
        self,
        runs: Sequence[str],
        *,
        metric_keys: Sequence[str] = (),
        max_points: int = 0,
        directions: dict[str, GoalName] | None = None,
    ) -> pb.RunComparison:
        request = pb.CompareRunsRequest(
            runs=list(runs), metric_keys=list(metric_keys), max_points=max_points
        )
        for key, goal in (directions or {}).items():
            request.directions[key] = _DIRECTIONS[goal]
        return self._call(self.stub.CompareRuns, request, pb.RunComparison)

    def leaderboard(
        self,
        experiment_ids: Sequence[str] = (),
        *,
        metric: str,
        filter: str = "",
        model_type: str = "",
        direction: GoalName = None,
        top_k: int = 0,
        group_by: Literal["model_type", "dataset"] | None = None,
        param_keys: Sequence[str] = (),
        include_unfinished: bool = False,
    ) -> pb.Leaderboard:
        return self._call(
            self.stub.GetLeaderboard,
            pb.GetLeaderboardRequest(
                **_scope(experiment_ids, filter, model_type, metric, direction),
                top_k=top_k,
                group_by=_GROUPS[group_by],
                param_keys=list(param_keys),
                include_unfinished=include_unfinished,
            ),
            pb.Leaderboard,
        )

    def dashboard(
        self,
        experiment_ids: Sequence[str] = (),
        *,
        metric: str,
        filter: str = "",
        model_type: str = "",
        direction: GoalName = None,
        top_k: int = 0,
        epoch_metric: str = "",
        heatmap_metrics: Sequence[str] = (),
    ) -> pb.Dashboard:
        return self._call(
            self.stub.GetDashboard,
            pb.GetDashboardRequest(
                **_scope(experiment_ids, filter, model_type, metric, direction),
                top_k=top_k,
                epoch_metric=epoch_metric,
                heatmap_metrics=list(heatmap_metrics),
            ),
            pb.Dashboard,
        )

    def insights(
        self,
        experiment_ids: Sequence[str] = (),
        *,
        metric: str,
        filter: str = "",
        model_type: str = "",
        direction: GoalName = None,
        param_keys: Sequence[str] = (),
        top_fraction: float = 0.0,
        method: Literal["ped_anova", "fanova"] = "ped_anova",
    ) -> pb.HyperparameterInsights:
        return self._call(
            self.stub.GetHyperparameterInsights,
            pb.GetHyperparameterInsightsRequest(
                **_scope(experiment_ids, filter, model_type, metric, direction),
                param_keys=list(param_keys),
                top_fraction=top_fraction,
                importance_method=_METHODS[method],
            ),
            pb.HyperparameterInsights,
        )

    def suggest(
        self,
        experiment_ids: Sequence[str] = (),
        *,
        metric: str,
        filter: str = "",
        model_type: str = "",
        direction: GoalName = None,
        count: int = 0,
        param_keys: Sequence[str] = (),
        seed: int = 0,
    ) -> pb.SuggestExperimentsResponse:
        return self._call(
            self.stub.SuggestExperiments,
            pb.SuggestExperimentsRequest(
                **_scope(experiment_ids, filter, model_type, metric, direction),
                count=count,
                param_keys=list(param_keys),
                seed=seed,
            ),
            pb.SuggestExperimentsResponse,
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Analytics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
