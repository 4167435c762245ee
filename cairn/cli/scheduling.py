"""Scheduler commands: `cairn datasets|feature-configs|model-configs|jobs ...`.

Every command talks to the scheduler at --scheduler-uri, else CAIRN_SCHEDULER_URI, else
127.0.0.1:50052 (token from CAIRN_TOKEN). A dataset, feature config or model config is named
by its display name, its id or its resource name (datasets/{id}); a job by its id or
jobs/{id}. Commands that print data take --json: the service's messages with every field,
enums by name, ISO-8601 times.

    cairn datasets create movielens --uri ratings.csv --user-column user_id --item-column movie_id
    cairn feature-configs create ids --dataset movielens --query user_id --candidate movie_id
    cairn model-configs create two-tower --type retrieval --query-layers 64,32
    cairn jobs submit quick-test --feature-config ids --model-config two-tower --watch
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from cairn.cli.output import console, emit, format_value, json_option, message_data
from cairn.cli.tracking import _cell, _plural, _table
from cairn.errors import CairnError, from_rpc_error
from cairn.logproxy.v1 import log_entry_pb2
from cairn.scheduler.v1 import dataset_pb2, feature_config_pb2, job_pb2, model_config_pb2
from cairn.scheduling import (
    FEATURE_KINDS,
    FeatureSpec,
    Scheduler,
    all_of,
    is_finished,
    quote,
    resource_name,
)

_SCHEDULER_KEY = "cairn.scheduler"
_SCHEDULER_URI_KEY = "cairn.scheduler_uri"
T = TypeVar("T")

STATE_STYLES = {
    job_pb2.JOB_STATE_QUEUED: "dim",
    job_pb2.JOB_STATE_SUBMITTING: "cyan",
    job_pb2.JOB_STATE_RUNNING: "cyan",
    job_pb2.JOB_STATE_CANCELLING: "yellow",
    job_pb2.JOB_STATE_SUCCEEDED: "green",
    job_pb2.JOB_STATE_FAILED: "red",
    job_pb2.JOB_STATE_CANCELLED: "yellow",
}
STAGE_NAMES: dict[int, str] = {
    job_pb2.PIPELINE_STAGE_EXAMPLE_GEN: "ExampleGen",
    job_pb2.PIPELINE_STAGE_STATISTICS_GEN: "StatisticsGen",
    job_pb2.PIPELINE_STAGE_SCHEMA_GEN: "SchemaGen",
    job_pb2.PIPELINE_STAGE_TRANSFORM: "Transform",
    job_pb2.PIPELINE_STAGE_TRAINER: "Trainer",
    job_pb2.PIPELINE_STAGE_EVALUATION: "Evaluation",
}
# `--state` choices: each state, and two groups.
STATE_CHOICES: dict[str, tuple[str, ...]] = {
    "queued": ("QUEUED",),
    "submitting": ("SUBMITTING",),
    "running": ("RUNNING",),
    "cancelling": ("CANCELLING",),
    "succeeded": ("SUCCEEDED",),
    "failed": ("FAILED",),
    "cancelled": ("CANCELLED",),
    "active": ("QUEUED", "SUBMITTING", "RUNNING", "CANCELLING"),
    "finished": ("SUCCEEDED", "FAILED", "CANCELLED"),
}
MODEL_TYPE_CHOICES = ("retrieval", "ranking", "multitask")
# The held-out metric a job's table row shows per model type, in order of preference.
HEADLINE_METRICS = ("test/recall_at_10", "test/recall_at_100", "test/rmse", "test/mae")


# ---------------------------------------------------------------------- plumbing


def _remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_SCHEDULER_URI_KEY] = value


def _scheduler() -> Scheduler:
    """One Scheduler per command invocation, closed when the command ends."""
    ctx = click.get_current_context()
    existing = ctx.meta.get(_SCHEDULER_KEY)
    if isinstance(existing, Scheduler):
        return existing
    client = Scheduler(ctx.meta.get(_SCHEDULER_URI_KEY))
    ctx.meta[_SCHEDULER_KEY] = client
    ctx.call_on_close(client.close)
    return client


@contextmanager
def _friendly_errors() -> Iterator[None]:
    """Raw gRPC errors become CairnErrors (printed as one line by the main group)."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


class _SchedulerGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with _friendly_errors():
            return super().invoke(ctx)


def scheduler_uri_option(group: click.Group) -> click.Group:
    """Adds --scheduler-uri to a group (its subcommands use it)."""
    group.params.append(
        click.Option(
            ["--scheduler-uri"],
            metavar="HOST:PORT",
            default=None,
            expose_value=False,
            callback=_remember,
            help="Scheduler address (default: CAIRN_SCHEDULER_URI, else 127.0.0.1:50052).",
        )
    )
    return group


def _enum_word(enum_type: Any, value: int, prefix: str) -> str:
    """JOB_STATE_RUNNING -> "running", JOB_KIND_QUICK_TEST -> "quick-test"."""
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        return str(value)
    if name.endswith("_UNSPECIFIED"):
        return "-"
    return name.removeprefix(prefix).lower().replace("_", "-")


def _when(timestamp: Timestamp) -> datetime | None:
    if not timestamp.seconds and not timestamp.nanos:
        return None
    return timestamp.ToDatetime(tzinfo=UTC)


def _id(name: str) -> str:
    return name.rpartition("/")[2]


def _kv_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    table = _table(title, ["", ""])
    table.show_header = False
    for label, value in rows:
        table.add_row(_cell(label, "bold"), value if isinstance(value, Text) else _cell(value))
    console.print(table)


