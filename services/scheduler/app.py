"""Wires the scheduler together from Settings: database, schema, tracker channel, launcher,
servicer, and the reconcile loop (started with the server, stopped before it)."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from typing import Final

import grpc

from cairn.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from services.common.clients import open_channel
from services.common.concurrency import BlockingRunner
from services.common.db import Database
from services.common.errors import ConfigurationError
from services.common.migrations import upgrade, verify_schema
from services.common.paging import PageTokenCodec
from services.common.run_tokens import mint_run_token, run_token_secret
from services.common.server import ServiceSpec
from services.common.settings import Settings
from services.scheduler.launchers import Launcher
from services.scheduler.launchers.local import LocalLauncher
from services.scheduler.leader import leadership_for
from services.scheduler.reconciler import Reconciler
from services.scheduler.service import SchedulerService
from services.scheduler.servicer import SchedulerServicer
from services.scheduler.store.store import SchedulerStore
from services.scheduler.tracker_client import TrackerWriter

log = logging.getLogger(__name__)

SERVICE: Final = "scheduler"
MIGRATIONS = Path(__file__).parent / "store" / "migrations"
GRPC_SERVICE_NAME = scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name


def migrate(settings: Settings) -> None:
    """`cairn db upgrade` for the scheduler's schema."""
    database = Database(settings.database_url_for(SERVICE))
    try:
        upgrade(SERVICE, database, MIGRATIONS)
    finally:
        database.dispose()


def open_database(settings: Settings) -> Database:
    database = Database(settings.database_url_for(SERVICE), pool_size=settings.worker_threads)
    if settings.auto_migrate:
        upgrade(SERVICE, database, MIGRATIONS)
    else:
        verify_schema(SERVICE, database, MIGRATIONS)
    return database


def default_launcher(settings: Settings) -> Launcher:
    if settings.scheduler_launcher == "kubernetes":
        # Imported here: the kubernetes client (the k8s extra) is only needed when chosen.
        from services.scheduler.launchers.kubernetes import KubernetesLauncher

        kubeconfig = settings.scheduler_k8s_kubeconfig
        try:
            return KubernetesLauncher(
                namespace=settings.scheduler_k8s_namespace,
                image=settings.scheduler_k8s_image,
                kubeconfig=str(kubeconfig) if kubeconfig else None,
                context=settings.scheduler_k8s_context,
                service_account=settings.scheduler_k8s_service_account,
                image_pull_policy=settings.scheduler_k8s_image_pull_policy,
                active_deadline_seconds=settings.scheduler_k8s_active_deadline_seconds,
                ttl_seconds_after_finished=settings.scheduler_k8s_ttl_seconds_after_finished,
                results_uri=settings.scheduler_k8s_results_uri,
            )
        except Exception as error:  # the client's config errors: no cluster to talk to
            raise ConfigurationError(
                f"CAIRN_SCHEDULER_LAUNCHER=kubernetes, but no cluster configuration was found "
                f"({error}): run in a cluster, or set CAIRN_SCHEDULER_K8S_KUBECONFIG"
            ) from None
    if settings.scheduler_launcher == "vertex":
        return vertex_launcher(settings)
    return LocalLauncher()


def vertex_launcher(settings: Settings) -> Launcher:
    missing = [
        f"CAIRN_SCHEDULER_VERTEX_{name.upper()}"
        for name, value in (
            ("project", settings.scheduler_vertex_project),
            ("pipeline_root", settings.scheduler_vertex_pipeline_root),
        )
        if not value
    ]
    if missing:
        raise ConfigurationError(f"CAIRN_SCHEDULER_LAUNCHER=vertex needs {' and '.join(missing)}")
    try:
        # Imported here: google-cloud-aiplatform (the gcp extra) is only needed when chosen.
        from services.scheduler.launchers.vertex import VertexLauncher

        return VertexLauncher(
            project=str(settings.scheduler_vertex_project),
            location=settings.scheduler_vertex_location,
            pipeline_root=str(settings.scheduler_vertex_pipeline_root),
            image=settings.scheduler_vertex_image,
            service_account=settings.scheduler_vertex_service_account,
            network=settings.scheduler_vertex_network,
            api_endpoint=settings.scheduler_vertex_api_endpoint,
        )
    except ImportError as error:
        raise ConfigurationError(
            f"CAIRN_SCHEDULER_LAUNCHER=vertex needs google-cloud-aiplatform "
            f"(pip install 'cairn[gcp]'): {error}"
        ) from None
    except Exception as error:  # no credentials, a bad pipeline root
        raise ConfigurationError(f"the Vertex AI launcher cannot start: {error}") from None


def build_spec(
    settings: Settings,
    *,
    launcher: Launcher | None = None,
    reconcile: bool = True,
) -> ServiceSpec:
    """The scheduler as a ServiceSpec. `launcher` replaces the configured one (tests run the
    real local launcher with another program); `reconcile=False` serves the API without the
    loop (jobs stay QUEUED)."""
    runner = BlockingRunner(settings.worker_threads, "scheduler")
    servicer: SchedulerServicer | None = None
    database: Database | None = None
    channel: grpc.aio.Channel | None = None
    reconciler: Reconciler | None = None
    loop_task: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal servicer, database, channel, reconciler, loop_task
        database = await asyncio.to_thread(open_database, settings)
        channel = open_channel(settings.backend_address("tracker"))
        work_root = settings.resolved_scheduler_work_dir()
        work_root.mkdir(parents=True, exist_ok=True)
        service = SchedulerService(
            SchedulerStore(database),
            TrackerWriter(
                channel,
                settings.backend_timeout_seconds,
                min(settings.tokens) if settings.tokens else "",
            ),
            runner,
            PageTokenCodec(settings.page_token_secret),
            work_root,
        )
        servicer = SchedulerServicer(service)
        if reconcile:
            reconciler = Reconciler(
                service,
                launcher or default_launcher(settings),
                max_running=settings.scheduler_max_running_jobs,
                poll_seconds=settings.scheduler_poll_seconds,
                reporting_url=settings.resolved_gateway_url(),
                run_token=partial(mint_run_token, run_token_secret(settings)),
                leadership=leadership_for(database),
            )
            loop_task = asyncio.create_task(reconciler.run_forever(), name="scheduler-reconcile")

    def register(server: grpc.aio.Server) -> None:
        assert servicer is not None, "register runs after the start hook"
        scheduler_service_pb2_grpc.add_SchedulerServiceServicer_to_server(  # type: ignore[no-untyped-call]
            servicer, server
        )

    async def stop() -> None:
        if reconciler is not None:
            await reconciler.stop()
        if loop_task is not None:
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
        if channel is not None:
            await channel.close(grace=None)
        runner.shutdown()
        if database is not None:
            database.dispose()

    return ServiceSpec(
        name=SERVICE,
        service_names=[GRPC_SERVICE_NAME],
        register=register,
        on_start=[start],
        on_stop=[stop],
    )
