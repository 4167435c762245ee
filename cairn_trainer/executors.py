"""The standard TFX executors, each recording a progress event when its component really
starts executing.

LocalDagRunner runs the components one after another in this process; wrapping each
executor's Do() is the one hook that fires exactly when a component's work begins (after
its driver resolved the inputs), without patching TFX's launcher. pipeline.py swaps these
classes into the components' executor specs; TFX imports them by class path.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFRS 0.7.7 needs Keras 2; before TF loads.

from typing import Any

from tfx.components.example_gen.csv_example_gen import executor as csv_example_gen
from tfx.components.schema_gen import executor as schema_gen
from tfx.components.statistics_gen import executor as statistics_gen
from tfx.components.trainer import executor as trainer
from tfx.components.transform import executor as transform
from tfx.dsl.components.base import base_component, executor_spec

from cairn_trainer.progress import record_stage_start

Artifacts = dict[str, list[Any]]


class CsvExampleGenExecutor(csv_example_gen.Executor):  # type: ignore[misc]
    def Do(self, input_dict: Artifacts, output_dict: Artifacts, exec_properties: Any) -> Any:
        # Data preparation was the first half of the ExampleGen stage.
        record_stage_start(
            "ExampleGen", "CsvExampleGen: reading the train and test splits", progress=5.0
        )
        return super().Do(input_dict, output_dict, exec_properties)


class StatisticsGenExecutor(statistics_gen.Executor):  # type: ignore[misc]
    def Do(self, input_dict: Artifacts, output_dict: Artifacts, exec_properties: Any) -> Any:
        record_stage_start("StatisticsGen", "StatisticsGen: computing feature statistics")
        return super().Do(input_dict, output_dict, exec_properties)


class SchemaGenExecutor(schema_gen.Executor):  # type: ignore[misc]
    def Do(self, input_dict: Artifacts, output_dict: Artifacts, exec_properties: Any) -> Any:
        record_stage_start("SchemaGen", "SchemaGen: inferring the schema")
        return super().Do(input_dict, output_dict, exec_properties)


class TransformExecutor(transform.Executor):  # type: ignore[misc]
    def Do(self, input_dict: Artifacts, output_dict: Artifacts, exec_properties: Any) -> Any:
        record_stage_start("Transform", "Transform: vocabularies and normalization")
        return super().Do(input_dict, output_dict, exec_properties)


class TrainerExecutor(trainer.GenericExecutor):  # type: ignore[misc]
    def Do(self, input_dict: Artifacts, output_dict: Artifacts, exec_properties: Any) -> Any:
        record_stage_start("Trainer", "Trainer: building the model")
        return super().Do(input_dict, output_dict, exec_properties)


def use_executor(component: base_component.BaseComponent, executor_class: type) -> None:
    """Replaces a component's executor class, keeping its spec's kind (plain or Beam) and
    settings."""
    current = component.executor_spec
    replacement = type(current)(executor_class)
    replacement.extra_flags = list(getattr(current, "extra_flags", []))
    if isinstance(current, executor_spec.BeamExecutorSpec):
        replacement.beam_pipeline_args = list(current.beam_pipeline_args)
    component.executor_spec = replacement