def _page_all(
    fetch: Callable[..., Any], field: str, limit: int, **arguments: Any
) -> tuple[list[Any], str]:
    """Up to `limit` items of a List RPC and the token of what follows (empty at the end)."""
    items: list[Any] = []
    token = ""
    while len(items) < limit:
        page = fetch(page_size=min(1000, limit - len(items)), page_token=token, **arguments)
        items.extend(getattr(page, field))
        token = page.next_page_token
        if not token:
            break
    return items, token


def _list_json(field: str, items: Sequence[Any], token: str) -> dict[str, Any]:
    return {field: [message_data(m) for m in items], "next_page_token": token}


def _more_hint(token: str, limit: int) -> None:
    if token:
        console.print(Text(f"(the first {limit}; raise --limit for more)", style="dim"))


limit_option = click.option(
    "--limit",
    type=click.IntRange(1),
    default=100,
    show_default=True,
    help="At most this many.",
)
filter_option = click.option(
    "--filter",
    "filter_text",
    default="",
    help="Filter grammar, e.g. \"display_name LIKE 'movie%'\".",
)


def _features(values: Sequence[str], option: str) -> list[FeatureSpec]:
    specs: list[FeatureSpec] = []
    for value in values:
        try:
            specs.append(FeatureSpec.parse(value))
        except CairnError as error:
            raise click.BadParameter(error.message, param_hint=option) from None
    return specs


