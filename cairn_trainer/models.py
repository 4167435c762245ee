"""The TFRS models: two towers (query, candidate), an optional rating head, and the tasks.

- retrieval: tfrs.tasks.Retrieval over the dot product of the towers' outputs, with
  FactorizedTopK (Recall@5/10/50/100) over the candidate corpus, computed on evaluation only
  (over the whole corpus it costs far more than the training step itself);
- ranking: the towers' outputs concatenated -> rating head -> 1, tfrs.tasks.Ranking with MSE
  loss and RMSE/MAE metrics;
- multitask: both, loss = retrieval_weight * retrieval + ranking_weight * ranking.

train_step is overridden to record, per batch, the global L2 norm of the gradients of all
variables and of each tower; Keras averages them over the epoch (Mean trackers, reset at
each epoch's start like every model metric).
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFRS 0.7.7 needs Keras 2; before TF loads.

import re
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_recommenders as tfrs

from cairn_trainer.spec import FeatureSpec, Spec


def _keep_autograph_out_of_tf_keras() -> None:
    """Autograph leaves TensorFlow and `keras` alone but not `tf_keras` (Keras 2 under
    TF 2.16), so tracing a train step converted some 1,600 tf_keras functions: about 25 s of
    a one-minute quick test on a small machine (measured). tf_keras is written to run
    unconverted, as `keras` was; this adds it to autograph's do-not-convert rules. TFRS's
    own code (whose tasks need autograph) is still converted."""
    try:
        from tensorflow.python.autograph.core import config as autograph_config
    except ImportError:  # A TF whose layout moved: tracing is slower, nothing else.
        return
    rules = autograph_config.CONVERSION_RULES
    if not any(getattr(rule, "_prefix", None) == "tf_keras" for rule in rules):
        autograph_config.CONVERSION_RULES = (
            autograph_config.DoNotConvert("tf_keras"),
            *rules,
        )


_keep_autograph_out_of_tf_keras()

RECALL_KS = (5, 10, 50, 100)

Features = Mapping[str, Any]  # feature name -> tf.Tensor
# Item ids (bytes) and the share of the training rows each appears in.
ItemProbabilities = tuple[Sequence[bytes], Sequence[float]]


def layer_name(text: str) -> str:
    """A Keras/TF-safe name for a column (names end up in variable and op names)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text) or "feature"


class Tower(tf.keras.Model):  # type: ignore[misc]
    """StringLookup + Embedding per categorical feature, the (already z-scored) value per
    numeric feature, concatenated, then Dense layers; the last layer is linear and sets the
    output size."""

    def __init__(
        self,
        name: str,
        features: Sequence[FeatureSpec],
        vocabulary_files: Mapping[str, str],
        vocabulary_sizes: Mapping[str, int],
        layer_sizes: Sequence[int],
    ) -> None:
        super().__init__(name=name)
        self.feature_columns = [feature.column for feature in features]
        self.numeric_columns = [f.column for f in features if f.kind == "numeric"]
        # A list, not a dict keyed by column: Keras tracks list entries by position, so a
        # column name never has to be a valid checkpoint key.
        self.embedders: list[tf.keras.Sequential] = []
        self.categorical_columns: list[str] = []
        for feature in features:
            if feature.kind != "categorical":
                continue
            size = vocabulary_sizes[feature.column]
            self.categorical_columns.append(feature.column)
            self.embedders.append(
                tf.keras.Sequential(
                    [
                        # The vocabulary file Transform wrote; index 0 is out-of-vocabulary.
                        tf.keras.layers.StringLookup(
                            vocabulary=vocabulary_files[feature.column], mask_token=None
                        ),
                        tf.keras.layers.Embedding(size + 1, feature.embedding_dim),
                    ],
                    name=f"{layer_name(feature.column)}_embedding",
                )
            )
        hidden = [tf.keras.layers.Dense(units, activation="relu") for units in layer_sizes[:-1]]
        self.dense = tf.keras.Sequential(
            [*hidden, tf.keras.layers.Dense(layer_sizes[-1])], name=f"{name}_dense"
        )

    def call(self, features: Features) -> tf.Tensor:
        parts = [
            embedder(features[column])
            for column, embedder in zip(self.categorical_columns, self.embedders, strict=True)
        ]
        parts.extend(
            tf.reshape(tf.cast(features[column], tf.float32), [-1, 1])
            for column in self.numeric_columns
        )
        return self.dense(tf.concat(parts, axis=1))


