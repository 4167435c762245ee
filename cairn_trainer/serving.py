"""Serving exports: SavedModels that take raw features (the Transform graph is inside).

- retrieval / multitask: a tfrs BruteForce top-k index over the candidate corpus
  (outputs/serving_model/) and, when ScaNN imports, a ScaNN index (outputs/scann_index/).
  Signatures: ``serving_default`` takes the raw query features as named 1-D tensors (names
  are the column names with characters other than [A-Za-z0-9_] replaced by "_") and returns
  {"scores": [batch, k], "item_ids": [batch, k]}; ``serve_tf_examples`` takes serialized
  tf.Examples (the TFX convention).
- ranking: the rating model; ``serving_default`` takes the raw query and candidate features
  and returns {"rating": [batch, 1]}; ``serve_tf_examples`` likewise from tf.Examples.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFRS 0.7.7 needs Keras 2; before TF loads.

import tensorflow as tf
import tensorflow_recommenders as tfrs

from cairn_trainer.models import RECALL_KS, RecommenderModel

logger = logging.getLogger(__name__)

# ScaNN's custom ops live in this namespace; SavedModel refuses unknown ones by default.
SCANN_SAVE_OPTIONS_NAMESPACE = "Scann"


def input_name(column: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", column)
    return name if name and not name[0].isdigit() else f"f_{name}"


def _raw_specs(
    raw_feature_spec: Mapping[str, Any], columns: Sequence[str]
) -> tuple[dict[str, tf.TensorSpec], dict[str, Any]]:
    """TensorSpecs for the dense serving inputs and the tf.Example parsing spec."""
    names = {column: input_name(column) for column in columns}
    if len(set(names.values())) != len(names):
        raise ValueError(f"columns {sorted(columns)} do not give distinct input names")
    dense = {
        column: tf.TensorSpec([None], raw_feature_spec[column].dtype, name=names[column])
        for column in columns
    }
    parsing = {column: raw_feature_spec[column] for column in columns}
    return dense, parsing


def _as_raw(features: Mapping[str, tf.Tensor]) -> dict[str, tf.SparseTensor]:
    """Dense [batch] inputs -> the [batch, 1] SparseTensors Transform was traced with
    (SchemaGen ran without shape inference). from_dense drops "" and 0, which Transform
    fills back in as the defaults for missing values: the same result."""
    return {
        column: tf.sparse.from_dense(tf.expand_dims(value, 1)) for column, value in features.items()
    }


class RetrievalServing(tf.Module):  # type: ignore[misc]
    def __init__(
        self,
        index: tfrs.layers.factorized_top_k.TopK,
        tft_layer: Any,
        query_columns: Sequence[str],
        raw_feature_spec: Mapping[str, Any],
    ) -> None:
        super().__init__(name="retrieval_serving")
        self.index = index
        self.tft_layer = tft_layer
        self._columns = list(query_columns)
        dense_specs, self._parsing = _raw_specs(raw_feature_spec, self._columns)

        @tf.function(input_signature=[dense_specs], autograph=False)  # type: ignore[untyped-decorator]
        def serving_default(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return self._retrieve(_as_raw(features))

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False
        )
        def serve_tf_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._retrieve(tf.io.parse_example(examples, self._parsing))

        self.serving_default = serving_default
        self.serve_tf_examples = serve_tf_examples

    def _retrieve(self, raw: Mapping[str, Any]) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer(dict(raw))
        scores, ids = self.index({column: transformed[column] for column in self._columns})
        return {"scores": scores, "item_ids": ids}

    def signatures(self) -> dict[str, Any]:
        return {
            "serving_default": self.serving_default.get_concrete_function(),
            "serve_tf_examples": self.serve_tf_examples.get_concrete_function(),
        }


class RankingServing(tf.Module):  # type: ignore[misc]
    def __init__(
        self,
        model: RecommenderModel,
        tft_layer: Any,
        columns: Sequence[str],
        raw_feature_spec: Mapping[str, Any],
    ) -> None:
        super().__init__(name="ranking_serving")
        self.model = model
        self.tft_layer = tft_layer
        self._columns = list(columns)
        dense_specs, self._parsing = _raw_specs(raw_feature_spec, self._columns)

        @tf.function(input_signature=[dense_specs], autograph=False)  # type: ignore[untyped-decorator]
        def serving_default(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            return self._rate(_as_raw(features))

        @tf.function(  # type: ignore[untyped-decorator]
            input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False
        )
        def serve_tf_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._rate(tf.io.parse_example(examples, self._parsing))

        self.serving_default = serving_default
        self.serve_tf_examples = serve_tf_examples

    def _rate(self, raw: Mapping[str, Any]) -> dict[str, tf.Tensor]:
        transformed = self.tft_layer(dict(raw))
        features = {column: transformed[column] for column in self._columns}
        return {"rating": self.model.predict_rating(features)}

    def signatures(self) -> dict[str, Any]:
        return {
            "serving_default": self.serving_default.get_concrete_function(),
            "serve_tf_examples": self.serve_tf_examples.get_concrete_function(),
        }


def _corpus_embeddings(
    model: RecommenderModel, corpus: tf.data.Dataset, item_column: str
) -> tf.data.Dataset:
    return corpus.map(model.embed_candidates)


def export_retrieval(
    model: RecommenderModel,
    tft_output: Any,
    query_columns: Sequence[str],
    corpus: tf.data.Dataset,
    corpus_size: int,
    path: str,
) -> None:
    k = min(max(RECALL_KS), corpus_size)
    index = tfrs.layers.factorized_top_k.BruteForce(model.query_tower, k=k)
    index.index_from_dataset(_corpus_embeddings(model, corpus, model.item_column))
    module = RetrievalServing(
        index, tft_output.transform_features_layer(), query_columns, tft_output.raw_feature_spec()
    )
    tf.saved_model.save(module, path, signatures=module.signatures())


def export_ranking(
    model: RecommenderModel, tft_output: Any, columns: Sequence[str], path: str
) -> None:
    module = RankingServing(
        model, tft_output.transform_features_layer(), columns, tft_output.raw_feature_spec()
    )
    tf.saved_model.save(module, path, signatures=module.signatures())


def scann_available() -> bool:
    """ScaNN is optional: the runtime may lack it (or have one built for another TF)."""
    try:
        import scann  # noqa: F401
    except Exception as error:  # An ABI mismatch raises more than ImportError.
        logger.info("ScaNN not available (%s): no ScaNN index exported", error)
        return False
    return True


def export_scann(
    model: RecommenderModel,
    tft_output: Any,
    query_columns: Sequence[str],
    corpus: tf.data.Dataset,
    corpus_size: int,
    path: str,
) -> None:
    """A ScaNN index over the same corpus: a tree of about sqrt(n) leaves, a fifth of them
    searched, the best 4k candidates rescored exactly."""
    k = min(max(RECALL_KS), corpus_size)
    leaves = max(1, min(1000, round(corpus_size**0.5)))
    index = tfrs.layers.factorized_top_k.ScaNN(
        model.query_tower,
        k=k,
        num_leaves=leaves,
        num_leaves_to_search=max(1, leaves // 5),
        num_reordering_candidates=min(corpus_size, 4 * k),
    )
    index.index_from_dataset(_corpus_embeddings(model, corpus, model.item_column))
    module = RetrievalServing(
        index, tft_output.transform_features_layer(), query_columns, tft_output.raw_feature_spec()
    )
    tf.saved_model.save(
        module,
        path,
        signatures=module.signatures(),
        options=tf.saved_model.SaveOptions(namespace_whitelist=[SCANN_SAVE_OPTIONS_NAMESPACE]),
    )
