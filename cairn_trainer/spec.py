"""The job spec the scheduler's launcher writes (spec.json), parsed and validated.

Every error names the offending field (``spec.features.query[0].column: ...``) because the
message ends up in result.json and in front of the user who configured the experiment.
Pure Python (stdlib only): the services' tests import it too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

MODEL_TYPES = ("retrieval", "ranking", "multitask")
SPLIT_STRATEGIES = ("random", "time_holdout", "strict_time")
DATASET_FORMATS = ("csv", "parquet")
COLUMN_TYPES = ("string", "int64", "double")
FEATURE_KINDS = ("categorical", "numeric")
OPTIMIZERS = ("adagrad", "adam", "sgd")
MIN_SAMPLE_PERCENT = 5.0
MAX_SAMPLE_PERCENT = 100.0


class SpecError(ValueError):
    """The spec is malformed or inconsistent; the message says where."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # string | int64 | double


@dataclass(frozen=True)
class DatasetSpec:
    uri: str
    format: str
    user_column: str
    item_column: str
    timestamp_column: str
    columns: tuple[Column, ...]

    def column_type(self, name: str) -> str | None:
        for column in self.columns:
            if column.name == name:
                return column.type
        return None

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]


@dataclass(frozen=True)
class SplitSpec:
    strategy: str
    test_fraction: float
    seed: int


@dataclass(frozen=True)
class FeatureSpec:
    column: str
    kind: str  # categorical | numeric
    embedding_dim: int  # only meaningful for categorical features


@dataclass(frozen=True)
class FeaturesSpec:
    query: tuple[FeatureSpec, ...]
    candidate: tuple[FeatureSpec, ...]
    target_column: str  # "" for retrieval

    def all_features(self) -> list[FeatureSpec]:
        """Query then candidate features, each column once (a column may feed both towers;
        Transform processes it once)."""
        seen: set[str] = set()
        result: list[FeatureSpec] = []
        for feature in (*self.query, *self.candidate):
            if feature.column not in seen:
                seen.add(feature.column)
                result.append(feature)
        return result


@dataclass(frozen=True)
class ModelSpec:
    query_layers: tuple[int, ...]
    candidate_layers: tuple[int, ...]
    rating_layers: tuple[int, ...]
    optimizer: str
    learning_rate: float
    retrieval_weight: float
    ranking_weight: float


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int
    batch_size: int
    learning_rate: float


@dataclass(frozen=True)
class ReportingSpec:
    gateway_url: str  # "" = do not report live
    run: str
    token: str
    timeout_seconds: float

    @property
    def enabled(self) -> bool:
        return bool(self.gateway_url)


@dataclass(frozen=True)
class Spec:
    job_id: str
    model_type: str
    work_dir: str
    dataset: DatasetSpec
    split: SplitSpec
    sample_percent: float
    features: FeaturesSpec
    model: ModelSpec
    training: TrainingSpec
    hardware_tier: str
    reporting: ReportingSpec
    # Where the trainer uploads training_metrics.json and outputs/ when it runs where the
    # scheduler cannot read its work_dir (a Vertex AI pipeline): "" or gs://bucket/prefix.
    results_uri: str = ""
    # The document as given, so the TFX components (Trainer custom_config) get exactly it.
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def has_retrieval(self) -> bool:
        return self.model_type in ("retrieval", "multitask")

    @property
    def has_ranking(self) -> bool:
        return self.model_type in ("ranking", "multitask")

    @property
    def learning_rate(self) -> float:
        """training.learning_rate wins; model.learning_rate is the fallback when the former
        is unset (0)."""
        return self.training.learning_rate or self.model.learning_rate


