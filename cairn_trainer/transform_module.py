"""The Transform component's preprocessing_fn (loaded by TFX by module path).

- categorical features: passed through as strings (integers are spelled as text), with a
  tft vocabulary computed over the train split; the Trainer's StringLookup layers read it;
- numeric features: z-scored with the train split's mean and standard deviation;
- the item column: always passed through as a string (retrieval's candidate ids);
- the target (ranking/multitask): passed through as float32.

SchemaGen runs with infer_feature_shape=False, so every raw feature arrives as a
SparseTensor (a row may lack a value); missing values become "" or 0 here. The serving
signatures rely on that: they may feed only some raw features.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFRS 0.7.7 needs Keras 2; before TF loads.

from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

Tensor = Any  # tf.Tensor | tf.SparseTensor | tf.RaggedTensor (TF has no precise typing)


def vocabulary_name(column: str) -> str:
    """The tft vocabulary file name of a categorical column (the Trainer looks it up)."""
    return f"vocab__{column}"


def _dense(value: Tensor, default: Any) -> tf.Tensor:
    """A rank-1 dense tensor [batch] from a sparse, ragged or dense feature; a row without a
    value gets `default`, a row with several keeps its first."""
    if isinstance(value, tf.sparse.SparseTensor):
        # At least one column, so a batch in which no row has a value still has a first one.
        shape = tf.stack([value.dense_shape[0], tf.maximum(value.dense_shape[1], 1)])
        padded = tf.sparse.SparseTensor(value.indices, value.values, shape)
        value = tf.sparse.to_dense(padded, default_value=default)
    elif isinstance(value, tf.RaggedTensor):
        value = value.to_tensor(default_value=default, shape=[None, 1])
    if value.shape.rank is not None and value.shape.rank > 1:
        value = value[:, 0]
    return value


def _as_string(value: Tensor) -> tf.Tensor:
    if value.dtype == tf.string:
        return _dense(value, "")
    # CsvExampleGen infers INT for an id column whose values all look like numbers.
    dense = _dense(value, tf.zeros([], value.dtype))
    return tf.strings.as_string(dense)


def _as_float(value: Tensor) -> tf.Tensor:
    dense = _dense(value, tf.zeros([], value.dtype))
    if dense.dtype == tf.string:
        dense = tf.strings.to_number(dense, out_type=tf.float32)
    return tf.cast(dense, tf.float32)


def preprocessing_fn(inputs: dict[str, Tensor], custom_config: dict[str, Any]) -> dict[str, Any]:
    """custom_config: {"categorical": [...], "numeric": [...], "item_column": str,
    "target_column": str ("" for retrieval)} (built by cairn_trainer.pipeline)."""
    outputs: dict[str, Any] = {}
    for column in custom_config["categorical"]:
        text = _as_string(inputs[column])
        tft.vocabulary(text, vocab_filename=vocabulary_name(column))
        outputs[column] = text
    for column in custom_config["numeric"]:
        # scale_to_z_score leaves a constant column at 0 rather than dividing by zero.
        outputs[column] = tft.scale_to_z_score(_as_float(inputs[column]))
    item_column = custom_config["item_column"]
    if item_column not in outputs:
        outputs[item_column] = _as_string(inputs[item_column])
    target = custom_config["target_column"]
    if target:
        outputs[target] = _as_float(inputs[target])
    return outputs
