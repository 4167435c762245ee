"""The TFX pipeline: CsvExampleGen -> StatisticsGen -> SchemaGen -> Transform -> Trainer,
run by LocalDagRunner with SQLite ML Metadata under the job's work_dir.

Kept small for quick tests: no Evaluator (TFMA has no factorized top-k; the Trainer
evaluates), no Pusher (the Trainer exports the serving model itself), no caching, no
Transform statistics, and Beam's DirectRunner in memory with one worker, so the whole
pipeline is this one process and SIGTERM ends all of it.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFRS 0.7.7 needs Keras 2; before TF loads.

import re
from typing import Any

from tfx import v1 as tfx
from tfx.proto import example_gen_pb2, transform_pb2

from cairn_trainer import executors
from cairn_trainer.paths import JobPaths
from cairn_trainer.spec import Spec

BEAM_PIPELINE_ARGS = [
    # FnApiRunner, not DirectRunner: Beam 2.74's DirectRunner first tries the Prism runner,
    # which downloads a Go binary and runs workers in other processes.
    "--runner=FnApiRunner",
    "--direct_running_mode=in_memory",
    "--direct_num_workers=1",
    # Never used by the in-process runner; its presence stops TFX from building an sdist of
    # itself for remote workers before every Beam component (about 7 s each).
    "--sdk_container_image=cairn-trainer-in-process",
]


def transform_config(spec: Spec) -> dict[str, Any]:
    """custom_config of the Transform component (see transform_module.preprocessing_fn)."""
    features = spec.features.all_features()
    return {
        "categorical": [f.column for f in features if f.kind == "categorical"],
        "numeric": [f.column for f in features if f.kind == "numeric"],
        "item_column": spec.dataset.item_column,
        "target_column": spec.features.target_column,
    }


def build_pipeline(
    spec: Spec,
    paths: JobPaths,
    *,
    data_root: str | None = None,
    pipeline_root: str | None = None,
    local_metadata: bool = True,
) -> Any:
    """The job's pipeline. By default everything is under the job's work_dir and ML Metadata
    is a SQLite file there (LocalDagRunner); a remote orchestrator (Vertex AI) gets the data
    and the pipeline root on gs:// and keeps the metadata itself."""
    example_gen = tfx.components.CsvExampleGen(
        input_base=data_root or paths.data,
        input_config=example_gen_pb2.Input(
            splits=[
                example_gen_pb2.Input.Split(name="train", pattern="train/*.csv"),
                example_gen_pb2.Input.Split(name="test", pattern="test/*.csv"),
            ]
        ),
    )
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    # Without shape inference every feature stays optional (VarLen), so Transform and the
    # serving signatures accept rows or requests that lack a feature.
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False
    )
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn="cairn_trainer.transform_module.preprocessing_fn",
        custom_config=transform_config(spec),
        # Vocabularies and z-score statistics come from train only; both splits are
        # transformed.
        splits_config=transform_pb2.SplitsConfig(analyze=["train"], transform=["train", "test"]),
        # Every run starts from a fresh pipeline root, so neither Transform's statistics
        # nor its analyzer cache would ever be read; skipping them saves about 3 s.
        disable_statistics=True,
        disable_analyzer_cache=True,
    )
    trainer = tfx.components.Trainer(
        run_fn="cairn_trainer.trainer_module.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["test"]),
        custom_config={"spec": spec.raw},
    )
    for component, executor_class in (
        (example_gen, executors.CsvExampleGenExecutor),
        (statistics_gen, executors.StatisticsGenExecutor),
        (schema_gen, executors.SchemaGenExecutor),
        (transform, executors.TransformExecutor),
        (trainer, executors.TrainerExecutor),
    ):
        executors.use_executor(component, executor_class)
    return tfx.dsl.Pipeline(
        pipeline_name=re.sub(r"[^A-Za-z0-9_-]", "-", f"cairn-{spec.job_id}"),
        pipeline_root=pipeline_root or paths.pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, transform, trainer],
        enable_cache=False,
        metadata_connection_config=(
            tfx.orchestration.metadata.sqlite_metadata_connection_config(paths.metadata)
            if local_metadata
            else None
        ),
        beam_pipeline_args=BEAM_PIPELINE_ARGS,
    )


def run_pipeline(spec: Spec, paths: JobPaths) -> None:
    tfx.orchestration.LocalDagRunner().run(build_pipeline(spec, paths))
