"""Configuration from CAIRN_* environment variables, validated once at start-up.

Every service reads the same Settings object; a bad value stops the process before any
server binds, with a message that names the variable.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.errors import ConfigurationError

ServiceName = Literal["tracker", "scheduler", "analytics", "logproxy", "gateway"]

DEFAULT_GRPC_PORTS: dict[str, int] = {
    "tracker": 50051,
    "scheduler": 50052,
    "analytics": 50053,
    "logproxy": 50054,
}
DEFAULT_METRICS_PORTS: dict[str, int] = {
    "tracker": 9101,
    "scheduler": 9102,
    "analytics": 9103,
    "logproxy": 9104,
}


class Settings(BaseSettings):
    """Process configuration. Field `x` is read from the environment variable CAIRN_X."""

    model_config = SettingsConfigDict(env_prefix="CAIRN_", extra="ignore", frozen=True)

    # Where the embedded default keeps its SQLite database and artifact folder.
    data_dir: Path = Path(".cairn")
    # SQLAlchemy URL shared by services; CAIRN_<SVC>_DATABASE_URL overrides it per service.
    database_url: str | None = None
    tracker_database_url: str | None = None
    scheduler_database_url: str | None = None
    # Where artifact content lives: a local folder, file://, gs://bucket/prefix or s3://...
    artifact_root: str | None = None

    # Address every gRPC server binds to. Binding anything but loopback requires auth tokens.
    host: str = "127.0.0.1"
    tracker_port: int = Field(default=DEFAULT_GRPC_PORTS["tracker"], ge=0, le=65535)
    # Prometheus /metrics; 0 disables the endpoint.
    tracker_metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["tracker"], ge=0, le=65535)
    analytics_port: int = Field(default=DEFAULT_GRPC_PORTS["analytics"], ge=0, le=65535)
    scheduler_port: int = Field(default=DEFAULT_GRPC_PORTS["scheduler"], ge=0, le=65535)
    logproxy_port: int = Field(default=DEFAULT_GRPC_PORTS["logproxy"], ge=0, le=65535)
    logproxy_metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["logproxy"], ge=0, le=65535)
    scheduler_metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["scheduler"], ge=0, le=65535)
    analytics_metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["analytics"], ge=0, le=65535)
    metrics_host: str | None = None

    # The REST/JSON gateway (`cairn up` runs it; `cairn serve gateway` alone). It serves its
    # own /metrics on this port.
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    # Where the gateway reaches each backend; default: this host's own service port.
    tracker_address: str | None = None
    analytics_address: str | None = None
    scheduler_address: str | None = None
    logproxy_address: str | None = None

    # The scheduler. Which launcher runs jobs' workloads ("local": a subprocess per job in the
    # trainer runtime, see `cairn trainer-env`; "kubernetes": a batch/v1 Job per job).
    scheduler_launcher: Literal["local", "kubernetes", "vertex"] = "local"
    # The Kubernetes launcher (scheduler_launcher="kubernetes"; needs the k8s extra): the
    # namespace and trainer image of the batch/v1 Jobs; no kubeconfig = the in-cluster
    # service account (else $KUBECONFIG or ~/.kube/config).
    scheduler_k8s_namespace: str = "default"
    scheduler_k8s_image: str = "cairn-trainer:latest"
    scheduler_k8s_kubeconfig: Path | None = None
    scheduler_k8s_context: str | None = None
    scheduler_k8s_service_account: str | None = None
    scheduler_k8s_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    scheduler_k8s_active_deadline_seconds: int = Field(default=86400, ge=60)
    scheduler_k8s_ttl_seconds_after_finished: int = Field(default=86400, ge=0)
    # gs://bucket/prefix where training pods upload their results (metrics history, model,
    # reports) for the scheduler to collect; unset: only the live-reported metrics arrive.
    scheduler_k8s_results_uri: str | None = Field(default=None, pattern=r"^gs://[^/]+")
    # The Vertex AI launcher (scheduler_launcher="vertex"; needs the gcp extra and the trainer
    # runtime, which compiles each job's pipeline): jobs run as PipelineJobs in this project
    # and region, their files under <pipeline root>/<job id> (gs://), every task in the
    # trainer image, as this service account (default: the project's Compute Engine one).
    scheduler_vertex_project: str | None = None
    scheduler_vertex_location: str = "us-central1"
    scheduler_vertex_pipeline_root: str | None = None
    scheduler_vertex_image: str = "cairn-trainer:latest"
    scheduler_vertex_service_account: str | None = None
    scheduler_vertex_network: str | None = None
    # Another API endpoint than {location}-aiplatform.googleapis.com (private endpoints).
    scheduler_vertex_api_endpoint: str | None = None
    # How many jobs may be submitting or running at once; further jobs wait QUEUED.
    scheduler_max_running_jobs: int = Field(default=2, ge=1, le=1000)
    # Seconds between two passes of the reconcile loop (claim, launch, poll, finalize).
    scheduler_poll_seconds: float = Field(default=1.0, gt=0, le=300)
    # Where jobs' working files live (pipeline root, logs, outputs); default <data_dir>/jobs.
    scheduler_work_dir: Path | None = None
    # Base URL at which trainers reach the REST gateway to report metrics live; default
    # http://<this host>:<gateway_port>. Empty disables live reporting (the metrics are then
    # ingested from training_metrics.json when the job ends).
    gateway_url: str | None = None
    # Deadline of a call one service makes to another (analytics reading the tracker), unless
    # the incoming call's own deadline is sooner.
    backend_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Deadline of every unary backend call the gateway makes (an unavailable backend is a 503,
    # a slow one a 504, never a hang), and the idle timeout of its streaming transfers: each
    # chunk from the client and each message from the backend must arrive within it.
    gateway_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Comma-separated origins allowed by CORS ("*" for any); empty disables CORS headers.
    gateway_cors_origins: str = ""

    # Comma-separated bearer tokens accepted by every server; empty = no auth (loopback only).
    auth_tokens: str = ""
    # HMAC key for page tokens. Unset: a random key per process (tokens then do not survive a
    # restart, and replicas must share one; set it in production).
    page_token_secret: str | None = None
    # HMAC key for per-job run tokens (services.common.run_tokens: the scheduler mints them,
    # the tracker accepts them only for writing their own run). Unset: a random key per
    # process, fine when one process runs every service (the embedded default); separate
    # processes (the scheduler and the tracker on Kubernetes) must share one.
    run_token_secret: str | None = Field(default=None, min_length=16)

    # Apply alembic migrations when a server starts (the embedded default). On Kubernetes a
    # Helm hook Job migrates and servers only verify the schema version.
    auto_migrate: bool = True
    # Threads that run blocking database and storage work for the async servers.
    worker_threads: int = Field(default=16, ge=1, le=256)
    # Seconds a SIGTERM'd server waits for in-flight RPCs before cancelling them.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    # Seconds between reporting NOT_SERVING and closing the listener on SIGTERM, so load
    # balancers and kubelet probes stop sending traffic first (the chart sets a few seconds).
    drain_delay_seconds: float = Field(default=0.0, ge=0, le=120)
    # Largest gRPC message accepted, in MiB.
    max_message_mb: int = Field(default=64, ge=1, le=1024)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _require_auth_off_loopback(self) -> Settings:
        if not is_loopback(self.host) and not self.tokens:
            raise ValueError(
                f"CAIRN_HOST={self.host} is not a loopback address: set CAIRN_AUTH_TOKENS "
                "(comma-separated bearer tokens) so the servers are not open to the network"
            )
        return self

    @cached_property
    def tokens(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.auth_tokens.split(",") if t.strip())

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def database_url_for(self, service: ServiceName) -> str:
        override = getattr(self, f"{service}_database_url", None)
        if override:
            return str(override)
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir() / 'cairn.db'}"

    def resolved_scheduler_work_dir(self) -> Path:
        work_dir = self.scheduler_work_dir or self.resolved_data_dir() / "jobs"
        return work_dir.expanduser().resolve()

    def resolved_gateway_url(self) -> str:
        if self.gateway_url is not None:
            return self.gateway_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.gateway_port}"

    def resolved_artifact_root(self) -> str:
        return self.artifact_root or str(self.resolved_data_dir() / "artifacts")

    def grpc_port(self, service: ServiceName) -> int:
        return int(getattr(self, f"{service}_port"))

    def backend_address(self, service: ServiceName) -> str:
        """host:port where clients (the gateway) reach a gRPC service."""
        configured = getattr(self, f"{service}_address", None)
        if configured:
            return str(configured)
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.grpc_port(service)}"

    def metrics_port(self, service: ServiceName) -> int:
        return int(getattr(self, f"{service}_metrics_port"))


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def load_settings(**overrides: object) -> Settings:
    """Read and validate the environment; ConfigurationError names every bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = "_".join(str(part) for part in error["loc"]).upper()
            name = f"CAIRN_{location}" if location else "settings"
            problems.append(f"{name}: {error['msg']}")
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(problems)) from None
