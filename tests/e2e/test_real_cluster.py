"""Against a real Kubernetes cluster: run only where KUBECONFIG points at one (skipped here,
where no cluster is reachable; the same paths run against tests/k8s_api.py everywhere).

- The chart installs: `helm install --dry-run=server` has the API server validate and admit
  every object (the in-chart PostgreSQL, so it needs no database).
- The Kubernetes launcher runs a Job to its end: a small public image stands in for the
  trainer (CAIRN_TEST_K8S_IMAGE, default busybox) and prints a trainer progress line, which
  the launcher reads from the pod's log; the log proxy's pod source reads the same line;
  cancel deletes a running Job in the foreground.

CAIRN_TEST_K8S_NAMESPACE chooses the namespace (default: "default"); the test deletes what it
creates.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import deploy_tools
import pytest

from services.logproxy.sources.kubernetes import KubernetesLogs, PodSelector
from services.scheduler.launchers import MACHINE_TYPES, Handle, LaunchSpec, WorkloadStatus
from services.scheduler.launchers.kubernetes import KubernetesLauncher

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"), reason="needs a real cluster (KUBECONFIG is not set)"
    ),
]

NAMESPACE = os.environ.get("CAIRN_TEST_K8S_NAMESPACE", "default")
IMAGE = os.environ.get("CAIRN_TEST_K8S_IMAGE", "busybox:1.36")
CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "cairn"
PROGRESS = "cairn_trainer.progress: progress: Trainer 55.0% epoch 1/2 finished"


def test_the_chart_installs_on_the_cluster() -> None:
    result = subprocess.run(
        [
            str(deploy_tools.helm()),
            *("install", f"cairn-test-{uuid.uuid4().hex[:6]}", str(CHART)),
            *("--namespace", NAMESPACE, "--dry-run=server"),
            *("--set", "postgresql.enabled=true"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _launcher(command: list[str]) -> KubernetesLauncher:
    # Small enough for any cluster: the tier's size is what the trainer would ask for.
    return KubernetesLauncher(
        namespace=NAMESPACE,
        image=IMAGE,
        command=command,
        kubeconfig=os.environ["KUBECONFIG"],
        active_deadline_seconds=600,
        ttl_seconds_after_finished=60,
    )


def _spec(tmp_path: Path) -> LaunchSpec:
    job_id = f"it{uuid.uuid4().hex[:10]}"
    machine = MACHINE_TYPES["SMALL"]
    return LaunchSpec(job_id, tmp_path / job_id, {"job_id": job_id}, machine)


def _wait(launcher: KubernetesLauncher, handle: Handle, phases: tuple[str, ...]) -> WorkloadStatus:
    deadline = time.monotonic() + 300
    while True:
        status = launcher.status(handle)
        if status.phase in phases:
            return status
        assert time.monotonic() < deadline, f"the Job never got to {phases}: {status}"
        time.sleep(2)


def test_a_job_runs_to_its_end_and_its_log_is_read(tmp_path: Path) -> None:
    launcher = _launcher(["sh", "-c", f"echo '{PROGRESS}' >&2; sleep 5"])
    handle = launcher.launch(_spec(tmp_path))
    try:
        done = _wait(launcher, handle, ("succeeded", "failed", "lost"))
        assert done.phase == "succeeded", done.message
        assert (done.stage, done.epoch) == ("TRAINER", 1)
        location = launcher.log_location(handle)
        logs = KubernetesLogs(None, kubeconfig=os.environ["KUBECONFIG"])
        snapshot = logs.read(PodSelector.of(location.attributes))
        assert any("epoch 1/2 finished" in record.message for record in snapshot.records)
    finally:
        launcher.cancel(handle)


def test_cancel_deletes_a_running_job(tmp_path: Path) -> None:
    launcher = _launcher(["sh", "-c", "sleep 600"])
    handle = launcher.launch(_spec(tmp_path))
    _wait(launcher, handle, ("running",))
    launcher.cancel(handle)
    assert _wait(launcher, handle, ("lost",)).message.endswith("is gone")