class _Reader:
    """Reads one JSON object and reports errors with the field's path."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise SpecError(f"{path}: expected an object, got {_describe(value)}")
        self._value: dict[str, Any] = value
        self._path = path

    def _get(self, key: str) -> Any:
        if key not in self._value:
            raise SpecError(f"{self._path}.{key}: missing")
        return self._value[key]

    def where(self, key: str) -> str:
        return f"{self._path}.{key}"

    def obj(self, key: str) -> _Reader:
        return _Reader(self._get(key), self.where(key))

    def string(self, key: str, *, allow_empty: bool = False) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise SpecError(f"{self.where(key)}: expected a string, got {_describe(value)}")
        if not allow_empty and not value.strip():
            raise SpecError(f"{self.where(key)}: must not be empty")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in choices:
            raise SpecError(f"{self.where(key)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, key: str, *, minimum: int | None = None) -> int:
        value = self._get(key)
        # JSON has one number type: accept 3.0 but not 3.5, and never booleans.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{self.where(key)}: expected an integer, got {_describe(value)}")
        if minimum is not None and value < minimum:
            raise SpecError(f"{self.where(key)}: must be at least {minimum}, got {value}")
        return value

    def number(
        self, key: str, *, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{self.where(key)}: expected a number, got {_describe(value)}")
        result = float(value)
        if not math.isfinite(result):
            raise SpecError(f"{self.where(key)}: must be finite")
        if minimum is not None and result < minimum:
            raise SpecError(f"{self.where(key)}: must be at least {minimum:g}, got {result:g}")
        if maximum is not None and result > maximum:
            raise SpecError(f"{self.where(key)}: must be at most {maximum:g}, got {result:g}")
        return result

    def items(self, key: str) -> list[tuple[str, Any]]:
        value = self._get(key)
        if not isinstance(value, list):
            raise SpecError(f"{self.where(key)}: expected a list, got {_describe(value)}")
        return [(f"{self.where(key)}[{index}]", item) for index, item in enumerate(value)]

    def layers(self, key: str) -> tuple[int, ...]:
        units: list[int] = []
        for where, item in self.items(key):
            if isinstance(item, float) and item.is_integer():
                item = int(item)
            if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                raise SpecError(f"{where}: expected a positive integer, got {_describe(item)}")
            units.append(item)
        return tuple(units)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = (
        json.dumps(value) if isinstance(value, str | int | float | bool) else type(value).__name__
    )
    return text if len(text) <= 40 else text[:37] + "..."


def _absolute_path(reader: _Reader, key: str) -> str:
    value = reader.string(key)
    if value.startswith("file://"):
        value = value[len("file://") :]
    if not os.path.isabs(value):
        raise SpecError(f"{reader.where(key)}: must be an absolute path, got {value!r}")
    return value


def _dataset(reader: _Reader) -> DatasetSpec:
    columns: list[Column] = []
    names: set[str] = set()
    for where, item in reader.items("columns"):
        column_reader = _Reader(item, where)
        name = column_reader.string("name")
        if name in names:
            raise SpecError(f"{where}.name: column {name!r} is declared twice")
        names.add(name)
        columns.append(Column(name=name, type=column_reader.choice("type", COLUMN_TYPES)))
    if not columns:
        raise SpecError(f"{reader.where('columns')}: declare at least one column")
    dataset = DatasetSpec(
        uri=_absolute_path(reader, "uri"),
        format=reader.choice("format", DATASET_FORMATS),
        user_column=reader.string("user_column"),
        item_column=reader.string("item_column"),
        timestamp_column=reader.string("timestamp_column", allow_empty=True),
        columns=tuple(columns),
    )
    for key in ("user_column", "item_column", "timestamp_column"):
        name = getattr(dataset, key)
        if name and name not in names:
            raise SpecError(
                f"{reader.where(key)}: {name!r} is not among the declared columns "
                f"({', '.join(sorted(names))})"
            )
    return dataset


def _features(reader: _Reader, dataset: DatasetSpec, model_type: str) -> FeaturesSpec:
    towers: dict[str, tuple[FeatureSpec, ...]] = {}
    kinds: dict[str, str] = {}
    for tower in ("query", "candidate"):
        features: list[FeatureSpec] = []
        seen: set[str] = set()
        for where, item in reader.items(tower):
            feature_reader = _Reader(item, where)
            column = feature_reader.string("column")
            kind = feature_reader.choice("kind", FEATURE_KINDS)
            column_type = dataset.column_type(column)
            if column_type is None:
                raise SpecError(f"{where}.column: {column!r} is not a declared dataset column")
            if column in seen:
                raise SpecError(f"{where}.column: {column!r} appears twice in the {tower} tower")
            seen.add(column)
            if kinds.setdefault(column, kind) != kind:
                raise SpecError(
                    f"{where}.kind: {column!r} is {kinds[column]} in the query tower; "
                    "a column has one kind"
                )
            if kind == "numeric" and column_type == "string":
                raise SpecError(
                    f"{where}.kind: numeric feature {column!r} needs an int64 or double column"
                )
            if kind == "categorical":
                embedding_dim = feature_reader.integer("embedding_dim", minimum=1)
            else:
                # A numeric feature enters the tower as one normalized value.
                embedding_dim = 1
            features.append(FeatureSpec(column=column, kind=kind, embedding_dim=embedding_dim))
        if not features:
            raise SpecError(f"{reader.where(tower)}: the {tower} tower needs at least one feature")
        towers[tower] = tuple(features)
    target = reader.string("target_column", allow_empty=True)
    if model_type in ("ranking", "multitask"):
        if not target:
            raise SpecError(
                f"{reader.where('target_column')}: a {model_type} model needs a target column"
            )
        target_type = dataset.column_type(target)
        if target_type is None:
            raise SpecError(
                f"{reader.where('target_column')}: {target!r} is not a declared dataset column"
            )
        if target_type == "string":
            raise SpecError(
                f"{reader.where('target_column')}: {target!r} must be an int64 or double column"
            )
        feature_columns = {f.column for f in (*towers["query"], *towers["candidate"])}
        if target in feature_columns:
            raise SpecError(
                f"{reader.where('target_column')}: {target!r} is also used as a feature"
            )
    else:
        # Retrieval learns from the interactions themselves; a target is not used.
        target = ""
    return FeaturesSpec(query=towers["query"], candidate=towers["candidate"], target_column=target)


def _model(reader: _Reader, model_type: str) -> ModelSpec:
    model = ModelSpec(
        query_layers=reader.layers("query_layers"),
        candidate_layers=reader.layers("candidate_layers"),
        rating_layers=reader.layers("rating_layers"),
        optimizer=reader.choice("optimizer", OPTIMIZERS),
        learning_rate=reader.number("learning_rate", minimum=0.0),
        retrieval_weight=reader.number("retrieval_weight", minimum=0.0),
        ranking_weight=reader.number("ranking_weight", minimum=0.0),
    )
    for key in ("query_layers", "candidate_layers"):
        if not getattr(model, key):
            raise SpecError(
                f"{reader.where(key)}: at least one layer (the last is the tower's output size)"
            )
    if model_type in ("retrieval", "multitask") and (
        model.query_layers[-1] != model.candidate_layers[-1]
    ):
        raise SpecError(
            f"{reader.where('candidate_layers')}: the last layer ({model.candidate_layers[-1]}) "
            f"must equal the query tower's last layer ({model.query_layers[-1]}): retrieval "
            "scores are dot products of the two outputs"
        )
    if model_type == "multitask" and model.retrieval_weight == 0 and model.ranking_weight == 0:
        raise SpecError(f"{reader.where('ranking_weight')}: both task weights are 0")
    return model


def _reporting(reader: _Reader) -> ReportingSpec:
    reporting = ReportingSpec(
        gateway_url=reader.string("gateway_url", allow_empty=True).rstrip("/"),
        run=reader.string("run", allow_empty=True).strip("/"),
        token=reader.string("token", allow_empty=True),
        timeout_seconds=reader.number("timeout_seconds", minimum=0.001),
    )
    if reporting.gateway_url:
        if not reporting.gateway_url.startswith(("http://", "https://")):
            raise SpecError(
                f"{reader.where('gateway_url')}: expected an http(s) URL, "
                f"got {reporting.gateway_url!r}"
            )
        if not reporting.run:
            raise SpecError(f"{reader.where('run')}: needed when gateway_url is set")
    return reporting


def parse_spec(document: Any) -> Spec:
    """Validates a decoded spec.json; raises SpecError naming the first bad field."""
    reader = _Reader(document, "spec")
    model_type = reader.choice("model_type", MODEL_TYPES)
    dataset = _dataset(reader.obj("dataset"))
    split_reader = reader.obj("split")
    split = SplitSpec(
        strategy=split_reader.choice("strategy", SPLIT_STRATEGIES),
        test_fraction=split_reader.number("test_fraction"),
        seed=split_reader.integer("seed"),
    )
    if not 0.0 < split.test_fraction < 1.0:
        raise SpecError(
            f"spec.split.test_fraction: must be between 0 and 1 (exclusive), "
            f"got {split.test_fraction:g}"
        )
    if split.strategy != "random" and not dataset.timestamp_column:
        raise SpecError(
            f"spec.dataset.timestamp_column: the {split.strategy} split needs a timestamp column"
        )
    training_reader = reader.obj("training")
    training = TrainingSpec(
        epochs=training_reader.integer("epochs", minimum=1),
        batch_size=training_reader.integer("batch_size", minimum=1),
        learning_rate=training_reader.number("learning_rate", minimum=0.0),
    )
    model = _model(reader.obj("model"), model_type)
    if not (training.learning_rate or model.learning_rate):
        raise SpecError("spec.training.learning_rate: must be positive")
    spec = Spec(
        job_id=reader.string("job_id"),
        model_type=model_type,
        work_dir=_absolute_path(reader, "work_dir"),
        dataset=dataset,
        split=split,
        sample_percent=reader.number(
            "sample_percent", minimum=MIN_SAMPLE_PERCENT, maximum=MAX_SAMPLE_PERCENT
        ),
        features=_features(reader.obj("features"), dataset, model_type),
        model=model,
        training=training,
        hardware_tier=reader.string("hardware_tier", allow_empty=True),
        reporting=_reporting(reader.obj("reporting")),
        results_uri=_results_uri(document),
        raw=document,
    )
    return spec


def _results_uri(document: dict[str, Any]) -> str:
    value = document.get("results_uri", "")
    if not isinstance(value, str) or (value and not value.startswith("gs://")):
        raise SpecError(f"spec.results_uri: must be a gs:// URI or empty, got {value!r}")
    return value.rstrip("/")


def load_spec(path: str) -> Spec:
    """Reads and validates spec.json."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as error:
        raise SpecError(f"cannot read the spec {path}: {error.strerror or error}") from error
    except json.JSONDecodeError as error:
        raise SpecError(f"the spec {path} is not valid JSON: {error}") from error
    return parse_spec(document)


def work_dir_hint(path: str) -> str | None:
    """The spec's work_dir when it can be read at all, even if the rest is invalid, so a
    spec error can still be reported in work_dir/result.json."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    if isinstance(document, dict):
        value = document.get("work_dir")
        if isinstance(value, str) and os.path.isabs(value):
            return value
    return None
