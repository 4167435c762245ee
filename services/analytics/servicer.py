"""gRPC handlers of cairn.analytics.v1.AnalyticsService: unpack, call the domain, pack.

Errors are mapped to statuses by the shared interceptor, never here.
"""

from __future__ import annotations

from cairn.analytics.v1 import analytics_service_pb2 as pb
from cairn.analytics.v1 import analytics_service_pb2_grpc
from services.analytics.service import AnalyticsService, _scope
from services.common.clients import CallOptions
from services.common.rpc import Context


class AnalyticsServicer(analytics_service_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, service: AnalyticsService, backend_timeout: float) -> None:
        self.service = service
        self.backend_timeout = backend_timeout

    def _options(self, context: Context) -> CallOptions:
        return CallOptions.for_call(context, self.backend_timeout)

    async def CompareRuns(
        self, request: pb.CompareRunsRequest, context: Context
    ) -> pb.RunComparison:
        return await self.service.compare_runs(
            list(request.runs),
            list(request.metric_keys),
            request.max_points,
            dict(request.directions),
            self._options(context),
        )

    async def GetLeaderboard(
        self, request: pb.GetLeaderboardRequest, context: Context
    ) -> pb.Leaderboard:
        return await self.service.leaderboard(
            _scope(request.experiment_ids, request.filter, request.model_type),
            request.metric,
            request.direction,
            request.top_k,
            request.group_by,
            list(request.param_keys),
            request.include_unfinished,
            self._options(context),
        )

    async def GetDashboard(self, request: pb.GetDashboardRequest, context: Context) -> pb.Dashboard:
        return await self.service.dashboard(
            _scope(request.experiment_ids, request.filter, request.model_type),
            request.metric,
            request.direction,
            request.top_k,
            request.epoch_metric,
            list(request.heatmap_metrics),
            self._options(context),
        )

    async def GetHyperparameterInsights(
        self, request: pb.GetHyperparameterInsightsRequest, context: Context
    ) -> pb.HyperparameterInsights:
        return await self.service.insights(
            _scope(request.experiment_ids, request.filter, request.model_type),
            request.metric,
            request.direction,
            list(request.param_keys),
            request.top_fraction,
            request.importance_method,
            self._options(context),
        )

    async def SuggestExperiments(
        self, request: pb.SuggestExperimentsRequest, context: Context
    ) -> pb.SuggestExperimentsResponse:
        return await self.service.suggest(
            _scope(request.experiment_ids, request.filter, request.model_type),
            request.metric,
            request.direction,
            request.count,
            list(request.param_keys),
            request.seed,
            self._options(context),
        )
