"""Live metric reporting to the Cairn gateway over REST/JSON (stdlib urllib only: the
trainer runtime cannot load the services' gRPC stubs, see the package docstring).

One POST per epoch to ``{gateway}/v1/{run}:streamMetrics``: the body is a JSON array of
StreamMetricsRequest messages, one per metric key, each with the batch id
``{job_id}/{key}/{epoch}``. The scheduler ingests training_metrics.json at the end with the
same batch ids, and the tracker deduplicates batches by id, so a point that could not be
sent live is not lost and one that was sent is not stored twice. Live reporting is
therefore best effort: failures are logged and training carries on.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from cairn_trainer.fileio import json_number

logger = logging.getLogger(__name__)

# Statuses worth another try: the gateway or its backend is busy or restarting.
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def batch_id(job_id: str, key: str, epoch: int) -> str:
    """The deterministic batch id shared by live reporting and the final ingest."""
    return f"{job_id}/{key}/{epoch}"


def stream_body(job_id: str, epoch: int, metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    """The JSON body: one StreamMetricsRequest per key (proto3 JSON names)."""
    return [
        {
            "batchId": batch_id(job_id, key, epoch),
            "metrics": [{"key": key, "value": json_number(value), "step": epoch}],
        }
        for key, value in metrics.items()
    ]


class MetricsReporter:
    """Posts one epoch's metrics at a time; retries a failed POST `retries` times with
    exponential backoff, then logs a warning and gives up on that epoch. After
    `max_failed_posts` epochs in a row have failed it stops trying, so an unreachable
    gateway costs the job a few timeouts rather than one per epoch."""

    def __init__(
        self,
        gateway_url: str,
        run: str,
        token: str,
        job_id: str,
        *,
        timeout_seconds: float = 5.0,
        retries: int = 2,
        backoff_seconds: float = 0.5,
        max_failed_posts: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.enabled = bool(gateway_url)
        self.url = (
            f"{gateway_url.rstrip('/')}/v1/{urllib.parse.quote(run.strip('/'), safe='/')}"
            ":streamMetrics"
        )
        self._token = token
        self.job_id = job_id
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_failed_posts = max_failed_posts
        self._sleep = sleep
        self._failed_in_a_row = 0
        self.sent_points = 0
        self.failed_points = 0

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Sends the metrics of one epoch (step = epoch). True when the gateway took them."""
        if not metrics:
            return True
        if not self.enabled:
            self.failed_points += len(metrics)
            return False
        body = json.dumps(stream_body(self.job_id, epoch, metrics), allow_nan=False)
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_seconds * 2 ** (attempt - 1))
            error, retryable = self._post(body.encode("utf-8"))
            if not error:
                self._failed_in_a_row = 0
                self.sent_points += len(metrics)
                return True
            if not retryable:
                break
        self.failed_points += len(metrics)
        self._failed_in_a_row += 1
        logger.warning(
            "live metrics for epoch %d not reported (%s); they are in training_metrics.json, "
            "which the scheduler ingests at the end",
            epoch,
            error,
        )
        if self._failed_in_a_row >= self.max_failed_posts:
            self.enabled = False
            logger.warning(
                "live metric reporting disabled after %d failed epochs in a row",
                self._failed_in_a_row,
            )
        return False

    def _post(self, body: bytes) -> tuple[str, bool]:
        """One POST. Returns (error, retryable); error is "" on success."""
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                response.read()
            return "", False
        except urllib.error.HTTPError as failure:
            detail = _error_detail(failure)
            return f"HTTP {failure.code}{detail}", failure.code in _RETRYABLE_STATUSES
        except urllib.error.URLError as failure:
            return f"gateway unreachable: {failure.reason}", True
        except (TimeoutError, OSError) as failure:
            return f"gateway unreachable: {failure}", True


def _error_detail(failure: urllib.error.HTTPError) -> str:
    """The gateway's error message (google.rpc.Status JSON), when it sent one."""
    try:
        payload = json.loads(failure.read() or b"{}")
    except (ValueError, OSError):
        return ""
    message = payload.get("message") if isinstance(payload, dict) else None
    return f": {message}" if isinstance(message, str) and message else ""
