"""The Kubernetes launcher: each job is a batch/v1 Job, through the official client.

The Job is named `cairn-job-<job id>` and labelled `app.kubernetes.io/managed-by=cairn` and
`cairn.dev/job-id=<job id>` (its pod too), so a scheduler that restarts finds it by label
instead of starting a second one, and `launch` itself is idempotent: a Job that already
exists (409) is adopted. The trainer's spec.json carries the job's run token, so it travels
in a Secret mounted at /etc/cairn, owned by the Job (ownerReferences): deleting the Job
deletes it. The pod asks for the hardware tier's vCPUs and memory, runs once
(backoffLimit 0, restartPolicy Never), within a deadline, and is cleaned up a while after it
ends (ttlSecondsAfterFinished).

`status` reads the Job (and its newest pod, for a message saying why it waits or failed):
active -> running, Complete -> succeeded, Failed -> failed (with the condition's reason),
gone -> lost. A pod cannot write the scheduler's disk, so its stage and progress come from
the trainer's log (the pod's last lines): the trainer writes its events to progress.jsonl
and logs each one as a plain "cairn_trainer.progress: progress: <stage> <n>% <message>"
line on stderr, which gives the stage, progress and epoch (not the loss); a JSON event line
(as in progress.jsonl), should the trainer print those, is read too, loss included. For the
same reason the trainer's files (training_metrics.json, outputs/) reach the scheduler only
through Cloud Storage: with `results_uri` (gs://) set, the trainer's spec says where to upload
them at its end (<results_uri>/<job id>/results) and results_dir downloads them. Without it
the pod writes them to an emptyDir, the trainer still reports its metrics live, and the
reconciler finds no training_metrics.json or outputs to ingest (it copes: they are optional).

`cancel` deletes the Job with propagationPolicy=Foreground (the pods first). `watch_jobs`
follows the cairn Jobs' events, so a caller can wake up the reconcile loop when one changes;
polling through `status` stays the source of truth.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from services.common.gcs import storage_client
from services.common.kubernetes import api_client_from
from services.scheduler.launchers import Handle, LaunchSpec, LogLocation, WorkloadStatus
from services.scheduler.launchers.local import STAGES
from services.scheduler.launchers.results import RESULTS_DIR, download_results, split_gcs_uri

log = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "cairn"
JOB_ID_LABEL = "cairn.dev/job-id"
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
MACHINE_TYPE_ANNOTATION = "cairn.dev/machine-type"
TIER_ANNOTATION = "cairn.dev/hardware-tier"
CONTAINER = "trainer"
SPEC_MOUNT = "/etc/cairn"
SPEC_KEY = "spec.json"
DEFAULT_IMAGE = "cairn-trainer:latest"
DEFAULT_COMMAND = ["python", "-m", "cairn_trainer", "run", "--spec", f"{SPEC_MOUNT}/{SPEC_KEY}"]
# The pod's log lines read to find the trainer's last progress event, and shown on failure.
_LOG_TAIL_LINES = 200
_DETAILS_LINES = 50


def job_name(job_id: str) -> str:
    return f"cairn-job-{_dns_label(job_id)}"


def secret_name(job_id: str) -> str:
    return f"{job_name(job_id)}-spec"


def job_selector(job_id: str) -> str:
    return f"{MANAGED_SELECTOR},{JOB_ID_LABEL}={job_id}"


def _dns_label(value: str) -> str:
    """A job id as it may appear in a name (RFC 1123: lowercase alphanumerics and '-')."""
    return re.sub(r"[^a-z0-9-]", "-", value.lower()).strip("-")[:47]


class KubernetesLauncher:
    name = "kubernetes"

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        *,
        namespace: str = "default",
        image: str = DEFAULT_IMAGE,
        kubeconfig: str | None = None,
        context: str | None = None,
        active_deadline_seconds: int = 24 * 3600,
        ttl_seconds_after_finished: int = 24 * 3600,
        service_account: str | None = None,
        image_pull_policy: str | None = None,
        command: list[str] | None = None,
        request_timeout_seconds: float = 30.0,
        results_uri: str | None = None,
        storage_client: Any | None = None,
    ) -> None:
        self.api_client = api_client or api_client_from(kubeconfig, context)
        self.batch = client.BatchV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.namespace = namespace
        self.image = image
        self.active_deadline_seconds = active_deadline_seconds
        self.ttl_seconds_after_finished = ttl_seconds_after_finished
        self.service_account = service_account
        self.image_pull_policy = image_pull_policy
        self.command = command or list(DEFAULT_COMMAND)
        self._timeout = request_timeout_seconds
        # gs://bucket/prefix: each job's trainer uploads its results to <this>/<job id>/results
        # (the pod's work_dir is its own emptyDir), and results_dir downloads them.
        self.results_uri = results_uri.rstrip("/") if results_uri else None
        if self.results_uri:
            split_gcs_uri(self.results_uri)
        self._storage = storage_client

    # ------------------------------------------------------------------ launch

    def launch(self, spec: LaunchSpec) -> Handle:
        name = job_name(spec.job_id)
        created = False
        try:
            job = self.batch.create_namespaced_job(
                self.namespace, self._job_body(spec), _request_timeout=self._timeout
            )
            created = True
            log.info("created Kubernetes Job %s/%s", self.namespace, name)
        except ApiException as error:
            if error.status != 409:
                raise
            job = self.batch.read_namespaced_job(
                name, self.namespace, _request_timeout=self._timeout
            )
            log.info("job %s already has a Kubernetes Job; adopting it", spec.job_id)
        try:
            self._ensure_secret(spec, job)
        except Exception:
            # A Job we just created would wait for its spec's mount forever (an adopted one
            # may be running already: left alone, the next launch retries the Secret).
            if created:
                self._delete_job(name)
            raise
        return self._handle(spec.job_id, job, spec.work_dir, spec.machine.machine_type)

    def _ensure_secret(self, spec: LaunchSpec, job: client.V1Job) -> None:
        secret = client.V1Secret(
            api_version="v1",
            kind="Secret",
            type="Opaque",
            metadata=client.V1ObjectMeta(
                name=secret_name(spec.job_id),
                namespace=self.namespace,
                labels=self._labels(spec.job_id),
                owner_references=[
                    client.V1OwnerReference(
                        api_version="batch/v1",
                        kind="Job",
                        name=_meta(job).name or job_name(spec.job_id),
                        uid=_meta(job).uid or "",
                        block_owner_deletion=True,
                    )
                ],
            ),
            string_data={SPEC_KEY: json.dumps(self._trainer_spec(spec), indent=2, sort_keys=True)},
        )
        try:
            self.core.create_namespaced_secret(
                self.namespace, secret, _request_timeout=self._timeout
            )
        except ApiException as error:
            if error.status != 409:
                raise

    def _trainer_spec(self, spec: LaunchSpec) -> dict[str, Any]:
        if not self.results_uri:
            return spec.trainer_spec
        return {**spec.trainer_spec, "results_uri": self._job_results(spec.job_id)}

    def _job_results(self, job_id: str) -> str:
        return f"{self.results_uri}/{job_id}/{RESULTS_DIR}"

    def _labels(self, job_id: str) -> dict[str, str]:
        return {MANAGED_BY_LABEL: MANAGED_BY, JOB_ID_LABEL: job_id}

    def _job_body(self, spec: LaunchSpec) -> client.V1Job:
        machine = spec.machine
        labels = self._labels(spec.job_id)
        quantities = {"cpu": str(machine.cpus), "memory": f"{machine.memory_gb}Gi"}
        env = {
            "CAIRN_JOB_ID": spec.job_id,
            "CAIRN_HARDWARE_TIER": machine.tier,
            "CAIRN_MACHINE_TYPE": machine.machine_type,
            "TF_NUM_INTRAOP_THREADS": str(machine.cpus),
            "TF_NUM_INTEROP_THREADS": "2",
            "PYTHONUNBUFFERED": "1",
        }
        container = client.V1Container(
            name=CONTAINER,
            image=self.image,
            image_pull_policy=self.image_pull_policy,
            command=list(self.command),
            env=[client.V1EnvVar(name=k, value=v) for k, v in env.items()],
            resources=client.V1ResourceRequirements(requests=quantities, limits=quantities),
            volume_mounts=[
                client.V1VolumeMount(name="spec", mount_path=SPEC_MOUNT, read_only=True),
                client.V1VolumeMount(name="work", mount_path=str(spec.work_dir)),
            ],
        )
        pod = client.V1PodSpec(
            restart_policy="Never",
            service_account_name=self.service_account,
            containers=[container],
            volumes=[
                client.V1Volume(
                    name="spec",
                    secret=client.V1SecretVolumeSource(
                        secret_name=secret_name(spec.job_id), default_mode=0o400
                    ),
                ),
                # Where the trainer writes its files (the spec's work_dir); shared storage
                # mounted here instead would bring them to the scheduler (a follow-up).
                client.V1Volume(name="work", empty_dir=client.V1EmptyDirVolumeSource()),
            ],
        )
        return client.V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=client.V1ObjectMeta(
                name=job_name(spec.job_id),
                namespace=self.namespace,
                labels=labels,
                annotations={
                    MACHINE_TYPE_ANNOTATION: machine.machine_type,
                    TIER_ANNOTATION: machine.tier,
                },
            ),
            spec=client.V1JobSpec(
                backoff_limit=0,
                active_deadline_seconds=self.active_deadline_seconds,
                ttl_seconds_after_finished=self.ttl_seconds_after_finished,
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels), spec=pod
                ),
            ),
        )

    def _handle(self, job_id: str, job: client.V1Job, work_dir: Path, machine_type: str) -> Handle:
        return {
            "launcher": self.name,
            "job_id": job_id,
            "namespace": self.namespace,
            "name": _meta(job).name,
            "uid": _meta(job).uid,
            "work_dir": str(work_dir),
            "machine_type": machine_type,
        }

    def adopt(self, job_id: str, work_dir: Path) -> Handle | None:
        jobs = self.batch.list_namespaced_job(
            self.namespace, label_selector=job_selector(job_id), _request_timeout=self._timeout
        ).items
        if not jobs:
            return None
        # One per job id (its name); a Job being deleted loses to a live one, if ever both.
        jobs.sort(key=lambda j: _meta(j).deletion_timestamp is not None)
        annotations = _meta(jobs[0]).annotations or {}
        return self._handle(job_id, jobs[0], work_dir, annotations.get(MACHINE_TYPE_ANNOTATION, ""))

    # ------------------------------------------------------------------ status

    def status(self, handle: Handle) -> WorkloadStatus:
        name, namespace = str(handle["name"]), str(handle.get("namespace") or self.namespace)
        try:
            job = self.batch.read_namespaced_job(name, namespace, _request_timeout=self._timeout)
        except ApiException as error:
            if error.status == 404:
                return WorkloadStatus(
                    "lost", message=f"the Kubernetes Job {namespace}/{name} is gone"
                )
            raise
        if handle.get("uid") and _meta(job).uid != handle["uid"]:
            return WorkloadStatus(
                "lost", message=f"the Kubernetes Job {namespace}/{name} was replaced"
            )
        pod = self._newest_pod(str(handle["job_id"]), namespace)
        lines = self._log_tail(pod, namespace)
        progress = _last_progress(lines)
        epoch, loss = progress.get("epoch"), progress.get("loss")
        common: dict[str, Any] = {
            "stage": STAGES.get(str(progress.get("stage", "")), ""),
            "progress_percent": float(progress.get("progress") or 0.0),
            "epoch": epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0,
            "loss": float(loss) if isinstance(loss, int | float) else None,
            "message": str(progress.get("message", "")),
        }
        state = job.status or client.V1JobStatus()
        conditions = {c.type: c for c in state.conditions or [] if c.status == "True"}
        if "Complete" in conditions or (state.succeeded or 0) > 0:
            return WorkloadStatus("succeeded", **{**common, "progress_percent": 100.0})
        failed = conditions.get("Failed")
        if failed is not None or ((state.failed or 0) > 0 and not state.active):
            why = _pod_message(pod)
            reason = failed.reason if failed is not None else ""
            text = (failed.message if failed is not None else "") or ""
            message = "; ".join(
                part
                for part in (f"the Kubernetes Job failed ({reason or 'Failed'})", text, why)
                if part
            )
            return WorkloadStatus(
                "failed",
                **{**common, "message": message},
                details="\n".join(lines[-_DETAILS_LINES:]),
                error_stage=common["stage"],
            )
        if (state.active or 0) > 0 and (pod is None or _phase(pod) != "Pending"):
            return WorkloadStatus("running", **common)
        waiting = _pod_message(pod)
        return WorkloadStatus(
            "pending", **{**common, "message": waiting or common["message"] or "pending"}
        )

    def _newest_pod(self, job_id: str, namespace: str) -> client.V1Pod | None:
        try:
            pods = self.core.list_namespaced_pod(
                namespace, label_selector=job_selector(job_id), _request_timeout=self._timeout
            ).items
        except ApiException as error:
            log.warning("cannot list the pods of job %s: %s", job_id, error.reason)
            return None
        if not pods:
            return None
        return max(
            pods, key=lambda p: (str(_meta(p).creation_timestamp or ""), _meta(p).name or "")
        )

    def _log_tail(self, pod: client.V1Pod | None, namespace: str) -> list[str]:
        if pod is None or _phase(pod) in ("", "Pending"):
            return []
        name = _meta(pod).name or ""
        try:
            text = self.core.read_namespaced_pod_log(
                name,
                namespace,
                container=CONTAINER,
                tail_lines=_LOG_TAIL_LINES,
                _request_timeout=self._timeout,
            )
        except ApiException as error:
            log.debug("cannot read the log of pod %s: %s", name, error.reason)
            return []
        return str(text or "").splitlines()

    # ------------------------------------------------------------------ cancel

    def cancel(self, handle: Handle) -> None:
        self._delete_job(str(handle["name"]), str(handle.get("namespace") or self.namespace))

    def _delete_job(self, name: str, namespace: str | None = None) -> None:
        try:
            self.batch.delete_namespaced_job(
                name,
                namespace or self.namespace,
                body=client.V1DeleteOptions(propagation_policy="Foreground"),
                _request_timeout=self._timeout,
            )
            log.info("deleting Kubernetes Job %s/%s", namespace or self.namespace, name)
        except ApiException as error:
            if error.status != 404:
                raise

    # ------------------------------------------------------------------ where things are

    def log_location(self, handle: Handle) -> LogLocation:
        return LogLocation(
            "kubernetes",
            {
                "namespace": str(handle.get("namespace") or self.namespace),
                "label_selector": job_selector(str(handle["job_id"])),
                "container": CONTAINER,
            },
        )

    def results_dir(self, handle: Handle) -> Path:
        work_dir = Path(handle["work_dir"])
        if not self.results_uri:
            # Holds the trainer's files only on shared storage (see the module docstring);
            # the reconciler reads files that may not exist.
            return work_dir
        if self._storage is None:
            self._storage = storage_client("the Kubernetes launcher's results")
        return download_results(self._job_results(str(handle["job_id"])), work_dir, self._storage)

    # ------------------------------------------------------------------ watching

    def watch(
        self,
        on_change: Callable[[str], None],
        stop: threading.Event,
        *,
        timeout_seconds: int = 60,
    ) -> None:
        """Call `on_change(job id)` whenever a cairn Job changes, until `stop` is set (checked
        between events and at least every `timeout_seconds`)."""
        for _, job in watch_jobs(
            self.batch, self.namespace, stop=stop, timeout_seconds=timeout_seconds
        ):
            job_id = (_meta(job).labels or {}).get(JOB_ID_LABEL)
            if job_id:
                on_change(job_id)


def watch_jobs(
    batch: client.BatchV1Api,
    namespace: str,
    *,
    label_selector: str = MANAGED_SELECTOR,
    stop: threading.Event | None = None,
    timeout_seconds: int = 60,
) -> Iterator[tuple[str, client.V1Job]]:
    """(event type, Job) for the Jobs matching `label_selector`: first one "SYNC" per Job of
    a list, then the watch's ADDED/MODIFIED/DELETED from the list's resourceVersion, resumed
    from the last one seen when a watch times out. When that resourceVersion is too old
    (410 Gone) the Jobs are listed again ("SYNC" each) and the watch resumes from there."""
    stop = stop or threading.Event()
    resource_version: str | None = None
    while not stop.is_set():
        if resource_version is None:
            listed = batch.list_namespaced_job(
                namespace, label_selector=label_selector, _request_timeout=timeout_seconds
            )
            resource_version = (listed.metadata or client.V1ListMeta()).resource_version or ""
            for job in listed.items:
                yield "SYNC", job
        watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
        try:
            for event in watcher.stream(  # type: ignore[no-untyped-call]
                batch.list_namespaced_job,
                namespace,
                label_selector=label_selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                # The server ends the watch after timeout_seconds; a connection that went
                # quiet without closing (a dead peer) ends on the client's side too.
                _request_timeout=timeout_seconds + 30,
            ):
                if event["type"] != "BOOKMARK":
                    yield str(event["type"]), event["object"]
                if stop.is_set():
                    watcher.stop()  # type: ignore[no-untyped-call]
                    break
            resource_version = watcher.resource_version or resource_version
        except ApiException as error:
            if error.status != 410:
                raise
            log.info("the Job watch's resourceVersion %s expired; listing again", resource_version)
            resource_version = None


def _meta(thing: Any) -> client.V1ObjectMeta:
    return cast(client.V1ObjectMeta, thing.metadata or client.V1ObjectMeta())


def _phase(pod: client.V1Pod) -> str:
    return str(pod.status.phase or "") if pod.status is not None else ""


def _pod_message(pod: client.V1Pod | None) -> str:
    """Why the pod waits or how its trainer container ended, from its container state."""
    if pod is None or pod.status is None:
        return ""
    for container in pod.status.container_statuses or []:
        if container.name != CONTAINER or container.state is None:
            continue
        if container.state.terminated is not None:
            ended = container.state.terminated
            how = f"exited with code {ended.exit_code}"
            reason = f" ({ended.reason})" if ended.reason else ""
            detail = f": {ended.message.strip()}" if ended.message else ""
            return f"the trainer container {how}{reason}{detail}"
        if container.state.waiting is not None:
            waiting = container.state.waiting
            detail = f": {waiting.message}" if waiting.message else ""
            return f"the trainer container is waiting ({waiting.reason}){detail}"
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status != "True":
            return f"the pod is not scheduled ({condition.reason}): {condition.message or ''}"
    return str(pod.status.message or "")


# The line cairn_trainer.progress logs for each event (on stderr, so in the pod's log):
# "<time> INFO cairn_trainer.progress: progress: Trainer 58.3% epoch 1/3 finished".
_PROGRESS_LINE = re.compile(
    r"cairn_trainer\.progress: progress: (?P<stage>[A-Za-z]+) (?P<progress>[0-9.]+)% "
    r"(?P<message>.*)$"
)
_EPOCH_MESSAGE = re.compile(r"^epoch (?P<epoch>[0-9]+)/[0-9]+ finished")


def _last_progress(lines: list[str]) -> dict[str, Any]:
    """The trainer's last progress event in its log: a JSON event line (an object with a
    "stage"), or the plain line the trainer logs for each event (no loss in that one)."""
    for line in reversed(lines):
        text = line.strip()
        if text.startswith("{"):
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if isinstance(event, dict) and "stage" in event:
                return event
            continue
        found = _PROGRESS_LINE.search(text)
        if found is not None and found["stage"] in STAGES:
            epoch = _EPOCH_MESSAGE.match(found["message"])
            return {
                "stage": found["stage"],
                "progress": float(found["progress"]),
                "message": found["message"],
                "epoch": int(epoch["epoch"]) if epoch is not None else None,
            }
    return {}
