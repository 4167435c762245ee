"""A local Kubernetes API server for the launcher's tests: the REST paths the Kubernetes
launcher uses, over HTTP on loopback, with API objects in their real JSON shapes, so the
official `kubernetes` client talks to it exactly as it talks to a cluster.

Implemented (namespaced everywhere):
- batch/v1 jobs: create (409 AlreadyExists), get (404 NotFound), list with labelSelector,
  delete (the propagationPolicy of each delete is recorded in `deletions`; the Job, its pods
  and the objects it owns through ownerReferences go at once, as the garbage collector
  would), and watch (`?watch=true`: chunked JSON lines from a resourceVersion, ADDED /
  MODIFIED / DELETED, honouring timeoutSeconds; an ERROR event with a 410 Status for a
  resourceVersion older than the last `compact()`);
- v1 secrets and configmaps: create, get, delete; v1 pods: list with labelSelector;
- pod logs: `pods/{name}/log` with container, tailLines, follow and timestamps (each line
  prefixed with the RFC 3339 time, nanoseconds, it was added at, as the API server does;
  400 while Pending).
Tests drive the cluster side through methods: `run_job` (a pod starts), `succeed_job`,
`fail_job`, `add_log`, `compact`.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

Obj = dict[str, Any]

_PATH = re.compile(
    r"^/(?:api/v1|apis/batch/v1)/namespaces/(?P<ns>[^/]+)/(?P<kind>jobs|secrets|configmaps|pods)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>log))?$"
)
_KINDS = {
    "jobs": ("batch/v1", "Job", "JobList"),
    "secrets": ("v1", "Secret", "SecretList"),
    "configmaps": ("v1", "ConfigMap", "ConfigMapList"),
    "pods": ("v1", "Pod", "PodList"),
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339nano(moment: datetime) -> str:
    """A pod-log timestamp as Kubernetes writes it: RFC3339Nano in UTC, trailing zeros of
    the fraction dropped ("2026-12-04T18:00:00.123456789Z")."""
    moment = moment.astimezone(UTC)
    fraction = f"{moment.microsecond * 1000:09d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _true(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: k=v, k==v, k!=v, k, !k (comma = AND)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = re.split(r"==?", term, maxsplit=1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class FakeKubernetes:
    """The cluster's state and the HTTP server in front of it."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (kind, namespace, name)
        self.logs: dict[tuple[str, str], list[str]] = {}  # (namespace, pod) -> lines
        self.log_times: dict[tuple[str, str], list[str]] = {}  # their timestamps
        self.events: list[tuple[int, str, Obj]] = []  # job watch events (rv, type, object)
        self.deletions: list[tuple[str, str, str, str | None]] = []  # kind, ns, name, policy
        self.requests: list[tuple[str, str]] = []
        self.resource_version = 100
        self.compacted = 0  # watches from an older resourceVersion get 410 Gone
        self.changed = threading.Condition()
        self.closing = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeKubernetes:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # ------------------------------------------------------------------ state (lock held)

    def _bump(self, obj: Obj) -> None:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)

    def _record(self, kind: str, event: str, obj: Obj) -> None:
        if kind == "jobs":
            self.events.append((self.resource_version, event, copy.deepcopy(obj)))
        self.changed.notify_all()

    def _create(self, kind: str, namespace: str, body: Obj) -> tuple[int, Obj]:
        metadata = body.setdefault("metadata", {})
        name = (
            metadata.get("name") or f"{metadata.get('generateName', 'obj-')}{uuid.uuid4().hex[:5]}"
        )
        if (kind, namespace, name) in self.objects:
            api, singular, _ = _KINDS[kind]
            return 409, _status(409, "AlreadyExists", f'{kind}.{api} "{name}" already exists')
        api_version, singular, _ = _KINDS[kind]
        body["apiVersion"], body["kind"] = api_version, singular
        metadata.update(
            name=name,
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            generation=1,
        )
        if kind == "secrets":
            # stringData is write-only: the server stores it base64-encoded in data.
            import base64

            data = body.setdefault("data", {})
            for key, value in (body.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
        if kind == "jobs":
            body.setdefault("status", {})
            template = body["spec"]["template"].setdefault("metadata", {})
            template.setdefault("labels", {}).update(
                {"job-name": name, "controller-uid": metadata["uid"]}
            )
        self._bump(body)
        self.objects[(kind, namespace, name)] = body
        self._record(kind, "ADDED", body)
        return 201, body

    def _delete(self, kind: str, namespace: str, name: str, policy: str | None) -> Obj | None:
        obj = self.objects.pop((kind, namespace, name), None)
        if obj is None:
            return None
        self.deletions.append((kind, namespace, name, policy))
        self._bump(obj)
        self._record(kind, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        # The garbage collector: whatever this object owned goes with it.
        for key, owned in list(self.objects.items()):
            owners = owned["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                self._delete(key[0], key[1], key[2], "Background")
        return obj

    def _job(self, namespace: str, name: str) -> Obj:
        return self.objects[("jobs", namespace, name)]

    def _modify_job(self, namespace: str, name: str, status: Obj) -> None:
        job = self._job(namespace, name)
        job["status"] = status
        self._bump(job)
        self._record("jobs", "MODIFIED", job)

    def _pods_of(self, namespace: str, name: str) -> list[Obj]:
        uid = self._job(namespace, name)["metadata"]["uid"]
        return [
            pod
            for (kind, ns, _), pod in self.objects.items()
            if kind == "pods"
            and ns == namespace
            and pod["metadata"]["labels"].get("controller-uid") == uid
        ]

    # ------------------------------------------------------------------ the cluster's side

    def job(self, name: str, namespace: str = "default") -> Obj:
        with self.changed:
            return copy.deepcopy(self._job(namespace, name))

    def get(self, kind: str, name: str, namespace: str = "default") -> Obj | None:
        with self.changed:
            obj = self.objects.get((kind, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def pod_of(self, job: str, namespace: str = "default") -> str:
        with self.changed:
            return str(self._pods_of(namespace, job)[-1]["metadata"]["name"])

    def run_job(self, name: str, namespace: str = "default", *, pending: bool = False) -> str:
        """The Job's pod starts (or, `pending`, waits for its image); returns its name."""
        with self.changed:
            job = self._job(namespace, name)
            template = job["spec"]["template"]
            pod_name = f"{name}-{uuid.uuid4().hex[:5]}"
            container = template["spec"]["containers"][0]["name"]
            state: Obj = (
                {"waiting": {"reason": "ContainerCreating"}}
                if pending
                else {"running": {"startedAt": _now()}}
            )
            pod: Obj = {
                "metadata": {
                    "name": pod_name,
                    "labels": dict(template["metadata"]["labels"]),
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": name,
                            "uid": job["metadata"]["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": copy.deepcopy(template["spec"]),
                "status": {
                    "phase": "Pending" if pending else "Running",
                    "containerStatuses": [
                        {
                            "name": container,
                            "image": template["spec"]["containers"][0]["image"],
                            "imageID": "",
                            "ready": not pending,
                            "restartCount": 0,
                            "state": state,
                        }
                    ],
                },
            }
            self._create("pods", namespace, pod)
            self.logs[(namespace, pod_name)] = []
            self.log_times[(namespace, pod_name)] = []
            self._modify_job(
                namespace, name, {"active": 1, "startTime": _now(), "ready": 0 if pending else 1}
            )
            return pod_name

    def _end_pods(self, namespace: str, name: str, code: int, reason: str, message: str) -> None:
        for pod in self._pods_of(namespace, name):
            pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            for container in pod["status"]["containerStatuses"]:
                container["ready"] = False
                container["state"] = {
                    "terminated": {
                        "exitCode": code,
                        "reason": reason,
                        "message": message,
                        "finishedAt": _now(),
                    }
                }
            self._bump(pod)

    def succeed_job(self, name: str, namespace: str = "default") -> None:
        with self.changed:
            self._end_pods(namespace, name, 0, "Completed", "")
            now = _now()
            self._modify_job(
                namespace,
                name,
                {
                    "succeeded": 1,
                    "startTime": now,
                    "completionTime": now,
                    "conditions": [
                        {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                        {"type": "Complete", "status": "True", "lastTransitionTime": now},
                    ],
                },
            )

    def fail_job(
        self,
        name: str,
        namespace: str = "default",
        *,
        reason: str = "BackoffLimitExceeded",
        message: str = "Job has reached the specified backoff limit",
        exit_code: int = 1,
        container_message: str = "",
    ) -> None:
        with self.changed:
            self._end_pods(namespace, name, exit_code, "Error", container_message)
            now = _now()
            self._modify_job(
                namespace,
                name,
                {
                    "failed": 1,
                    "startTime": now,
                    "conditions": [
                        {
                            "type": "FailureTarget",
                            "status": "True",
                            "reason": reason,
                            "message": message,
                            "lastTransitionTime": now,
                        },
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": reason,
                            "message": message,
                            "lastTransitionTime": now,
                        },
                    ],
                },
            )

    def delete_job(self, name: str, namespace: str = "default") -> None:
        """Someone else deletes the Job (kubectl, the TTL controller)."""
        with self.changed:
            self._delete("jobs", namespace, name, "Background")

    def add_log(
        self, pod: str, *lines: str, namespace: str = "default", at: datetime | None = None
    ) -> None:
        """The pod writes `lines`, at `at` (default: now)."""
        with self.changed:
            self.logs.setdefault((namespace, pod), []).extend(lines)
            times = self.log_times.setdefault((namespace, pod), [])
            times.extend(rfc3339nano(at or datetime.now(UTC)) for _ in lines)
            self.changed.notify_all()

    def compact(self) -> None:
        """Forget the watch history: a watch from an older resourceVersion gets 410 Gone."""
        with self.changed:
            self.resource_version += 1
            self.compacted = self.resource_version
            self.events.clear()

    # ------------------------------------------------------------------ the API (requests)

    def handle(self, method: str, path: str, query: dict[str, str], body: Obj | None) -> Any:
        """(status, JSON object) or (status, text), or an iterator of chunks for streams."""
        self.requests.append((method, path))
        match = _PATH.match(path)
        if match is None:
            return 404, _status(404, "NotFound", f"the server could not find {path}")
        namespace, kind, name, sub = match["ns"], match["kind"], match["name"], match["sub"]
        api_version, _, list_kind = _KINDS[kind]
        with self.changed:
            if name is None and method == "GET" and _true(query.get("watch")):
                return self._watch(namespace, query)
            if name is None and method == "GET":
                selector = query.get("labelSelector", "")
                items = [
                    copy.deepcopy(obj)
                    for (k, ns, _), obj in sorted(self.objects.items())
                    if k == kind
                    and ns == namespace
                    and matches(selector, obj["metadata"].get("labels") or {})
                ]
                return 200, {
                    "apiVersion": api_version,
                    "kind": list_kind,
                    "metadata": {"resourceVersion": str(self.resource_version)},
                    "items": items,
                }
            if name is None and method == "POST":
                assert body is not None
                code, obj = self._create(kind, namespace, body)
                return code, copy.deepcopy(obj)
            obj = self.objects.get((kind, namespace, name or ""))
            if obj is None:
                return 404, _status(404, "NotFound", f'{kind} "{name}" not found')
            if sub == "log" and method == "GET":
                return self._log(namespace, name or "", obj, query)
            if method == "GET":
                return 200, copy.deepcopy(obj)
            if method == "DELETE":
                policy = (body or {}).get("propagationPolicy") or query.get("propagationPolicy")
                self._delete(kind, namespace, name or "", policy)
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "kind": kind, "uid": obj["metadata"]["uid"]},
                }
        return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")

    def _log(self, namespace: str, pod: str, obj: Obj, query: dict[str, str]) -> Any:
        if obj["status"]["phase"] == "Pending":
            return 400, _status(
                400,
                "BadRequest",
                f'container "trainer" in pod "{pod}" is waiting to start: ContainerCreating',
            )
        lines = self.logs.get((namespace, pod), [])
        tail = int(query["tailLines"]) if "tailLines" in query else None
        start = max(len(lines) - tail, 0) if tail is not None else 0
        timestamps = _true(query.get("timestamps"))
        if not _true(query.get("follow")):
            fresh = self._lines(namespace, pod, start, timestamps)
            return 200, "".join(f"{line}\n" for line in fresh)
        return self._follow(namespace, pod, start, timestamps)

    def _lines(self, namespace: str, pod: str, start: int, timestamps: bool) -> list[str]:
        lines = self.logs.get((namespace, pod), [])[start:]
        if not timestamps:
            return lines
        times = self.log_times.get((namespace, pod), [])[start:]
        return [f"{stamp} {line}" for stamp, line in zip(times, lines, strict=True)]

    def _follow(
        self, namespace: str, pod: str, start: int, timestamps: bool = False
    ) -> Iterator[bytes]:
        def stream() -> Iterator[bytes]:
            sent = start
            deadline = time.monotonic() + 30
            while True:
                with self.changed:
                    fresh = self._lines(namespace, pod, sent, timestamps)
                    sent += len(fresh)
                    obj = self.objects.get(("pods", namespace, pod))
                    ended = obj is None or obj["status"]["phase"] in ("Succeeded", "Failed")
                    if not fresh and not ended and not self.closing:
                        self.changed.wait(0.2)
                for line in fresh:
                    yield f"{line}\n".encode()
                if (ended and not fresh) or self.closing or time.monotonic() > deadline:
                    return

        return stream()

    def _watch(self, namespace: str, query: dict[str, str]) -> Any:
        since = int(query.get("resourceVersion") or 0)
        selector = query.get("labelSelector", "")
        timeout = float(query.get("timeoutSeconds") or 30)

        def line(event: str, obj: Obj) -> bytes:
            return (json.dumps({"type": event, "object": obj}) + "\n").encode()

        def stream() -> Iterator[bytes]:
            position = since
            deadline = time.monotonic() + timeout
            if since and since < self.compacted:
                yield line(
                    "ERROR",
                    _status(
                        410, "Expired", f"too old resource version: {since} ({self.compacted})"
                    ),
                )
                return
            while time.monotonic() < deadline and not self.closing:
                with self.changed:
                    fresh = [
                        (rv, event, obj)
                        for rv, event, obj in self.events
                        if rv > position
                        and obj["metadata"].get("namespace") == namespace
                        and matches(selector, obj["metadata"].get("labels") or {})
                    ]
                    if self.events:
                        position = max(position, self.events[-1][0])
                    if not fresh:
                        self.changed.wait(min(0.2, max(deadline - time.monotonic(), 0)))
                for _, event, obj in fresh:
                    yield line(event, obj)

        return stream()


def _handler(cluster: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            result = cluster.handle(method, url.path, query, body)
            if isinstance(result, Iterator):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in result:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                return
            code, payload = result
            if isinstance(payload, str):
                data, content_type = payload.encode(), "text/plain"
            else:
                data, content_type = json.dumps(payload).encode(), "application/json"
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler
