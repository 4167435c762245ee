"""The Trainer component's run_fn (loaded by TFX by module path): trains the TFRS model on
the transformed train split, validates on the test split every epoch, evaluates the final
model on it, and writes the job's outputs (serving model, ScaNN index, histories)."""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFRS 0.7.7 needs Keras 2; before TF loads.

import logging
import shutil
from collections import Counter
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from cairn_trainer import serving
from cairn_trainer.fileio import write_json_atomic
from cairn_trainer.history import (
    EpochCallback,
    TrainingHistory,
    summarize,
    test_metrics,
)
from cairn_trainer.models import build_model
from cairn_trainer.paths import JobPaths
from cairn_trainer.progress import ProgressLog
from cairn_trainer.reporter import MetricsReporter
from cairn_trainer.spec import Spec, parse_spec
from cairn_trainer.transform_module import vocabulary_name

logger = logging.getLogger(__name__)

# Rows per batch when reading the corpus and embedding it (memory, not learning).
_CORPUS_BATCH = 1024


def _dataset(
    fn_args: Any, files: list[str], schema: Any, batch_size: int, shuffle_seed: int | None
) -> tf.data.Dataset:
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=batch_size,
        num_epochs=1,  # The default repeats forever; Keras counts the epochs.
        shuffle=shuffle_seed is not None,
        shuffle_seed=shuffle_seed,
    )
    return fn_args.data_accessor.tf_dataset_factory(files, options, schema)


def candidate_corpus(fn_args: Any, schema: Any, spec: Spec) -> tuple[tf.data.Dataset, int]:
    """The unique items of the data (train and test) with their candidate features: the
    retrieval metrics and the serving index rank over it. An item's features are taken
    from its first row."""
    item = spec.dataset.item_column
    columns = [item] + [f.column for f in spec.features.candidate if f.column != item]
    rows = _dataset(fn_args, fn_args.train_files + fn_args.eval_files, schema, 8192, None)
    seen: set[bytes] = set()
    collected: dict[str, list[Any]] = {column: [] for column in columns}
    for batch in rows.as_numpy_iterator():
        ids = batch[item]
        _, first_rows = np.unique(ids, return_index=True)
        for row in sorted(first_rows):
            if ids[row] in seen:
                continue
            seen.add(ids[row])
            for column in columns:
                collected[column].append(batch[column][row])
    if not seen:
        raise ValueError("the data has no items: the retrieval corpus is empty")
    arrays = {column: np.asarray(values) for column, values in collected.items()}
    return tf.data.Dataset.from_tensor_slices(arrays).batch(_CORPUS_BATCH), len(seen)


def item_probabilities(fn_args: Any, schema: Any, spec: Spec) -> tuple[list[bytes], list[float]]:
    """Each training item's share of the training rows: the probability that in-batch
    sampling draws it as a negative (the retrieval loss corrects for it)."""
    item = spec.dataset.item_column
    counts: Counter[bytes] = Counter()
    for batch in _dataset(fn_args, fn_args.train_files, schema, 8192, None).as_numpy_iterator():
        counts.update(batch[item].tolist())
    total = sum(counts.values())
    if not total:
        raise ValueError("the train split is empty")
    keys = list(counts)
    return keys, [counts[key] / total for key in keys]


def _vocabularies(spec: Spec, tft_output: Any) -> tuple[dict[str, str], dict[str, int]]:
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for feature in spec.features.all_features():
        if feature.kind != "categorical":
            continue
        name = vocabulary_name(feature.column)
        size = int(tft_output.vocabulary_size_by_name(name))
        if size == 0:
            raise ValueError(f"categorical feature {feature.column!r} has no values in train")
        files[feature.column] = tft_output.vocabulary_file_by_name(name)
        sizes[feature.column] = size
    return files, sizes


def copy_tree(source: str, target: str) -> None:
    """A local directory to `target`, replacing it: a local path or a gs:// URI."""
    if tf.io.gfile.exists(target):
        tf.io.gfile.rmtree(target)
    for directory, _, files in tf.io.gfile.walk(source):
        relative = os.path.relpath(directory, source)
        destination = target if relative == "." else f"{target.rstrip('/')}/{relative}"
        tf.io.gfile.makedirs(destination)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), f"{destination}/{name}", overwrite=True)