def _layers(_ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    """ "64,32" -> [64, 32]."""
    if value is None:
        return None
    try:
        widths = [int(part) for part in value.replace(" ", "").split(",") if part]
    except ValueError:
        widths = []
    if not widths or any(w <= 0 for w in widths):
        raise click.BadParameter(
            f"{value!r}: use comma-separated positive layer widths, e.g. 64,32"
        )
    return widths


# ---------------------------------------------------------------------- datasets


@click.group("datasets", cls=_SchedulerGroup)
def datasets() -> None:
    """Register and inspect the data files jobs train on."""


scheduler_uri_option(datasets)


def _dataset_rows(dataset: dataset_pb2.Dataset) -> list[tuple[str, Any]]:
    return [
        ("name", dataset.display_name),
        ("id", dataset.dataset_id),
        ("description", dataset.description or "-"),
        ("uri", dataset.uri),
        ("format", _enum_word(dataset_pb2.DataFormat, dataset.format, "DATA_FORMAT_")),
        ("user column", dataset.user_column),
        ("item column", dataset.item_column),
        ("timestamp column", dataset.timestamp_column or "-"),
        ("rows", dataset.row_count),
        ("size", _human_bytes(dataset.size_bytes)),
        ("created", _when(dataset.create_time)),
    ]


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _render_dataset(dataset: dataset_pb2.Dataset) -> None:
    _kv_table(f"Dataset {dataset.display_name}", _dataset_rows(dataset))
    table = _table("Columns", ["column", "type", "role"])
    roles = {
        dataset.user_column: "user",
        dataset.item_column: "item",
        dataset.timestamp_column: "timestamp",
    }
    for column in dataset.columns:
        table.add_row(
            _cell(column.name),
            _cell(_enum_word(dataset_pb2.ColumnType, column.type, "COLUMN_TYPE_")),
            _cell(roles.get(column.name, "")),
        )
    console.print(table)


@datasets.command("create")
@click.argument("name")
@click.option("--uri", required=True, help="A local path (or file:// URI) of a CSV/Parquet file.")
@click.option("--user-column", required=True, help="The column identifying the user.")
@click.option("--item-column", required=True, help="The column identifying the item.")
@click.option("--timestamp-column", default="", help="Interaction time (needed by time splits).")
@click.option("--description", default="", help="Free text.")
@click.option(
    "--format",
    "data_format",
    type=click.Choice(["csv", "parquet"]),
    default=None,
    help="Default: from the file name.",
)
@json_option
def datasets_create(
    name: str,
    uri: str,
    user_column: str,
    item_column: str,
    timestamp_column: str,
    description: str,
    data_format: str | None,
    as_json: bool,
) -> None:
    """Register the data file URI as dataset NAME (its columns and rows are read now)."""
    dataset = _scheduler().create_dataset(
        name,
        uri,
        user_column=user_column,
        item_column=item_column,
        timestamp_column=timestamp_column,
        description=description,
        format=data_format,  # type: ignore[arg-type]  # a click.Choice of the same words
    )

    def render() -> None:
        console.print(
            Text(
                f"Registered dataset {dataset.display_name} (id {dataset.dataset_id}): "
                f"{dataset.row_count} rows, {_plural(len(dataset.columns), 'column')}."
            )
        )
        _render_dataset(dataset)

    emit(as_json, message_data(dataset), render)


@datasets.command("list")
@filter_option
@limit_option
@json_option
def datasets_list(filter_text: str, limit: int, as_json: bool) -> None:
    """List datasets, newest first."""
    found, token = _page_all(_scheduler().list_datasets_page, "datasets", limit, filter=filter_text)

    def render() -> None:
        if not found:
            console.print(Text("no datasets", style="dim"))
            return
        table = _table(
            _plural(len(found), "dataset"),
            ["name", "id", "rows", "columns", "format", "uri", "created"],
        )
        for d in found:
            table.add_row(
                _cell(d.display_name),
                _cell(d.dataset_id),
                _cell(d.row_count),
                _cell(len(d.columns)),
                _cell(_enum_word(dataset_pb2.DataFormat, d.format, "DATA_FORMAT_")),
                _cell(d.uri),
                _cell(_when(d.create_time)),
            )
        console.print(table)
        _more_hint(token, limit)

    emit(as_json, _list_json("datasets", found, token), render)


@datasets.command("show")
@click.argument("name_or_id")
@json_option
def datasets_show(name_or_id: str, as_json: bool) -> None:
    """A dataset's details and columns."""
    dataset = _scheduler().resolve_dataset(name_or_id)
    emit(as_json, message_data(dataset), lambda: _render_dataset(dataset))


@datasets.command("delete")
@click.argument("name_or_id")
@json_option
def datasets_delete(name_or_id: str, as_json: bool) -> None:
    """Delete a dataset (refused while a feature config or job uses it)."""
    scheduler = _scheduler()
    dataset = scheduler.resolve_dataset(name_or_id)
    scheduler.delete_dataset(dataset.name)
    emit(
        as_json,
        {"name": dataset.name, "display_name": dataset.display_name, "deleted": True},
        lambda: console.print(
            Text(f"Deleted dataset {dataset.display_name} (id {dataset.dataset_id}).")
        ),
    )


# ---------------------------------------------------------------------- feature configs


@click.group("feature-configs", cls=_SchedulerGroup)
def feature_configs() -> None:
    """Which columns feed the query and candidate towers (and the target)."""


scheduler_uri_option(feature_configs)


def _feature_text(feature: feature_config_pb2.Feature) -> str:
    kind = _enum_word(feature_config_pb2.FeatureKind, feature.kind, "FEATURE_KIND_")
    if kind in ("-", "categorical"):
        return f"{feature.column}:categorical:{feature.embedding_dim or 32}"
    return f"{feature.column}:{kind}"


def _dataset_names(scheduler: Scheduler, names: Sequence[str]) -> dict[str, str]:
    """Display names of the datasets `names` refer to (their resource names if gone)."""
    result: dict[str, str] = {}
    for name in set(names):
        try:
            result[name] = scheduler.get_dataset(name).display_name
        except CairnError:
            result[name] = name
    return result


def _render_feature_config(config: feature_config_pb2.FeatureConfig, dataset: str) -> None:
    _kv_table(
        f"Feature config {config.display_name}",
        [
            ("name", config.display_name),
            ("id", config.feature_config_id),
            ("description", config.description or "-"),
            ("dataset", dataset),
            ("target column", config.target_column or "-"),
            ("query tensor dim", config.query_tensor_dim),
            ("candidate tensor dim", config.candidate_tensor_dim),
            ("created", _when(config.create_time)),
        ],
    )
    table = _table("Features", ["tower", "column", "kind", "embedding dim"])
    for tower, features in (
        ("query", config.query_features),
        ("candidate", config.candidate_features),
    ):
        for feature in features:
            kind = _enum_word(feature_config_pb2.FeatureKind, feature.kind, "FEATURE_KIND_")
            numeric = feature.kind == feature_config_pb2.FEATURE_KIND_NUMERIC
            table.add_row(
                _cell(tower),
                _cell(feature.column),
                _cell("categorical" if kind == "-" else kind),
                _cell("-" if numeric else feature.embedding_dim),
            )
    console.print(table)


_FEATURE_HELP = (
    "COLUMN[:KIND[:EMBEDDING_DIM]] (repeatable); KIND is "
    + " or ".join(FEATURE_KINDS)
    + " (default categorical, 32)."
)


@feature_configs.command("create")
@click.argument("name")
@click.option("--dataset", required=True, help="The dataset (name or id) whose columns these are.")
@click.option(
    "--query", "query", multiple=True, required=True, help=f"Query tower: {_FEATURE_HELP}"
)
@click.option(
    "--candidate", "candidate", multiple=True, required=True, help="Candidate tower: the same."
)
@click.option("--target", default="", help="The numeric column a ranking head predicts.")
@click.option("--description", default="", help="Free text.")
@json_option
def feature_configs_create(
    name: str,
    dataset: str,
    query: tuple[str, ...],
    candidate: tuple[str, ...],
    target: str,
    description: str,
    as_json: bool,
) -> None:
    """Create feature config NAME, e.g. --query user_id:categorical:32 --candidate item_id."""
    query_specs = _features(query, "--query")
    candidate_specs = _features(candidate, "--candidate")
    scheduler = _scheduler()
    source = scheduler.resolve_dataset(dataset)
    config = scheduler.create_feature_config(
        name,
        source.name,
        query_features=query_specs,
        candidate_features=candidate_specs,
        target_column=target,
        description=description,
    )

    def render() -> None:
        console.print(
            Text(
                f"Created feature config {config.display_name} (id {config.feature_config_id}) "
                f"on dataset {source.display_name}."
            )
        )
        _render_feature_config(config, source.display_name)

    emit(as_json, message_data(config), render)


@feature_configs.command("list")
@click.option("--dataset", default=None, help="Only configs of this dataset (name or id).")
@filter_option
@limit_option
@json_option
def feature_configs_list(dataset: str | None, filter_text: str, limit: int, as_json: bool) -> None:
    """List feature configs, newest first."""
    scheduler = _scheduler()
    conditions = [filter_text]
    if dataset:
        conditions.append(f"dataset = {quote(scheduler.resolve_dataset(dataset).dataset_id)}")
    found, token = _page_all(
        scheduler.list_feature_configs_page, "feature_configs", limit, filter=all_of(*conditions)
    )

    def render() -> None:
        if not found:
            console.print(Text("no feature configs", style="dim"))
            return
        names = _dataset_names(scheduler, [c.dataset for c in found])
        table = _table(
            _plural(len(found), "feature config"),
            ["name", "id", "dataset", "query", "candidate", "target", "dims", "created"],
        )
        for c in found:
            table.add_row(
                _cell(c.display_name),
                _cell(c.feature_config_id),
                _cell(names.get(c.dataset, c.dataset)),
                _cell(", ".join(_feature_text(f) for f in c.query_features)),
                _cell(", ".join(_feature_text(f) for f in c.candidate_features)),
                _cell(c.target_column or "-"),
                _cell(f"{c.query_tensor_dim}/{c.candidate_tensor_dim}"),
                _cell(_when(c.create_time)),
            )
        console.print(table)
        _more_hint(token, limit)

    emit(as_json, _list_json("feature_configs", found, token), render)


@feature_configs.command("show")
@click.argument("name_or_id")
@json_option
def feature_configs_show(name_or_id: str, as_json: bool) -> None:
    """A feature config's towers, target and tensor widths."""
    scheduler = _scheduler()
    config = scheduler.resolve_feature_config(name_or_id)
    emit(
        as_json,
        message_data(config),
        lambda: _render_feature_config(
            config, _dataset_names(scheduler, [config.dataset])[config.dataset]
        ),
    )


@feature_configs.command("delete")
@click.argument("name_or_id")
@json_option
def feature_configs_delete(name_or_id: str, as_json: bool) -> None:
    """Delete a feature config (refused while a job uses it)."""
    scheduler = _scheduler()
    config = scheduler.resolve_feature_config(name_or_id)
    scheduler.delete_feature_config(config.name)
    emit(
        as_json,
        {"name": config.name, "display_name": config.display_name, "deleted": True},
        lambda: console.print(
            Text(f"Deleted feature config {config.display_name} (id {config.feature_config_id}).")
        ),
    )


# ---------------------------------------------------------------------- model configs


@click.group("model-configs", cls=_SchedulerGroup)
def model_configs() -> None:
    """Model architectures: towers, rating head, optimizer."""


scheduler_uri_option(model_configs)


def _layers_text(layers: Sequence[int]) -> str:
    return " -> ".join(str(w) for w in layers) if layers else "-"


def _render_model_config(config: model_config_pb2.ModelConfig) -> None:
    rows: list[tuple[str, Any]] = [
        ("name", config.display_name),
        ("id", config.model_config_id),
        ("description", config.description or "-"),
        ("model type", _enum_word(model_config_pb2.ModelType, config.model_type, "MODEL_TYPE_")),
        ("query layers", _layers_text(config.query_layers)),
        ("candidate layers", _layers_text(config.candidate_layers)),
    ]
    if config.model_type != model_config_pb2.MODEL_TYPE_RETRIEVAL:
        rows.append(("rating layers", _layers_text(config.rating_layers)))
    rows += [
        ("optimizer", _enum_word(model_config_pb2.Optimizer, config.optimizer, "OPTIMIZER_")),
        ("learning rate", config.learning_rate),
    ]
    if config.model_type == model_config_pb2.MODEL_TYPE_MULTITASK:
        rows += [
            ("retrieval weight", config.retrieval_weight),
            ("ranking weight", config.ranking_weight),
        ]
    rows.append(("created", _when(config.create_time)))
    _kv_table(f"Model config {config.display_name}", rows)


@model_configs.command("create")
@click.argument("name")
@click.option(
    "--type", "model_type", type=click.Choice(MODEL_TYPE_CHOICES), required=True, help="The task."
)
@click.option("--query-layers", callback=_layers, help="Query tower widths, e.g. 64,32.")
@click.option("--candidate-layers", callback=_layers, help="Candidate tower widths.")
@click.option("--rating-layers", callback=_layers, help="Rating head widths (ranking, multitask).")
@click.option("--optimizer", type=click.Choice(["adagrad", "adam", "sgd"]), default=None)
@click.option(
    "--learning-rate",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Default learning rate of jobs, (0, 1] (default 0.1).",
)
@click.option(
    "--retrieval-weight",
    type=click.FloatRange(0, 100),
    default=None,
    help="Multitask weight of the retrieval loss (default 1).",
)
@click.option(
    "--ranking-weight",
    type=click.FloatRange(0, 100),
    default=None,
    help="Multitask weight of the ranking loss (default 1).",
)
@click.option("--description", default="", help="Free text.")
@json_option
def model_configs_create(
    name: str,
    model_type: str,
    query_layers: list[int] | None,
    candidate_layers: list[int] | None,
    rating_layers: list[int] | None,
    optimizer: str | None,
    learning_rate: float | None,
    retrieval_weight: float | None,
    ranking_weight: float | None,
    description: str,
    as_json: bool,
) -> None:
    """Create model config NAME."""
    config = _scheduler().create_model_config(
        name,
        model_type,  # type: ignore[arg-type]  # a click.Choice of the same words
        query_layers=query_layers or (),
        candidate_layers=candidate_layers or (),
        rating_layers=rating_layers or (),
        optimizer=optimizer,  # type: ignore[arg-type]
        learning_rate=learning_rate,
        retrieval_weight=retrieval_weight,
        ranking_weight=ranking_weight,
        description=description,
    )

    def render() -> None:
        console.print(
            Text(f"Created model config {config.display_name} (id {config.model_config_id}).")
        )
        _render_model_config(config)

    emit(as_json, message_data(config), render)


@model_configs.command("list")
@click.option(
    "--type", "model_type", type=click.Choice(MODEL_TYPE_CHOICES), default=None, help="Only these."
)
@filter_option
@limit_option
@json_option
def model_configs_list(model_type: str | None, filter_text: str, limit: int, as_json: bool) -> None:
    """List model configs, newest first."""
    conditions = [filter_text]
    if model_type:
        conditions.append(f"model_type = {quote(model_type.upper())}")
    found, token = _page_all(
        _scheduler().list_model_configs_page,
        "model_configs",
        limit,
        filter=all_of(*conditions),
    )

    def render() -> None:
        if not found:
            console.print(Text("no model configs", style="dim"))
            return
        table = _table(
            _plural(len(found), "model config"),
            ["name", "id", "type", "query", "candidate", "rating", "optimizer", "lr", "created"],
        )
        for c in found:
            table.add_row(
                _cell(c.display_name),
                _cell(c.model_config_id),
                _cell(_enum_word(model_config_pb2.ModelType, c.model_type, "MODEL_TYPE_")),
                _cell(_layers_text(c.query_layers)),
                _cell(_layers_text(c.candidate_layers)),
                _cell(
                    "-"
                    if c.model_type == model_config_pb2.MODEL_TYPE_RETRIEVAL
                    else _layers_text(c.rating_layers)
                ),
                _cell(_enum_word(model_config_pb2.Optimizer, c.optimizer, "OPTIMIZER_")),
                _cell(c.learning_rate),
                _cell(_when(c.create_time)),
            )
        console.print(table)
        _more_hint(token, limit)

    emit(as_json, _list_json("model_configs", found, token), render)


@model_configs.command("show")
@click.argument("name_or_id")
@json_option
def model_configs_show(name_or_id: str, as_json: bool) -> None:
    """A model config's architecture and optimizer."""
    config = _scheduler().resolve_model_config(name_or_id)
    emit(as_json, message_data(config), lambda: _render_model_config(config))


@model_configs.command("delete")
@click.argument("name_or_id")
@json_option
def model_configs_delete(name_or_id: str, as_json: bool) -> None:
    """Delete a model config (refused while a job uses it)."""
    scheduler = _scheduler()
    config = scheduler.resolve_model_config(name_or_id)
    scheduler.delete_model_config(config.name)
    emit(
        as_json,
        {"name": config.name, "display_name": config.display_name, "deleted": True},
        lambda: console.print(
            Text(f"Deleted model config {config.display_name} (id {config.model_config_id}).")
        ),
    )


# ---------------------------------------------------------------------- following a job


def _state_text(job: job_pb2.Job) -> Text:
    word = _enum_word(job_pb2.JobState, job.state, "JOB_STATE_")
    return Text(word, style=STATE_STYLES.get(job.state, ""))


def _stage_name(stage: int) -> str:
    return STAGE_NAMES.get(stage, "-")


def _epoch_text(job: job_pb2.Job) -> str:
    parts = []
    if job.training.epochs:
        parts.append(f"epoch {job.current_epoch}/{job.training.epochs}")
    if job.HasField("latest_loss"):
        parts.append(f"loss {format_value(job.latest_loss)}")
    return ", ".join(parts)


def _progress_label(job: job_pb2.Job) -> str:
    state = _enum_word(job_pb2.JobState, job.state, "JOB_STATE_")
    stage = _stage_name(job.stage)
    return state if stage == "-" else f"{state}: {stage}"


def _headline(job: job_pb2.Job) -> str:
    """The job's main held-out metrics, e.g. "recall_at_10 0.08, rmse 0.93"."""
    shown: list[tuple[str, float]] = []
    for key in HEADLINE_METRICS:
        if key in job.final_metrics:
            short = key.removeprefix("test/")
            if short.startswith("recall") and any(s.startswith("recall") for s, _ in shown):
                continue
            shown.append((short, job.final_metrics[key]))
    return ", ".join(f"{k} {format_value(v)}" for k, v in shown[:2]) or "-"


def _render_outcome(job: job_pb2.Job, out: Console) -> None:
    """How a finished job ended: its state, error and final metrics."""
    line = Text(f"Job {job.job_id} ")
    line.append_text(_state_text(job))
    if job.HasField("start_time") and job.HasField("end_time"):
        seconds = (job.end_time.ToDatetime() - job.start_time.ToDatetime()).total_seconds()
        line.append(f" after {seconds:.0f}s")
    out.print(line)
    if job.HasField("error") and (job.error.message or job.error.details):
        stage = _stage_name(job.error.stage)
        where = f" in {stage}" if stage != "-" else ""
        out.print(Text(f"error{where}: {job.error.message}", style="red"))
    if job.final_metrics:
        table = _table("Final metrics", ["metric", "value"])
        for key in sorted(job.final_metrics):
            table.add_row(_cell(key), _cell(job.final_metrics[key]))
        out.print(table)
    if job.run:
        out.print(Text(f"run: {job.run} (cairn runs show {_id(job.run)})", style="dim"))


def follow_job(
    scheduler: Scheduler, job_name: str, console: Console, *, summary: bool = True
) -> job_pb2.Job:
    """Render a job's progress (state, stage, epoch x/N, loss, percent) as a rich progress
    bar, with each state change as a line above it, until the job is finished; then (with
    `summary`) its outcome and final metrics. Returns the final Job. Ctrl-C raises
    KeyboardInterrupt (the job keeps running)."""
    progress = Progress(
        SpinnerColumn(finished_text=" "),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    last: job_pb2.Job | None = None
    seen = 0
    with progress:
        task = progress.add_task("waiting", total=100, detail="")
        for job in scheduler.watch_job(job_name):
            for transition in job.state_history[seen:]:
                when = _when(transition.time)
                word = _enum_word(job_pb2.JobState, transition.state, "JOB_STATE_")
                line = Text()
                if when is not None:
                    line.append(f"{format_value(when)}  ", style="dim")
                line.append(word, style=STATE_STYLES.get(transition.state, ""))
                if transition.message and transition.message != word:
                    line.append(f"  {transition.message}")
                progress.console.print(line)
            seen = max(seen, len(job.state_history))
            progress.update(
                task,
                completed=max(0.0, min(100.0, job.progress_percent)),
                description=_progress_label(job),
                detail=_epoch_text(job),
            )
            last = job
    final = last if last is not None and is_finished(last) else scheduler.get_job(job_name)
    if summary:
        _render_outcome(final, console)
    return final


def _exit_for(job: job_pb2.Job) -> None:
    if job.state != job_pb2.JOB_STATE_SUCCEEDED:
        sys.exit(1)


def _follow_or_hint(scheduler: Scheduler, job: job_pb2.Job) -> None:
    """Follow a job in the terminal (exit 1 unless it succeeds); Ctrl-C leaves it running."""
    try:
        final = follow_job(scheduler, job.name, console)
    except KeyboardInterrupt:
        console.print(
            Text(
                f"\nStopped watching; job {job.job_id} keeps running. Watch it again with "
                f"`cairn jobs watch {job.job_id}` or stop it with `cairn jobs cancel {job.job_id}`."
            )
        )
        sys.exit(130)
    _exit_for(final)


# ---------------------------------------------------------------------- jobs


@click.group("jobs", cls=_SchedulerGroup)
def jobs() -> None:
    """Quick tests and full training: submit, follow, cancel, re-run."""


scheduler_uri_option(jobs)


@jobs.group("submit", cls=_SchedulerGroup)
def submit() -> None:
    """Queue a quick test or a full training."""


def _submit_options(
    max_epochs: int, default_sample: int, default_epochs: int
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    options = [
        click.option("--feature-config", required=True, help="The feature config (name or id)."),
        click.option("--model-config", required=True, help="The model config (name or id)."),
        click.option(
            "--sample",
            "sample_percent",
            type=click.Choice(["5", "10", "25", "50", "100"]),
            default=None,
            help=f"Percent of the rows to sample (default {default_sample}).",
        ),
        click.option(
            "--epochs",
            type=click.IntRange(1, max_epochs),
            default=None,
            help=f"1-{max_epochs} (default {default_epochs}).",
        ),
        click.option(
            "--batch-size",
            type=click.Choice(["256", "512", "1024", "2048", "4096", "8192"]),
            default=None,
            help="Default 4096.",
        ),
        click.option(
            "--learning-rate",
            type=click.FloatRange(0, 1, min_open=True),
            default=None,
            help="(0, 1]; default: the model config's.",
        ),
        click.option(
            "--hardware",
            type=click.Choice(["small", "medium", "large"]),
            default=None,
            help="e2-standard-4/8/16 (default: recommended from the dataset's size).",
        ),
        click.option(
            "--split",
            type=click.Choice(["random", "time-holdout", "strict-time"]),
            default=None,
            help="Train/test split (default random 80/20).",
        ),
        click.option("--seed", type=int, default=None, help="Sampling and split seed (42)."),
        click.option("--experiment", default="", help="The tracker experiment of the job's run."),
        click.option("--name", "display_name", default="", help="The job's display name."),
        click.option("--description", default="", help="Free text."),
        click.option("--watch", is_flag=True, help="Follow the job until it ends."),
        json_option,
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _submit(kind: str, arguments: dict[str, Any]) -> None:
    scheduler = _scheduler()
    as_json = arguments.pop("as_json")
    watch = arguments.pop("watch")
    features = scheduler.resolve_feature_config(arguments.pop("feature_config"))
    model = scheduler.resolve_model_config(arguments.pop("model_config"))
    for key in ("sample_percent", "batch_size"):
        if arguments[key] is not None:
            arguments[key] = int(arguments[key])
    submit_method = (
        scheduler.submit_quick_test if kind == "quick-test" else scheduler.submit_training
    )
    job = submit_method(
        features.name,
        model.name,
        hardware_tier=arguments.pop("hardware"),
        split_strategy=arguments.pop("split"),
        **arguments,
    )
    if as_json and not watch:
        emit(True, message_data(job), lambda: None)
        return
    if as_json:
        final = scheduler.wait_job(job.name)
        emit(True, message_data(final), lambda: None)
        _exit_for(final)
        return
    training = job.training
    console.print(
        Text(
            f"Queued {kind} {job.job_id} ({job.display_name}): "
            f"{_enum_word(model_config_pb2.ModelType, job.model_type, 'MODEL_TYPE_')} on "
            f"{features.display_name} x {model.display_name}, {training.sample_percent}% of "
            f"the rows, {_plural(training.epochs, 'epoch')}, batch {training.batch_size}."
        )
    )
    if watch:
        _follow_or_hint(scheduler, job)
    else:
        console.print(Text(f"Follow it with: cairn jobs watch {job.job_id}", style="dim"))


@submit.command("quick-test")
@_submit_options(max_epochs=50, default_sample=10, default_epochs=3)
def submit_quick_test(**arguments: Any) -> None:
    """Queue a quick test: sampled data and few epochs, to validate a configuration cheaply."""
    _submit("quick-test", arguments)


@submit.command("training")
@_submit_options(max_epochs=500, default_sample=100, default_epochs=30)
def submit_training(**arguments: Any) -> None:
    """Queue a full training: all of the data and the full epoch budget."""
    _submit("training", arguments)


def job_filter(
    states: Sequence[str] = (),
    model_types: Sequence[str] = (),
    kind: str | None = None,
    dataset: str = "",
    feature_config: str = "",
    model_config: str = "",
    extra: str = "",
) -> str:
    """The ListJobs filter of the `cairn jobs list` options (dataset and configs as ids),
    the conditions combined with AND."""
    conditions = [extra]
    wanted_states = list(dict.fromkeys(s for choice in states for s in STATE_CHOICES[choice]))
    if len(wanted_states) == 1:
        conditions.append(f"state = {quote(wanted_states[0])}")
    elif wanted_states:
        conditions.append(f"state IN ({', '.join(quote(s) for s in wanted_states)})")
    wanted_types = list(dict.fromkeys(t.upper() for t in model_types))
    if len(wanted_types) == 1:
        conditions.append(f"model_type = {quote(wanted_types[0])}")
    elif wanted_types:
        conditions.append(f"model_type IN ({', '.join(quote(t) for t in wanted_types)})")
    if kind:
        conditions.append(f"kind = {quote(kind.upper().replace('-', '_'))}")
    for field, value in (
        ("dataset", dataset),
        ("feature_config", feature_config),
        ("model_config", model_config),
    ):
        if value:
            conditions.append(f"{field} = {quote(value)}")
    return all_of(*conditions)


@jobs.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(list(STATE_CHOICES)),
    help="Only jobs in this state (repeatable; active/finished: several).",
)
@click.option(
    "--model-type",
    "model_types",
    multiple=True,
    type=click.Choice(MODEL_TYPE_CHOICES),
    help="Only jobs of this model type (repeatable).",
)
@click.option("--kind", type=click.Choice(["quick-test", "full-training"]), default=None)
@click.option("--dataset", default="", help="Only jobs on this dataset (name or id).")
@click.option("--feature-config", default="", help="Only jobs with this feature config.")
@click.option("--model-config", default="", help="Only jobs with this model config.")
@click.option("--search", default="", help="Free text in the name or description.")
@filter_option
@click.option("--order-by", default="", help='Default "create_time desc".')
@limit_option
@json_option
def jobs_list(
    states: tuple[str, ...],
    model_types: tuple[str, ...],
    kind: str | None,
    dataset: str,
    feature_config: str,
    model_config: str,
    search: str,
    filter_text: str,
    order_by: str,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    scheduler = _scheduler()
    filter_text = job_filter(
        states,
        model_types,
        kind,
        dataset=scheduler.resolve_dataset(dataset).dataset_id if dataset else "",
        feature_config=scheduler.resolve_feature_config(feature_config).feature_config_id
        if feature_config
        else "",
        model_config=scheduler.resolve_model_config(model_config).model_config_id
        if model_config
        else "",
        extra=filter_text,
    )
    found, token = _page_all(
        scheduler.list_jobs_page,
        "jobs",
        limit,
        filter=filter_text,
        search=search,
        order_by=order_by,
    )

    def render() -> None:
        if not found:
            console.print(Text("no jobs match", style="dim"))
            return
        table = _table(
            _plural(len(found), "job"),
            ["id", "name", "kind", "model type", "state", "progress", "result", "created"],
        )
        for j in found:
            running = not is_finished(j) and j.state != job_pb2.JOB_STATE_QUEUED
            detail = f"{j.progress_percent:.0f}% {_stage_name(j.stage)}" if running else "-"
            table.add_row(
                _cell(j.job_id),
                _cell(j.display_name),
                _cell(_enum_word(job_pb2.JobKind, j.kind, "JOB_KIND_")),
                _cell(_enum_word(model_config_pb2.ModelType, j.model_type, "MODEL_TYPE_")),
                _state_text(j),
                _cell(detail),
                _cell(_headline(j)),
                _cell(_when(j.create_time)),
            )
        console.print(table)
        _more_hint(token, limit)

    emit(as_json, _list_json("jobs", found, token), render)


def _name_of(get: Callable[[str], Any], name: str) -> str:
    """A referenced resource's display name, or its resource name if it is gone."""
    if not name:
        return "-"
    try:
        return f"{get(name).display_name} ({_id(name)})"
    except CairnError:
        return name


def _render_job(scheduler: Scheduler, job: job_pb2.Job) -> None:
    training = job.training
    lr = format_value(training.learning_rate) if training.HasField("learning_rate") else "-"
    seed = training.seed if training.HasField("seed") else "-"
    rows: list[tuple[str, Any]] = [
        ("name", job.display_name),
        ("id", job.job_id),
        ("description", job.description or "-"),
        ("kind", _enum_word(job_pb2.JobKind, job.kind, "JOB_KIND_")),
        ("model type", _enum_word(model_config_pb2.ModelType, job.model_type, "MODEL_TYPE_")),
        ("state", _state_text(job)),
        ("stage", _stage_name(job.stage)),
        ("progress", f"{job.progress_percent:.0f}%"),
        ("epoch", _epoch_text(job) or "-"),
        ("dataset", _name_of(scheduler.get_dataset, job.dataset)),
        ("feature config", _name_of(scheduler.get_feature_config, job.feature_config)),
        ("model config", _name_of(scheduler.get_model_config, job.model_config)),
        (
            "training",
            f"{training.sample_percent}% sample, {training.epochs} epochs, "
            f"batch {training.batch_size}, learning rate {lr}, seed {seed}",
        ),
        ("hardware", _enum_word(job_pb2.HardwareTier, training.hardware_tier, "HARDWARE_TIER_")),
        ("split", _enum_word(job_pb2.SplitStrategy, training.split_strategy, "SPLIT_STRATEGY_")),
        ("experiment", job.experiment or "-"),
        ("run", job.run or "-"),
        ("launcher", f"{job.launcher} {job.workload}".strip() or "-"),
        ("re-run of", job.rerun_of or "-"),
        ("created", _when(job.create_time)),
        ("started", _when(job.start_time)),
        ("ended", _when(job.end_time)),
    ]
    _kv_table(f"Job {job.display_name}", rows)
    if job.state_history:
        history = _table("State history", ["time", "state", "message"])
        for transition in job.state_history:
            history.add_row(
                _cell(_when(transition.time)),
                Text(
                    _enum_word(job_pb2.JobState, transition.state, "JOB_STATE_"),
                    style=STATE_STYLES.get(transition.state, ""),
                ),
                _cell(transition.message or ""),
            )
        console.print(history)
    if job.HasField("error") and (job.error.message or job.error.details):
        stage = _stage_name(job.error.stage)
        console.print(Text(f"Error{f' in {stage}' if stage != '-' else ''}:", style="bold red"))
        console.print(Text(job.error.message, style="red"))
        if job.error.details:
            console.print(Text(job.error.details, style="dim"))
    if job.final_metrics:
        metrics = _table("Final metrics", ["metric", "value"])
        for key in sorted(job.final_metrics):
            metrics.add_row(_cell(key), _cell(job.final_metrics[key]))
        console.print(metrics)


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@json_option
def jobs_show(job_id: str, as_json: bool) -> None:
    """A job's state, progress, state history, error, final metrics and run."""
    scheduler = _scheduler()
    job = scheduler.get_job(job_id)
    emit(as_json, message_data(job), lambda: _render_job(scheduler, job))


@jobs.command("watch")
@click.argument("job_id", metavar="ID")
def jobs_watch(job_id: str) -> None:
    """Follow a job until it ends (exit 0 if it succeeded, 1 if it failed or was cancelled)."""
    scheduler = _scheduler()
    job = scheduler.get_job(job_id)
    _follow_or_hint(scheduler, job)


_SEVERITY_STYLES = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "bold red", "DEBUG": "dim"}


@jobs.command("logs")
@click.argument("job_id", metavar="ID")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries until the job ends.")
@click.option(
    "--component",
    type=click.Choice(
        ["ExampleGen", "StatisticsGen", "SchemaGen", "Transform", "Trainer", "Evaluation"]
    ),
    help="Only this pipeline component's entries.",
)
@click.option(
    "--severity",
    type=click.Choice(["debug", "info", "warning", "error", "critical"]),
    help="Only entries at least this severe.",
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def jobs_logs(
    job_id: str,
    follow: bool,
    component: str | None,
    severity: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """A job's workload logs (from the log proxy): the last entries, oldest first."""
    scheduler = _scheduler()
    entries = scheduler.tail_job_logs(
        job_id, component=component or "", min_severity=severity or "", limit=limit, follow=follow
    )
    try:
        for entry in entries:
            if as_json:
                click.echo(json.dumps(message_data(entry)))
                continue
            word = log_entry_pb2.Severity.Name(entry.severity).removeprefix("SEVERITY_")
            when = _when(entry.time)
            line = Text(f"{when:%H:%M:%S} " if when else "", style="dim")
            line.append(f"{word[:4]:<4} ", style=_SEVERITY_STYLES.get(word, ""))
            if entry.component:
                line.append(f"[{entry.component}] ", style="cyan")
            line.append(entry.message)
            console.print(line, highlight=False)
    except KeyboardInterrupt:
        sys.exit(130)


@jobs.command("cancel")
@click.argument("job_id", metavar="ID")
@json_option
def jobs_cancel(job_id: str, as_json: bool) -> None:
    """Cancel a queued or running job."""
    job = _scheduler().cancel_job(job_id)

    def render() -> None:
        line = Text(f"Job {job.job_id} is ")
        line.append_text(_state_text(job))
        if job.state == job_pb2.JOB_STATE_CANCELLING:
            line.append(" (its workload is being stopped)")
        console.print(line)

    emit(as_json, message_data(job), render)


@jobs.command("rerun")
@click.argument("job_id", metavar="ID")
@click.option("--watch", is_flag=True, help="Follow the new job until it ends.")
@json_option
def jobs_rerun(job_id: str, watch: bool, as_json: bool) -> None:
    """Queue a new job with the configuration of a finished one."""
    scheduler = _scheduler()
    job = scheduler.rerun_job(job_id)
    if as_json and not watch:
        emit(True, message_data(job), lambda: None)
        return
    if as_json:
        final = scheduler.wait_job(job.name)
        emit(True, message_data(final), lambda: None)
        _exit_for(final)
        return
    console.print(Text(f"Queued job {job.job_id} ({job.display_name}), a re-run of {job_id}."))
    if watch:
        _follow_or_hint(scheduler, job)
    else:
        console.print(Text(f"Follow it with: cairn jobs watch {job.job_id}", style="dim"))


@jobs.command("delete")
@click.argument("job_id", metavar="ID")
@json_option
def jobs_delete(job_id: str, as_json: bool) -> None:
    """Delete a finished job with its tracker run and artifacts."""
    name = resource_name("jobs", job_id)
    _scheduler().delete_job(name)
    emit(
        as_json,
        {"name": name, "deleted": True},
        lambda: console.print(Text(f"Deleted job {_id(name)} with its run and artifacts.")),
    )


COMMANDS = [datasets, feature_configs, model_configs, jobs]