class RatingHead(tf.keras.Model):  # type: ignore[misc]
    """Dense layers (ReLU) per rating_layers, then one linear output: the predicted rating."""

    def __init__(self, layer_sizes: Sequence[int]) -> None:
        super().__init__(name="rating_head")
        hidden = [tf.keras.layers.Dense(units, activation="relu") for units in layer_sizes]
        self.dense = tf.keras.Sequential([*hidden, tf.keras.layers.Dense(1)])

    def call(self, towers: tf.Tensor) -> tf.Tensor:
        return self.dense(towers)


def _squared_norm(gradient: Any) -> tf.Tensor:
    """Squared L2 norm of one gradient. An embedding's gradient is IndexedSlices, possibly
    with repeated rows; they are summed first so the norm is that of the dense gradient."""
    if isinstance(gradient, tf.IndexedSlices):
        unique, positions = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.size(unique))
        return tf.reduce_sum(tf.square(tf.cast(values, tf.float32)))
    return tf.reduce_sum(tf.square(tf.cast(gradient, tf.float32)))


def _global_norm(gradients: Sequence[Any]) -> tf.Tensor:
    squares = [_squared_norm(g) for g in gradients if g is not None]
    if not squares:
        return tf.constant(0.0)
    return tf.sqrt(tf.add_n(squares))


