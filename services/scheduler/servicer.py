"""gRPC handlers of cairn.scheduler.v1.SchedulerService: unpack, call the domain, pack.

Errors are mapped to statuses by the shared interceptor, never here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import empty_pb2

from cairn.scheduler.v1 import (
    dataset_pb2,
    feature_config_pb2,
    job_pb2,
    model_config_pb2,
    scheduler_service_pb2_grpc,
)
from cairn.scheduler.v1 import scheduler_service_pb2 as pb
from services.common.rpc import Context
from services.scheduler.service import SchedulerService
from services.scheduler.store.store import DATASETS, FEATURE_CONFIGS, JOBS, MODEL_CONFIGS


class SchedulerServicer(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, service: SchedulerService) -> None:
        self.service = service

    # datasets
    async def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: Context
    ) -> dataset_pb2.Dataset:
        return await self.service.create_dataset(
            request.dataset, request.dataset_id, request.request_id
        )

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> dataset_pb2.Dataset:
        return await self.service.get_dataset(request.name)

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> pb.ListDatasetsResponse:
        page = await self.service.list(
            DATASETS, request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListDatasetsResponse(datasets=page.items, next_page_token=page.next_page_token)

    async def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.service.delete_dataset(request.name)
        return empty_pb2.Empty()

    # feature configs
    async def CreateFeatureConfig(
        self, request: pb.CreateFeatureConfigRequest, context: Context
    ) -> feature_config_pb2.FeatureConfig:
        return await self.service.create_feature_config(
            request.feature_config, request.feature_config_id, request.request_id
        )

    async def GetFeatureConfig(
        self, request: pb.GetFeatureConfigRequest, context: Context
    ) -> feature_config_pb2.FeatureConfig:
        return await self.service.get_feature_config(request.name)

    async def ListFeatureConfigs(
        self, request: pb.ListFeatureConfigsRequest, context: Context
    ) -> pb.ListFeatureConfigsResponse:
        page = await self.service.list(
            FEATURE_CONFIGS, request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListFeatureConfigsResponse(
            feature_configs=page.items, next_page_token=page.next_page_token
        )

    async def DeleteFeatureConfig(
        self, request: pb.DeleteFeatureConfigRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.service.delete_feature_config(request.name)
        return empty_pb2.Empty()

    # model configs
    async def CreateModelConfig(
        self, request: pb.CreateModelConfigRequest, context: Context
    ) -> model_config_pb2.ModelConfig:
        return await self.service.create_model_config(
            request.model_config, request.model_config_id, request.request_id
        )

    async def GetModelConfig(
        self, request: pb.GetModelConfigRequest, context: Context
    ) -> model_config_pb2.ModelConfig:
        return await self.service.get_model_config(request.name)

    async def ListModelConfigs(
        self, request: pb.ListModelConfigsRequest, context: Context
    ) -> pb.ListModelConfigsResponse:
        page = await self.service.list(
            MODEL_CONFIGS, request.page_size, request.page_token, request.filter, request.order_by
        )
        return pb.ListModelConfigsResponse(
            model_configs=page.items, next_page_token=page.next_page_token
        )

    async def DeleteModelConfig(
        self, request: pb.DeleteModelConfigRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.service.delete_model_config(request.name)
        return empty_pb2.Empty()

    # jobs
    async def CreateJob(self, request: pb.CreateJobRequest, context: Context) -> job_pb2.Job:
        return await self.service.create_job(request.job, request.request_id)

    async def GetJob(self, request: pb.GetJobRequest, context: Context) -> job_pb2.Job:
        return await self.service.get_job(request.name)

    async def ListJobs(self, request: pb.ListJobsRequest, context: Context) -> pb.ListJobsResponse:
        page = await self.service.list(
            JOBS,
            request.page_size,
            request.page_token,
            request.filter,
            request.order_by,
            request.search,
        )
        return pb.ListJobsResponse(jobs=page.items, next_page_token=page.next_page_token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Context) -> job_pb2.Job:
        return await self.service.cancel_job(request.name)

    async def RerunJob(self, request: pb.RerunJobRequest, context: Context) -> job_pb2.Job:
        return await self.service.rerun_job(request.name, request.request_id)

    async def DeleteJob(self, request: pb.DeleteJobRequest, context: Context) -> empty_pb2.Empty:
        await self.service.delete_job(request.name)
        return empty_pb2.Empty()

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: Context
    ) -> AsyncIterator[job_pb2.Job]:
        async for job in self.service.watch_job(request.name):
            yield job
