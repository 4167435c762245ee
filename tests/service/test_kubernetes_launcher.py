"""The Kubernetes launcher through the official `kubernetes` client against a local API
server (tests/k8s_api.py) that speaks the real REST paths with real object JSON: the Job it
creates (labels, image, command, resources per tier, env, deadlines, the spec Secret owned
by the Job), idempotent launch, status mapping, Foreground cancel, adoption by label, the
watch resuming after 410 Gone; and the real scheduler running a job through it."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_api import FakeKubernetes
from kubernetes import client
from test_scheduler_jobs import get_run, history, in_state, make_configs, submit

from cairn.scheduler.v1 import job_pb2, scheduler_service_pb2
from cairn.tracker.v1 import run_pb2
from services.common.gcs import storage_client
from services.common.settings import Settings
from services.scheduler.launchers import MACHINE_TYPES, LaunchSpec, LogLocation
from services.scheduler.launchers.kubernetes import (
    KubernetesLauncher,
    job_name,
    secret_name,
    watch_jobs,
)

from artifact_emulators import Emulator
from cairn_testing import scheduler_with_launcher, wait_job

NAMESPACE = "ml"
IMAGE = "registry.example/cairn-trainer:1.2.3"


@pytest.fixture
def cluster() -> Iterator[FakeKubernetes]:
    fake = FakeKubernetes().start()
    yield fake
    fake.stop()


def api_client(cluster: FakeKubernetes) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = cluster.url
    return client.ApiClient(configuration)


def make_launcher(cluster: FakeKubernetes, **options: Any) -> KubernetesLauncher:
    return KubernetesLauncher(
        api_client(cluster),
        namespace=NAMESPACE,
        image=IMAGE,
        active_deadline_seconds=options.pop("active_deadline_seconds", 7200),
        ttl_seconds_after_finished=options.pop("ttl_seconds_after_finished", 600),
        **options,
    )


def launch_spec(job_id: str, tier: str = "SMALL", tmp: Path = Path("/work")) -> LaunchSpec:
    return LaunchSpec(
        job_id=job_id,
        work_dir=tmp / job_id,
        trainer_spec={"job_id": job_id, "reporting": {"token": "secret-token"}},
        machine=MACHINE_TYPES[tier],
    )


@pytest.mark.parametrize(
    ("tier", "cpu", "memory"),
    [("SMALL", "4", "16Gi"), ("MEDIUM", "8", "32Gi"), ("LARGE", "16", "64Gi")],
)
def test_launch_creates_the_job_and_its_spec_secret(
    cluster: FakeKubernetes, tier: str, cpu: str, memory: str
) -> None:
    launcher = make_launcher(cluster)
    handle = launcher.launch(launch_spec("abc123", tier))
    name = job_name("abc123")
    assert name == "cairn-job-abc123"
    job = cluster.job(name, NAMESPACE)
    assert handle["name"] == name and handle["uid"] == job["metadata"]["uid"]
    assert handle["namespace"] == NAMESPACE and handle["launcher"] == "kubernetes"
    labels = {"app.kubernetes.io/managed-by": "cairn", "cairn.dev/job-id": "abc123"}
    assert labels.items() <= job["metadata"]["labels"].items()
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 7200
    assert spec["ttlSecondsAfterFinished"] == 600
    pod = spec["template"]["spec"]
    assert labels.items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == [
        "python",
        "-m",
        "cairn_trainer",
        "run",
        "--spec",
        "/etc/cairn/spec.json",
    ]
    assert container["resources"] == {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    machine = MACHINE_TYPES[tier]
    assert env["CAIRN_JOB_ID"] == "abc123"
    assert env["CAIRN_HARDWARE_TIER"] == tier
    assert env["CAIRN_MACHINE_TYPE"] == machine.machine_type
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["spec"]["mountPath"] == "/etc/cairn" and mounts["spec"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["spec"]["secret"]["secretName"] == secret_name("abc123")
    # The spec (with the run token) is in a Secret the Job owns: deleted with it.
    secret = cluster.get("secrets", secret_name("abc123"), NAMESPACE)
    assert secret is not None and secret["kind"] == "Secret"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": job["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }
    stored = json.loads(base64.b64decode(secret["data"]["spec.json"]))
    assert stored["reporting"]["token"] == "secret-token"
    assert launcher.log_location(handle) == LogLocation(
        "kubernetes",
        {
            "namespace": NAMESPACE,
            "label_selector": "app.kubernetes.io/managed-by=cairn,cairn.dev/job-id=abc123",
            "container": "trainer",
        },
    )
    assert launcher.results_dir(handle) == Path("/work/abc123")


def test_a_second_launch_adopts_the_existing_job(cluster: FakeKubernetes) -> None:
    first = make_launcher(cluster).launch(launch_spec("j1"))
    second = make_launcher(cluster).launch(launch_spec("j1"))
    assert second == first
    creates = [
        r for r in cluster.requests if r == ("POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")
    ]
    assert len(creates) == 2  # the second was refused with 409 and adopted
    assert len([k for k in cluster.objects if k[0] == "jobs"]) == 1


def test_a_launch_whose_secret_was_lost_recreates_it(cluster: FakeKubernetes) -> None:
    launcher = make_launcher(cluster)
    launcher.launch(launch_spec("j2"))
    with cluster.changed:
        del cluster.objects[("secrets", NAMESPACE, secret_name("j2"))]
    launcher.launch(launch_spec("j2"))
    assert cluster.get("secrets", secret_name("j2"), NAMESPACE) is not None


def test_status_maps_the_job_state(cluster: FakeKubernetes) -> None:
    launcher = make_launcher(cluster)
    handle = launcher.launch(launch_spec("s1"))
    name = handle["name"]
    assert launcher.status(handle).phase == "pending"
    pod = cluster.run_job(name, NAMESPACE, pending=True)
    waiting = launcher.status(handle)
    assert waiting.phase == "pending" and "ContainerCreating" in waiting.message
    with cluster.changed:
        cluster.objects[("pods", NAMESPACE, pod)]["status"]["phase"] = "Running"
    cluster.add_log(
        pod,
        "INFO progress: Trainer 58.3% epoch 1/3 finished",
        json.dumps(
            {
                "stage": "Trainer",
                "progress": 58.3,
                "epoch": 1,
                "loss": 0.5,
                "message": "epoch 1/3 finished",
            }
        ),
        "a line that is not JSON",
        namespace=NAMESPACE,
    )
    running = launcher.status(handle)
    assert running.phase == "running"
    assert running.message == "epoch 1/3 finished"
    assert (running.stage, running.progress_percent, running.epoch, running.loss) == (
        "TRAINER",
        58.3,
        1,
        0.5,
    )
    cluster.succeed_job(name, NAMESPACE)
    done = launcher.status(handle)
    assert done.phase == "succeeded" and done.progress_percent == 100.0


def test_stage_and_progress_come_from_the_trainers_log_lines(cluster: FakeKubernetes) -> None:
    """What cairn_trainer logs for each progress event (cli._configure_logging's format)."""
    launcher = make_launcher(cluster)
    handle = launcher.launch(launch_spec("p1"))
    pod = cluster.run_job(handle["name"], NAMESPACE)
    cluster.add_log(
        pod,
        "2026-12-04 18:00:00,001 INFO cairn_trainer.progress: progress: Transform 25.0% "
        "Transform started",
        "2026-12-04 18:00:09,002 WARNING absl: some TFX noise",
        namespace=NAMESPACE,
    )
    status = launcher.status(handle)
    assert (status.phase, status.stage, status.progress_percent, status.epoch) == (
        "running",
        "TRANSFORM",
        25.0,
        0,
    )
    cluster.add_log(
        pod,
        "2026-12-04 18:01:00,003 INFO cairn_trainer.progress: progress: Trainer 76.67% "
        "epoch 2/3 finished",
        namespace=NAMESPACE,
    )
    status = launcher.status(handle)
    assert (status.stage, status.progress_percent, status.epoch, status.loss) == (
        "TRAINER",
        76.67,
        2,
        None,
    )


def test_a_failed_job_reports_why(cluster: FakeKubernetes) -> None:
    launcher = make_launcher(cluster)
    handle = launcher.launch(launch_spec("f1"))
    pod = cluster.run_job(handle["name"], NAMESPACE)
    cluster.add_log(
        pod, "Traceback (most recent call last):", "ValueError: boom", namespace=NAMESPACE
    )
    cluster.fail_job(
        handle["name"],
        NAMESPACE,
        reason="DeadlineExceeded",
        message="Job was active longer than specified deadline",
        exit_code=137,
    )
    failed = launcher.status(handle)
    assert failed.phase == "failed"
    assert "DeadlineExceeded" in failed.message
    assert "Job was active longer than specified deadline" in failed.message
    assert "exited with code 137" in failed.message
    assert "ValueError: boom" in failed.details


def test_a_deleted_job_is_lost(cluster: FakeKubernetes) -> None:
    launcher = make_launcher(cluster)
    handle = launcher.launch(launch_spec("d1"))
    cluster.delete_job(handle["name"], NAMESPACE)
    lost = launcher.status(handle)
    assert lost.phase == "lost" and "gone" in lost.message
    # The Secret went with its owner.
    assert cluster.get("secrets", secret_name("d1"), NAMESPACE) is None


def test_cancel_deletes_in_the_foreground(cluster: FakeKubernetes) -> None:
    launcher = make_launcher(cluster)
    handle = launcher.launch(launch_spec("c1"))
    cluster.run_job(handle["name"], NAMESPACE)
    launcher.cancel(handle)
    assert ("jobs", NAMESPACE, handle["name"], "Foreground") in cluster.deletions
    assert cluster.get("jobs", handle["name"], NAMESPACE) is None
    assert not [k for k in cluster.objects if k[0] in ("pods", "secrets")]
    launcher.cancel(handle)  # again: already gone is fine
    assert launcher.status(handle).phase == "lost"


def test_adopt_finds_the_job_by_label_after_a_restart(cluster: FakeKubernetes) -> None:
    handle = make_launcher(cluster).launch(launch_spec("r1", "MEDIUM"))
    restarted = make_launcher(cluster)
    assert restarted.adopt("r1", Path("/work/r1")) == handle
    assert restarted.adopt("other", Path("/work/other")) is None
    cluster.run_job(handle["name"], NAMESPACE)
    assert restarted.status(handle).phase == "running"


def test_the_watch_resumes_after_410_gone(cluster: FakeKubernetes) -> None:
    launcher = make_launcher(cluster)
    first = launcher.launch(launch_spec("w1"))
    stop = threading.Event()
    seen: list[tuple[str, str, str]] = []
    changed = threading.Condition()

    def follow() -> None:
        for event, job in watch_jobs(launcher.batch, NAMESPACE, stop=stop, timeout_seconds=1):
            with changed:
                seen.append((event, job.metadata.name, job.metadata.resource_version))
                changed.notify_all()

    def wait_until(predicate: Any) -> None:
        with changed:
            assert changed.wait_for(lambda: predicate(seen), timeout=10), seen

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    wait_until(lambda s: ("SYNC", first["name"]) in [(e, n) for e, n, _ in s])
    cluster.run_job(first["name"], NAMESPACE)
    wait_until(lambda s: ("MODIFIED", first["name"]) in [(e, n) for e, n, _ in s])
    # Let the watch time out and resume from the last resourceVersion it saw.
    time.sleep(1.5)
    cluster.succeed_job(first["name"], NAMESPACE)
    wait_until(lambda s: sum(1 for e, n, _ in s if e == "MODIFIED") == 2)
    # The history is compacted while the watch reconnects: 410 Gone -> list again -> resume.
    count = len(seen)
    cluster.compact()
    time.sleep(1.5)
    second = launcher.launch(launch_spec("w2"))
    wait_until(
        lambda s: (
            ("ADDED", second["name"]) in [(e, n) for e, n, _ in s[count:]]
            or ("SYNC", second["name"]) in [(e, n) for e, n, _ in s[count:]]
        )
    )
    wait_until(lambda s: any(e == "SYNC" for e, _, _ in s[count:]))
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_launcher_watch_calls_back_with_job_ids(cluster: FakeKubernetes) -> None:
    launcher = make_launcher(cluster)
    handle = launcher.launch(launch_spec("cb1"))
    stop = threading.Event()
    woken: list[str] = []
    thread = threading.Thread(
        target=launcher.watch, args=(woken.append, stop), kwargs={"timeout_seconds": 1}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not woken and time.monotonic() < deadline:
        time.sleep(0.05)  # the first list
    cluster.run_job(handle["name"], NAMESPACE)
    while woken.count("cb1") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    assert woken.count("cb1") >= 2  # the first list, then the pod starting


# ---------------------------------------------------------------------- the real scheduler


def test_the_scheduler_runs_jobs_as_kubernetes_jobs(
    cluster: FakeKubernetes, settings: Settings, sample_csv: Path
) -> None:
    launcher = make_launcher(cluster)
    with scheduler_with_launcher(
        settings, launcher, scheduler_poll_seconds=0.1, scheduler_max_running_jobs=2
    ) as stack:
        configs = make_configs(stack.scheduler, sample_csv)
        job = submit(stack, configs, 10, hardware_tier=job_pb2.HARDWARE_TIER_MEDIUM)
        running = wait_job(stack.scheduler, job, in_state(job_pb2.JOB_STATE_RUNNING))
        name = job_name(running.job_id)
        created = cluster.job(name, NAMESPACE)
        (container,) = created["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi"}
        pod = cluster.run_job(name, NAMESPACE)
        cluster.add_log(
            pod,
            json.dumps({"stage": "Transform", "progress": 30.0, "message": "Transform started"}),
            namespace=NAMESPACE,
        )
        wait_job(stack.scheduler, job, lambda j: j.progress_percent >= 30.0)
        cluster.succeed_job(name, NAMESPACE)
        done = wait_job(stack.scheduler, job, in_state(job_pb2.JOB_STATE_SUCCEEDED))
        assert history(done) == ["QUEUED", "SUBMITTING", "RUNNING", "SUCCEEDED"]
        assert get_run(stack, done).status == run_pb2.RUN_STATUS_FINISHED

        # Cancel: the Job is deleted in the foreground, the job ends CANCELLED.
        other = submit(stack, configs, 10)
        wait_job(stack.scheduler, other, in_state(job_pb2.JOB_STATE_RUNNING))
        other_name = job_name(wait_job(stack.scheduler, other, lambda j: True).job_id)
        cluster.run_job(other_name, NAMESPACE)
        stack.scheduler.CancelJob(scheduler_service_pb2.CancelJobRequest(name=other.name))
        cancelled = wait_job(stack.scheduler, other, in_state(job_pb2.JOB_STATE_CANCELLED))
        assert history(cancelled)[-2:] == ["CANCELLING", "CANCELLED"]
        assert ("jobs", NAMESPACE, other_name, "Foreground") in cluster.deletions
        assert get_run(stack, cancelled).status == run_pb2.RUN_STATUS_KILLED


def test_the_watch_wakes_the_scheduler_up_when_a_job_ends(
    cluster: FakeKubernetes, settings: Settings, sample_csv: Path
) -> None:
    """With polls 300 s apart, only the launcher's watch can make the scheduler see the
    Job's end within the wait below."""
    launcher = make_launcher(cluster)
    with scheduler_with_launcher(settings, launcher, scheduler_poll_seconds=300.0) as stack:
        configs = make_configs(stack.scheduler, sample_csv)
        job = submit(stack, configs, 10)
        # Creating the job wakes the loop (a service change), which launches it.
        running = wait_job(stack.scheduler, job, in_state(job_pb2.JOB_STATE_RUNNING))
        # The passes that follow the launch end; the loop then sleeps for its 300 s. (Were
        # this too short, the test would pass without a watch, never fail with one.)
        time.sleep(1.5)
        name = job_name(running.job_id)
        cluster.run_job(name, NAMESPACE)
        cluster.succeed_job(name, NAMESPACE)
        done = wait_job(stack.scheduler, job, in_state(job_pb2.JOB_STATE_SUCCEEDED), timeout=60)
        assert history(done)[-1] == "SUCCEEDED"


def test_results_travel_through_cloud_storage(
    cluster: FakeKubernetes, tmp_path: Path, gcs_emulator: Emulator
) -> None:
    """With a results URI the trainer's spec says where to upload (cairn_trainer.remote) and
    results_dir downloads what it uploaded; without one it is the (pod-local) work_dir."""
    root = f"gs://{gcs_emulator.bucket}/k8s-results"
    launcher = make_launcher(cluster, results_uri=root + "/")
    handle = launcher.launch(launch_spec("res1", "SMALL", tmp_path))
    secret = cluster.get("secrets", secret_name("res1"), NAMESPACE)
    assert secret is not None
    stored = json.loads(base64.b64decode(secret["data"]["spec.json"]))
    assert stored["results_uri"] == f"{root}/res1/results"
    bucket = storage_client("test").bucket(gcs_emulator.bucket)
    bucket.blob("k8s-results/res1/results/training_metrics.json").upload_from_string("{}")
    bucket.blob("k8s-results/res1/results/outputs/manifest.json").upload_from_string("[]")
    bucket.blob("k8s-results/res10/results/training_metrics.json").upload_from_string("{}")
    results = launcher.results_dir(handle)
    assert results == tmp_path / "res1" / "results"
    found = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert found == ["outputs/manifest.json", "training_metrics.json"]

    plain = make_launcher(cluster)
    other = plain.launch(launch_spec("res2", "SMALL", tmp_path))
    assert plain.results_dir(other) == tmp_path / "res2"
    secret = cluster.get("secrets", secret_name("res2"), NAMESPACE)
    assert secret is not None
    assert "results_uri" not in json.loads(base64.b64decode(secret["data"]["spec.json"]))
