"""The job's outputs/ directory besides what the Trainer exports: the schema, a compact
statistics summary, and manifest.json (what the scheduler uploads as tracker artifacts).

Artifacts are found in the pipeline root by TFX's layout
(<root>/<Component>/<output>/<execution id>/...); the root is recreated for every run, so
the newest execution id is this run's.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from cairn_trainer.fileio import write_json_atomic
from cairn_trainer.paths import JobPaths

# What outputs/ may hold and how each entry is labelled in the manifest, in upload order.
MANIFEST_ENTRIES: tuple[tuple[str, str], ...] = (
    ("serving_model", "model"),
    ("scann_index", "model"),
    ("schema.pbtxt", "data"),
    ("statistics.json", "report"),
    ("vocabulary_sizes.json", "report"),
    ("weight_histograms.json", "report"),
)
TOP_VALUES = 10


def latest_artifact_dir(pipeline_root: str, component: str, output: str) -> str | None:
    base = os.path.join(pipeline_root, component, output)
    try:
        runs = [name for name in os.listdir(base) if name.isdigit()]
    except FileNotFoundError:
        return None
    return os.path.join(base, max(runs, key=int)) if runs else None


def copy_schema(paths: JobPaths) -> bool:
    directory = latest_artifact_dir(paths.pipeline_root, "SchemaGen", "schema")
    source = os.path.join(directory, "schema.pbtxt") if directory else ""
    if not source or not os.path.exists(source):
        return False
    shutil.copyfile(source, paths.output("schema.pbtxt"))
    return True


def _feature_summary(feature: Any) -> dict[str, Any]:
    """count/missing (+ unique and top values for strings, mean/std/min/max for numbers)."""
    kind = feature.WhichOneof("stats")
    summary: dict[str, Any] = {}
    if kind == "num_stats":
        stats = feature.num_stats
        summary.update(
            type="numeric",
            count=int(stats.common_stats.num_non_missing),
            missing=int(stats.common_stats.num_missing),
            mean=stats.mean,
            std=stats.std_dev,
            min=stats.min,
            max=stats.max,
            zeros=int(stats.num_zeros),
        )
    elif kind == "string_stats":
        stats = feature.string_stats
        summary.update(
            type="string",
            count=int(stats.common_stats.num_non_missing),
            missing=int(stats.common_stats.num_missing),
            unique=int(stats.unique),
            top_values=[
                {"value": top.value, "count": int(top.frequency)}
                for top in list(stats.top_values)[:TOP_VALUES]
            ],
        )
    else:
        summary["type"] = kind or "unknown"
    return summary


def statistics_summary(paths: JobPaths) -> dict[str, Any] | None:
    """{"splits": {split: {"num_examples": n, "features": {name: summary}}}} from
    StatisticsGen's FeatureStats.pb files."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    directory = latest_artifact_dir(paths.pipeline_root, "StatisticsGen", "statistics")
    if directory is None:
        return None
    splits: dict[str, Any] = {}
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry, "FeatureStats.pb")
        if not entry.startswith("Split-") or not os.path.exists(path):
            continue
        statistics = statistics_pb2.DatasetFeatureStatisticsList()
        with open(path, "rb") as handle:
            statistics.ParseFromString(handle.read())
        for dataset in statistics.datasets[:1]:
            splits[entry[len("Split-") :]] = {
                "num_examples": int(dataset.num_examples),
                "features": {
                    ".".join(feature.path.step) or feature.name: _feature_summary(feature)
                    for feature in dataset.features
                },
            }
    return {"splits": splits}


def write_manifest(paths: JobPaths) -> list[dict[str, Any]]:
    manifest = []
    for name, kind in MANIFEST_ENTRIES:
        path = paths.output(name)
        if os.path.exists(path):
            manifest.append({"path": name, "type": kind, "directory": os.path.isdir(path)})
    write_json_atomic(paths.output("manifest.json"), manifest)
    return manifest


def write_outputs(paths: JobPaths) -> list[dict[str, Any]]:
    """Schema, statistics summary and manifest; returns the manifest."""
    os.makedirs(paths.outputs, exist_ok=True)
    copy_schema(paths)
    summary = statistics_summary(paths)
    if summary is not None:
        write_json_atomic(paths.output("statistics.json"), summary)
    return write_manifest(paths)
