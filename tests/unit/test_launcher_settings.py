"""Which launcher the scheduler's settings choose, and the configuration errors a user sees
when the chosen one cannot start (before any job is claimed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import ConfigurationError
from services.common.settings import Settings
from services.scheduler.app import default_launcher
from services.scheduler.launchers.kubernetes import KubernetesLauncher
from services.scheduler.launchers.local import LocalLauncher
from services.scheduler.launchers.vertex import VertexLauncher

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: ctx, context: {cluster: c, user: u, namespace: ml}}]
current-context: ctx
"""


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, **values)  # type: ignore[arg-type]


def test_local_is_the_default(tmp_path: Path) -> None:
    assert isinstance(default_launcher(settings(tmp_path)), LocalLauncher)


def test_kubernetes_from_a_kubeconfig(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    launcher = default_launcher(
        settings(
            tmp_path,
            scheduler_launcher="kubernetes",
            scheduler_k8s_kubeconfig=config,
            scheduler_k8s_namespace="ml",
            scheduler_k8s_results_uri="gs://bucket/results",
        )
    )
    assert isinstance(launcher, KubernetesLauncher)
    assert launcher.namespace == "ml" and launcher.results_uri == "gs://bucket/results"


def test_kubernetes_without_a_cluster_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigurationError, match="CAIRN_SCHEDULER_K8S_KUBECONFIG"):
        default_launcher(settings(tmp_path, scheduler_launcher="kubernetes"))


def test_results_uri_must_be_on_gcs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scheduler_k8s_results_uri"):
        settings(tmp_path, scheduler_k8s_results_uri="/shared/results")


def test_vertex_names_what_it_is_missing(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigurationError,
        match="CAIRN_SCHEDULER_VERTEX_PROJECT and CAIRN_SCHEDULER_VERTEX_PIPELINE_ROOT",
    ):
        default_launcher(settings(tmp_path, scheduler_launcher="vertex"))
    with pytest.raises(ConfigurationError, match="gs:// URI"):
        default_launcher(
            settings(
                tmp_path,
                scheduler_launcher="vertex",
                scheduler_vertex_project="p",
                scheduler_vertex_pipeline_root="/not/gcs",
            )
        )


def test_vertex_with_its_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Application Default Credentials as `gcloud auth application-default login` leaves
    # them (never used here: nothing is called).
    credentials = tmp_path / "adc.json"
    credentials.write_text(
        '{"type": "authorized_user", "client_id": "id", "client_secret": "secret",'
        ' "refresh_token": "token"}'
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
    launcher = default_launcher(
        settings(
            tmp_path,
            scheduler_launcher="vertex",
            scheduler_vertex_project="my-project",
            scheduler_vertex_location="europe-west4",
            scheduler_vertex_pipeline_root="gs://bucket/pipelines/",
            scheduler_vertex_image="europe-docker.pkg.dev/p/cairn/trainer:1",
            scheduler_vertex_service_account="sa@my-project.iam.gserviceaccount.com",
        )
    )
    assert isinstance(launcher, VertexLauncher)
    assert launcher.parent == "projects/my-project/locations/europe-west4"
    assert launcher.pipeline_root == "gs://bucket/pipelines"
    assert launcher.resource_name("j1") == (
        "projects/my-project/locations/europe-west4/pipelineJobs/cairn-j1"
    )
    assert launcher.pipelines.api_endpoint == "europe-west4-aiplatform.googleapis.com"