class RecommenderModel(tfrs.Model):  # type: ignore[misc]
    """Retrieval, ranking or multitask over one query and one candidate tower."""

    def __init__(
        self,
        spec: Spec,
        query_tower: Tower,
        candidate_tower: Tower,
        candidates: tf.data.Dataset | None,
        corpus_size: int,
        item_probabilities: ItemProbabilities | None = None,
    ) -> None:
        super().__init__(name="recommender")
        self.model_type = spec.model_type
        self.item_column = spec.dataset.item_column
        self.target_column = spec.features.target_column
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.retrieval_weight = spec.model.retrieval_weight if spec.has_ranking else 1.0
        self.ranking_weight = spec.model.ranking_weight if spec.has_retrieval else 1.0
        self.retrieval_task: tfrs.tasks.Retrieval | None = None
        self.item_probability: tf.lookup.StaticHashTable | None = None
        self.ranking_task: tfrs.tasks.Ranking | None = None
        self.rating_head: RatingHead | None = None
        if spec.has_retrieval:
            if candidates is None:
                raise ValueError("retrieval needs the candidate corpus")
            # Streaming re-embeds the corpus with the current candidate tower at every
            # evaluation, so the recall of each epoch is that of the weights of that epoch.
            index = tfrs.layers.factorized_top_k.Streaming(k=min(max(RECALL_KS), corpus_size))
            index.index_from_dataset(candidates.map(self.embed_candidates))
            self.retrieval_task = tfrs.tasks.Retrieval(
                metrics=tfrs.metrics.FactorizedTopK(candidates=index, ks=RECALL_KS),
                # Two rows of a batch with the same item are not each other's negatives.
                remove_accidental_hits=True,
            )
            # In-batch negatives are drawn in proportion to popularity, so a popular item is
            # pushed down far more often than a rare one: without correcting for that
            # (logQ, Yi et al. 2019) the model recommends popular items worse than a
            # popularity count does (measured on the sample dataset: Recall@10 0.028 against
            # popularity's 0.058).
            if item_probabilities is not None:
                keys, probabilities = item_probabilities
                self.item_probability = tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(
                        tf.constant(keys, tf.string), tf.constant(probabilities, tf.float32)
                    ),
                    default_value=float(min(probabilities)),
                )
        if spec.has_ranking:
            self.rating_head = RatingHead(spec.model.rating_layers)
            self.ranking_task = tfrs.tasks.Ranking(
                loss=tf.keras.losses.MeanSquaredError(),
                metrics=[
                    tf.keras.metrics.RootMeanSquaredError(name="rmse"),
                    tf.keras.metrics.MeanAbsoluteError(name="mae"),
                ],
            )
        # Epoch means, reset by Keras at each epoch's start like the tasks' metrics.
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.grad_norm_trackers = [
            tf.keras.metrics.Mean(name=f"grad_norm_{part}") for part in self.gradient_parts()
        ]

    def embed_candidates(self, candidates: Features) -> tuple[tf.Tensor, tf.Tensor]:
        return candidates[self.item_column], self.candidate_tower(candidates)

    def towers(self) -> dict[str, tf.keras.Model]:
        """The named parts whose gradients and weights are reported."""
        parts: dict[str, tf.keras.Model] = {
            "query": self.query_tower,
            "candidate": self.candidate_tower,
        }
        if self.rating_head is not None:
            parts["rating_head"] = self.rating_head
        return parts

    def gradient_parts(self) -> list[str]:
        return ["total", "query", "candidate"] + (
            ["rating_head"] if self.model_type != "retrieval" else []
        )

    def predict_rating(self, features: Features) -> tf.Tensor:
        assert self.rating_head is not None
        both = tf.concat([self.query_tower(features), self.candidate_tower(features)], axis=1)
        return self.rating_head(both)

    def call(self, features: Features) -> tf.Tensor:
        if self.rating_head is not None:
            return self.predict_rating(features)
        return self.query_tower(features)

    def compute_loss(self, features: Features, training: bool = False) -> tf.Tensor:
        query = self.query_tower(features)
        candidate = self.candidate_tower(features)
        loss = tf.constant(0.0)
        if self.retrieval_task is not None:
            item_ids = features[self.item_column]
            sampling = (
                self.item_probability.lookup(item_ids)
                if training and self.item_probability is not None
                else None
            )
            retrieval = self.retrieval_task(
                query,
                candidate,
                candidate_sampling_probability=sampling,
                candidate_ids=item_ids,
                compute_metrics=not training,
            )
            loss += self.retrieval_weight * retrieval
        if self.ranking_task is not None and self.rating_head is not None:
            prediction = self.rating_head(tf.concat([query, candidate], axis=1))
            labels = tf.reshape(tf.cast(features[self.target_column], tf.float32), [-1, 1])
            ranking = self.ranking_task(labels=labels, predictions=prediction)
            loss += self.ranking_weight * ranking
        return loss

    def _total_loss(self, features: Features, training: bool) -> tf.Tensor:
        loss = self.compute_loss(features, training=training)
        if self.losses:
            loss += tf.add_n([tf.reduce_sum(extra) for extra in self.losses])
        return loss

    def train_step(self, features: Features) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss = self._total_loss(features, training=True)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(
            (g, v) for g, v in zip(gradients, variables, strict=True) if g is not None
        )
        self.loss_tracker.update_state(loss)
        # Which tower a variable belongs to is known at trace time, so this costs only the
        # norms themselves.
        norms = {"total": _global_norm(gradients)}
        for part, tower in self.towers().items():
            own = {v.ref() for v in tower.trainable_variables}
            norms[part] = _global_norm(
                [g for g, v in zip(gradients, variables, strict=True) if v.ref() in own]
            )
        for tracker, part in zip(self.grad_norm_trackers, self.gradient_parts(), strict=True):
            tracker.update_state(norms[part])
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, features: Features) -> dict[str, tf.Tensor]:
        loss = self._total_loss(features, training=False)
        self.loss_tracker.update_state(loss)
        return {
            metric.name: metric.result()
            for metric in self.metrics
            if not metric.name.startswith("grad_norm_")
        }


def make_optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    if name == "adagrad":
        return tf.keras.optimizers.Adagrad(learning_rate=learning_rate)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate=learning_rate)
    return tf.keras.optimizers.SGD(learning_rate=learning_rate)


def build_model(
    spec: Spec,
    vocabulary_files: Mapping[str, str],
    vocabulary_sizes: Mapping[str, int],
    candidates: tf.data.Dataset | None,
    corpus_size: int,
    item_probabilities: ItemProbabilities | None = None,
) -> RecommenderModel:
    query = Tower(
        "query",
        spec.features.query,
        vocabulary_files,
        vocabulary_sizes,
        spec.model.query_layers,
    )
    candidate = Tower(
        "candidate",
        spec.features.candidate,
        vocabulary_files,
        vocabulary_sizes,
        spec.model.candidate_layers,
    )
    model = RecommenderModel(spec, query, candidate, candidates, corpus_size, item_probabilities)
    model.compile(optimizer=make_optimizer(spec.model.optimizer, spec.learning_rate))
    return model
