"""Rows <-> protos for the scheduler's resources."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format, timestamp_pb2

from cairn.scheduler.v1 import dataset_pb2, feature_config_pb2, job_pb2, model_config_pb2
from services.scheduler.store.models import (
    DatasetRow,
    FeatureConfigRow,
    JobRow,
    JobTransitionRow,
    ModelConfigRow,
)


def _enum(enum_type: Any, name: str) -> Any:
    """An enum value by name (typed Any: the generated stubs type enum fields by class)."""
    return enum_type.Value(name)


def _timestamp(ms: int | None) -> timestamp_pb2.Timestamp | None:
    if ms is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def dataset_to_proto(row: DatasetRow) -> dataset_pb2.Dataset:
    return dataset_pb2.Dataset(
        name=f"datasets/{row.dataset_id}",
        dataset_id=row.dataset_id,
        display_name=row.display_name,
        description=row.description,
        uri=row.uri,
        format=_enum(dataset_pb2.DataFormat, f"DATA_FORMAT_{row.format}"),
        user_column=row.user_column,
        item_column=row.item_column,
        timestamp_column=row.timestamp_column,
        columns=[
            dataset_pb2.Column(
                name=c["name"], type=_enum(dataset_pb2.ColumnType, f"COLUMN_TYPE_{c['type']}")
            )
            for c in json.loads(row.columns_json)
        ],
        row_count=row.row_count,
        size_bytes=row.size_bytes,
        create_time=_timestamp(row.create_time),
    )


def features_to_json(features: Sequence[feature_config_pb2.Feature]) -> str:
    return json.dumps(
        [
            {
                "column": f.column,
                "kind": feature_config_pb2.FeatureKind.Name(f.kind).removeprefix("FEATURE_KIND_"),
                "embedding_dim": f.embedding_dim,
            }
            for f in features
        ]
    )


def features_from_json(text: str) -> list[feature_config_pb2.Feature]:
    return [
        feature_config_pb2.Feature(
            column=f["column"],
            kind=_enum(feature_config_pb2.FeatureKind, f"FEATURE_KIND_{f['kind']}"),
            embedding_dim=f["embedding_dim"],
        )
        for f in json.loads(text)
    ]


def feature_config_to_proto(row: FeatureConfigRow) -> feature_config_pb2.FeatureConfig:
    return feature_config_pb2.FeatureConfig(
        name=f"featureConfigs/{row.feature_config_id}",
        feature_config_id=row.feature_config_id,
        display_name=row.display_name,
        description=row.description,
        dataset=f"datasets/{row.dataset_id}",
        query_features=features_from_json(row.query_features_json),
        candidate_features=features_from_json(row.candidate_features_json),
        target_column=row.target_column,
        query_tensor_dim=row.query_tensor_dim,
        candidate_tensor_dim=row.candidate_tensor_dim,
        create_time=_timestamp(row.create_time),
    )


def model_config_to_proto(row: ModelConfigRow) -> model_config_pb2.ModelConfig:
    architecture: dict[str, Any] = json.loads(row.architecture_json)
    return model_config_pb2.ModelConfig(
        name=f"modelConfigs/{row.model_config_id}",
        model_config_id=row.model_config_id,
        display_name=row.display_name,
        description=row.description,
        model_type=_enum(model_config_pb2.ModelType, f"MODEL_TYPE_{row.model_type}"),
        query_layers=architecture["query_layers"],
        candidate_layers=architecture["candidate_layers"],
        rating_layers=architecture["rating_layers"],
        optimizer=_enum(model_config_pb2.Optimizer, f"OPTIMIZER_{row.optimizer}"),
        learning_rate=row.learning_rate,
        retrieval_weight=architecture["retrieval_weight"],
        ranking_weight=architecture["ranking_weight"],
        create_time=_timestamp(row.create_time),
    )


def training_to_json(training: job_pb2.TrainingParameters) -> str:
    return json_format.MessageToJson(training, preserving_proto_field_name=True, indent=None)


def training_from_json(text: str) -> job_pb2.TrainingParameters:
    return json_format.Parse(text, job_pb2.TrainingParameters())


def job_to_proto(row: JobRow, history: Sequence[JobTransitionRow]) -> job_pb2.Job:
    job = job_pb2.Job(
        name=f"jobs/{row.job_id}",
        job_id=row.job_id,
        display_name=row.display_name,
        description=row.description,
        kind=_enum(job_pb2.JobKind, f"JOB_KIND_{row.kind}"),
        feature_config=f"featureConfigs/{row.feature_config_id}",
        model_config=f"modelConfigs/{row.model_config_id}",
        dataset=f"datasets/{row.dataset_id}",
        model_type=_enum(model_config_pb2.ModelType, f"MODEL_TYPE_{row.model_type}"),
        training=training_from_json(row.training_json),
        experiment=row.experiment,
        state=_enum(job_pb2.JobState, f"JOB_STATE_{row.state}"),
        stage=_enum(job_pb2.PipelineStage, f"PIPELINE_STAGE_{row.stage}")
        if row.stage
        else job_pb2.PIPELINE_STAGE_UNSPECIFIED,
        progress_percent=row.progress_percent,
        current_epoch=row.current_epoch,
        state_history=[
            job_pb2.JobStateTransition(
                state=_enum(job_pb2.JobState, f"JOB_STATE_{t.state}"),
                time=_timestamp(t.time),
                message=t.message,
            )
            for t in history
        ],
        run=row.run,
        final_metrics=json.loads(row.final_metrics_json or "{}"),
        rerun_of=f"jobs/{row.rerun_of}" if row.rerun_of else "",
        launcher=row.launcher,
        workload=_workload_summary(row.workload_json),
        create_time=_timestamp(row.create_time),
        update_time=_timestamp(row.update_time),
        start_time=_timestamp(row.start_time),
        end_time=_timestamp(row.end_time),
    )
    if row.latest_loss is not None:
        job.latest_loss = row.latest_loss
    if row.log_source_json:
        source = json.loads(row.log_source_json)
        job.log_source.CopyFrom(
            job_pb2.LogSource(kind=source["kind"], attributes=source["attributes"])
        )
    if row.error_message:
        job.error.CopyFrom(
            job_pb2.JobError(
                stage=_enum(job_pb2.PipelineStage, f"PIPELINE_STAGE_{row.error_stage}")
                if row.error_stage
                else job_pb2.PIPELINE_STAGE_UNSPECIFIED,
                message=row.error_message,
                details=row.error_details,
            )
        )
    return job


def _workload_summary(workload_json: str) -> str:
    """A one-line description of the launcher's handle ("pid 1234 on e2-standard-4")."""
    if not workload_json:
        return ""
    handle: dict[str, Any] = json.loads(workload_json)
    if "pid" in handle:
        return f"pid {handle['pid']} ({handle.get('machine_type', '')})".replace(" ()", "")
    return str(handle.get("name", ""))
