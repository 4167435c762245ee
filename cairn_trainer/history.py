"""Per-epoch training history: the Keras callback that collects each epoch's metrics,
gradient norms and weight statistics, reports them live, records progress, and the
document it keeps up to date in work_dir/training_metrics.json.

Epochs are numbered 1..N everywhere (Keras counts from 0). Validation ("val/...") is the
held-out test split, evaluated at the end of every epoch; the final "test/..." metrics are
a separate evaluation of the trained model on the same split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFRS 0.7.7 needs Keras 2; before TF loads.

import numpy as np
import tensorflow as tf

from cairn_trainer.fileio import utc_now, write_json_atomic
from cairn_trainer.models import RECALL_KS, RecommenderModel
from cairn_trainer.progress import ProgressLog
from cairn_trainer.reporter import MetricsReporter

HISTOGRAM_BINS = 30
WEIGHT_STATS = ("l1", "l2", "mean", "std")


def epoch_metrics(model_type: str, logs: Mapping[str, Any]) -> dict[str, float]:
    """Keras' epoch logs -> Cairn metric keys. Keys whose value Keras did not produce are
    left out rather than reported as 0."""
    names: dict[str, str] = {"train/loss": "loss", "val/loss": "val_loss"}
    if model_type in ("retrieval", "multitask"):
        for k in RECALL_KS:
            names[f"val/recall_at_{k}"] = f"val_factorized_top_k/top_{k}_categorical_accuracy"
    if model_type in ("ranking", "multitask"):
        names.update({"train/rmse": "rmse", "val/rmse": "val_rmse", "val/mae": "val_mae"})
    parts = ["total", "query", "candidate"] + (["rating_head"] if model_type != "retrieval" else [])
    for part in parts:
        names[f"grad_norm/{part}"] = f"grad_norm_{part}"
    return {key: float(logs[name]) for key, name in names.items() if name in logs}


def test_metrics(model_type: str, results: Mapping[str, Any]) -> dict[str, float]:
    """model.evaluate(return_dict=True) -> the final test/... keys."""
    names: dict[str, str] = {"test/loss": "loss"}
    if model_type in ("retrieval", "multitask"):
        for k in RECALL_KS:
            names[f"test/recall_at_{k}"] = f"factorized_top_k/top_{k}_categorical_accuracy"
    if model_type in ("ranking", "multitask"):
        names.update({"test/rmse": "rmse", "test/mae": "mae"})
    return {key: float(results[name]) for key, name in names.items() if name in results}


def tower_weights(tower: tf.keras.Model) -> np.ndarray:
    values = [np.asarray(v.numpy(), dtype=np.float64).ravel() for v in tower.trainable_variables]
    return np.concatenate(values) if values else np.zeros(0)


def weight_stats(weights: np.ndarray) -> dict[str, float]:
    if weights.size == 0:
        return {name: 0.0 for name in WEIGHT_STATS}
    return {
        "l1": float(np.abs(weights).sum()),
        "l2": float(math.sqrt(float(np.square(weights).sum()))),
        "mean": float(weights.mean()),
        "std": float(weights.std()),
    }


def weight_histogram(weights: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict[str, list[Any]]:
    finite = weights[np.isfinite(weights)]
    if finite.size == 0:
        return {"bin_edges": [], "counts": []}
    counts, edges = np.histogram(finite, bins=bins)
    return {"bin_edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


class TrainingHistory:
    """Everything training_metrics.json holds, accumulated epoch by epoch."""

    def __init__(self, job_id: str, model_type: str, params: Mapping[str, Any]) -> None:
        self.job_id = job_id
        self.model_type = model_type
        self.params = dict(params)
        self.epochs: list[int] = []
        self.series: dict[str, list[float | None]] = {}
        self.points: list[dict[str, Any]] = []
        self.final_metrics: dict[str, float] = {}
        self.histograms: dict[str, list[dict[str, Any]]] = {}

    def add_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.epochs.append(epoch)
        index = len(self.epochs) - 1
        for key, value in metrics.items():
            # A key first seen late is padded so every series lines up with "epochs".
            values = self.series.setdefault(key, [None] * index)
            values.append(value)
            self.points.append({"key": key, "epoch": epoch, "value": value})
        for values in self.series.values():
            values.extend([None] * (index + 1 - len(values)))

    def add_final(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.final_metrics.update(metrics)
        for key, value in metrics.items():
            self.points.append({"key": key, "epoch": epoch, "value": value})

    def add_histogram(self, tower: str, epoch: int, histogram: Mapping[str, Any]) -> None:
        self.histograms.setdefault(tower, []).append({"epoch": epoch, **histogram})

    def document(self) -> dict[str, Any]:
        def series(key: str) -> list[float | None]:
            return self.series.get(key, [None] * len(self.epochs))

        gradient_parts = sorted(
            {key.split("/", 1)[1] for key in self.series if key.startswith("grad_norm/")},
            key=lambda part: ["total", "query", "candidate", "rating_head"].index(part),
        )
        towers = sorted({key.split("/")[1] for key in self.series if key.startswith("weights/")})
        return {
            "job_id": self.job_id,
            "model_type": self.model_type,
            "epochs": list(self.epochs),
            "loss": {"train": series("train/loss"), "val": series("val/loss")},
            "metrics": {key: list(values) for key, values in self.series.items()},
            "gradient_norms": {part: series(f"grad_norm/{part}") for part in gradient_parts},
            "weight_stats": {
                tower: {stat: series(f"weights/{tower}/{stat}") for stat in WEIGHT_STATS}
                for tower in towers
            },
            "final_metrics": dict(self.final_metrics),
            "history": list(self.points),
            "params": dict(self.params),
            "available": True,
            "saved_at": utc_now(),
        }

    def histogram_document(self) -> dict[str, Any]:
        return {"bins": HISTOGRAM_BINS, "towers": self.histograms}

    def save(self, path: str) -> None:
        write_json_atomic(path, self.document())


class EpochCallback(tf.keras.callbacks.Callback):  # type: ignore[misc]
    """At each epoch's end: collect metrics and weight statistics, report them live,
    append a progress event and rewrite training_metrics.json (so a job that fails later
    still leaves the epochs it finished)."""

    def __init__(
        self,
        recommender: RecommenderModel,
        history: TrainingHistory,
        reporter: MetricsReporter,
        progress: ProgressLog,
        metrics_path: str,
    ) -> None:
        super().__init__()
        self.recommender = recommender
        self.history = history
        self.reporter = reporter
        self.progress = progress
        self.metrics_path = metrics_path

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        number = epoch + 1
        metrics = epoch_metrics(self.recommender.model_type, logs or {})
        for tower_name, tower in self.recommender.towers().items():
            weights = tower_weights(tower)
            for stat, value in weight_stats(weights).items():
                metrics[f"weights/{tower_name}/{stat}"] = value
            self.history.add_histogram(tower_name, number, weight_histogram(weights))
        self.history.add_epoch(number, metrics)
        self.history.save(self.metrics_path)
        self.reporter.report(number, metrics)
        self.progress.epoch_finished(number, metrics.get("train/loss"))


def summarize(metrics: Mapping[str, float], keys: Sequence[str]) -> str:
    """A short "key=value" line for logs and progress messages."""
    shown = [f"{key}={metrics[key]:.4g}" for key in keys if key in metrics]
    return ", ".join(shown)