def run_fn(fn_args: Any) -> None:
    spec = parse_spec(fn_args.custom_config["spec"])
    paths = JobPaths(spec.work_dir)
    epochs = spec.training.epochs
    # Set by `cairn_trainer run` (the whole pipeline in this process); absent when an
    # orchestrator (Vertex AI) runs this component in a container of its own.
    under_cli = ProgressLog.from_env()
    progress = under_cli or ProgressLog(paths.progress, epochs)
    tf.keras.utils.set_random_seed(spec.split.seed)

    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    schema = tft_output.transformed_metadata.schema
    vocabulary_files, vocabulary_sizes = _vocabularies(spec, tft_output)
    write_json_atomic(paths.output("vocabulary_sizes.json"), vocabulary_sizes)

    batch_size = spec.training.batch_size
    train = _dataset(fn_args, fn_args.train_files, schema, batch_size, spec.split.seed)
    test = _dataset(fn_args, fn_args.eval_files, schema, batch_size, None)
    corpus: tf.data.Dataset | None = None
    corpus_size = 0
    probabilities = None
    if spec.has_retrieval:
        corpus, corpus_size = candidate_corpus(fn_args, schema, spec)
        probabilities = item_probabilities(fn_args, schema, spec)
        logger.info("candidate corpus: %d items", corpus_size)

    model = build_model(
        spec, vocabulary_files, vocabulary_sizes, corpus, corpus_size, probabilities
    )
    history = TrainingHistory(
        spec.job_id,
        spec.model_type,
        {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": spec.learning_rate,
            "sample_percent": spec.sample_percent,
            "optimizer": spec.model.optimizer,
            "model_type": spec.model_type,
            "split_strategy": spec.split.strategy,
            "corpus_size": corpus_size,
        },
    )
    reporting = spec.reporting
    reporter = MetricsReporter(
        reporting.gateway_url,
        reporting.run,
        reporting.token,
        spec.job_id,
        timeout_seconds=reporting.timeout_seconds,
    )
    callback = EpochCallback(model, history, reporter, progress, paths.training_metrics)
    progress.event("Trainer", 40.0, f"training for {epochs} epochs")
    model.fit(train, validation_data=test, epochs=epochs, callbacks=[callback], verbose=2)

    progress.stage_started("Evaluation", "evaluating the trained model on the test split")
    final = test_metrics(spec.model_type, model.evaluate(test, return_dict=True, verbose=0))
    history.add_final(epochs, final)
    history.save(paths.training_metrics)
    write_json_atomic(paths.output("weight_histograms.json"), history.histogram_document())
    reporter.report(epochs, final)
    logger.info(
        "test metrics: %s",
        summarize(final, ["test/loss", "test/recall_at_10", "test/recall_at_100", "test/rmse"]),
    )

    progress.event("Evaluation", 97.0, "exporting the serving model")
    serving_dir = paths.output("serving_model")
    shutil.rmtree(serving_dir, ignore_errors=True)
    query_columns = [f.column for f in spec.features.query]
    if spec.has_retrieval:
        assert corpus is not None
        serving.export_retrieval(model, tft_output, query_columns, corpus, corpus_size, serving_dir)
        scann_dir = paths.output("scann_index")
        shutil.rmtree(scann_dir, ignore_errors=True)
        if serving.scann_available():
            try:
                serving.export_scann(
                    model, tft_output, query_columns, corpus, corpus_size, scann_dir
                )
            except Exception:
                # An approximate index is a bonus; the exact one above is the serving model.
                logger.warning("ScaNN index export failed; continuing without it", exc_info=True)
                shutil.rmtree(scann_dir, ignore_errors=True)
    else:
        columns = [f.column for f in spec.features.all_features()]
        serving.export_ranking(model, tft_output, columns, serving_dir)
    # TFX's own Model artifact gets the same SavedModel, so its lineage in ML Metadata is
    # real (a Pusher or an InfraValidator could consume it).
    # On Vertex AI that directory is on gs://: tf.io.gfile speaks both.
    copy_tree(serving_dir, fn_args.serving_model_dir)
    if spec.results_uri and under_cli is None:
        # On Vertex AI nobody else can read this container's disk: the job's files go to
        # Cloud Storage, where the scheduler collects them (cairn_trainer.remote). Under the
        # CLI (a Kubernetes pod) the CLI uploads them once the outputs are complete.
        from cairn_trainer.remote import finish_remote

        uploaded = finish_remote(spec, getattr(fn_args, "schema_path", "") or "")
        logger.info("uploaded %d result files to %s", uploaded, spec.results_uri)
