"""Analytics: comparisons, leaderboards, the dashboard, hyperparameter insight, suggestions.

Reads go through the tracker's RPCs (TrackerReader): filtering, pivoting and aggregating run
in the tracker's database, and only compact tables and aggregates cross the wire. What is
left here is small: ranking a few rows, aligning a few histories, and the optuna statistics,
which run on worker threads.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from cairn.analytics.v1 import analytics_service_pb2 as pb
from cairn.tracker.v1 import run_pb2, run_table_pb2
from services.analytics import hyperparams
from services.analytics.directions import Direction, Goal, resolve
from services.analytics.tracker_reader import Column, KeyCounts, Scope, Table, TrackerReader
from services.common.clients import CallOptions
from services.common.errors import InvalidArgument
from services.common.filtering import field_text, parse_field, quote_text
from services.common.paging import coerce_page_size
from services.common.timeutil import ms_to_timestamp

T = TypeVar("T")
BlockingRun = Callable[..., Awaitable[Any]]

MAX_COMPARED_RUNS = 100
MAX_COMPARED_HISTORIES = 20
DEFAULT_HISTORY_POINTS = 1_000
MAX_HISTORY_POINTS = 10_000
DEFAULT_TOP_K = 10
MAX_LEADERBOARD_K = 1_000
MAX_DASHBOARD_K = 50
MAX_GROUPS = 100
MAX_PARAM_COLUMNS = 50
MAX_ANALYZED_PARAMS = 100
MAX_HEATMAP_METRICS = 10
MAX_HEATMAP_EPOCHS = 500
# Runs read for a trend or an analysis; more recent runs win beyond it.
MAX_ANALYZED_RUNS = 100_000
MAX_INSIGHT_RUNS = 10_000
DEFAULT_TOP_FRACTION = 0.3
DEFAULT_SUGGESTIONS = 3
MAX_SUGGESTIONS = 20
DEFAULT_EPOCH_METRIC = "loss"

# Columns that identify a run in every analysis (RunSummary).
SUMMARY_COLUMNS = (
    "run_name",
    "status",
    "model_type",
    "dataset_id",
    "dataset_name",
    "version",
    "start_time",
    "end_time",
)
FINISHED = "status = 'FINISHED'"
COUNT = run_table_pb2.AGGREGATE_FUNCTION_COUNT
MIN = run_table_pb2.AGGREGATE_FUNCTION_MIN
MAX = run_table_pb2.AGGREGATE_FUNCTION_MAX
AVG = run_table_pb2.AGGREGATE_FUNCTION_AVG
STDDEV = run_table_pb2.AGGREGATE_FUNCTION_STDDEV


def _goal(value: int) -> Goal | None:
    if value == pb.DIRECTION_MINIMIZE:
        return "minimize"
    if value == pb.DIRECTION_MAXIMIZE:
        return "maximize"
    if value == pb.DIRECTION_UNSPECIFIED:
        return None
    raise InvalidArgument(f"unknown direction {value}", field="direction")


def _direction_proto(direction: Direction) -> pb.Direction:
    return pb.DIRECTION_MINIMIZE if direction.minimize else pb.DIRECTION_MAXIMIZE


def _metric_field(metric: str, argument: str = "metric") -> str:
    """The metric's field text; accepts "val_loss" or "metrics.val_loss"."""
    if not metric:
        raise InvalidArgument(
            f"{argument} is required (a metric key such as val_loss)", field=argument
        )
    if len(metric) > 250 + len("metrics."):
        raise InvalidArgument(f"{argument} is longer than 250 characters", field=argument)
    key = metric.removeprefix("metrics.")
    return field_text("metrics", key)


def _metric_key(metric: str) -> str:
    return metric.removeprefix("metrics.")


def _param_field(key: str, argument: str) -> str:
    if not key or len(key) > 250:
        raise InvalidArgument(f"{argument}: param keys are 1-250 characters", field=argument)
    return field_text("params", key.removeprefix("params."))


def _scope(experiment_ids: Sequence[str], filter_text: str, model_type: str) -> Scope:
    return Scope(tuple(dict.fromkeys(experiment_ids)), filter_text, model_type)


def _timestamp(ms: float | None) -> timestamp_pb2.Timestamp | None:
    if ms is None or math.isnan(ms):
        return None
    return ms_to_timestamp(int(ms))


def _summary(table: Table, row: int) -> pb.RunSummary:
    def text(name: str) -> str:
        column = table.columns.get(name)
        value = column.value(row) if column is not None else None
        return "" if value is None else str(value)

    def number(name: str) -> float | None:
        column = table.columns.get(name)
        value = column.value(row) if column is not None else None
        return value if isinstance(value, float) else None

    status_text = text("status")
    status_names = set(run_pb2.RunStatus.keys())
    status = (
        run_pb2.RunStatus.Value(f"RUN_STATUS_{status_text}")
        if f"RUN_STATUS_{status_text}" in status_names
        else run_pb2.RUN_STATUS_UNSPECIFIED
    )
    summary = pb.RunSummary(
        run_id=table.run_ids[row],
        experiment_id=table.experiment_ids[row],
        run_name=text("run_name"),
        status=status,  # type: ignore[arg-type]
        model_type=text("model_type"),
        dataset_id=text("dataset_id"),
        dataset_name=text("dataset_name"),
        version=int(number("version") or 0),
    )
    start = _timestamp(number("start_time"))
    if start is not None:
        summary.start_time.CopyFrom(start)
    end = _timestamp(number("end_time"))
    if end is not None:
        summary.end_time.CopyFrom(end)
    return summary


def _param_text(column: Column, row: int) -> str | None:
    value = column.value(row)
    if value is None:
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def _ranks(values: Sequence[float]) -> list[int]:
    """Competition ranks (1, 2, 2, 4) of values already in best-first order."""
    ranks: list[int] = []
    for index, value in enumerate(values):
        if index and value == values[index - 1]:
            ranks.append(ranks[-1])
        else:
            ranks.append(index + 1)
    return ranks


def _values(column: Column, rows: int) -> list[float]:
    return [column.numbers[i] for i in range(rows)] if column.numeric else [math.nan] * rows


@dataclass
class _Group:
    count: int = 0
    finished: int = 0
    measured: int = 0
    best: float = math.nan
    total: float = 0.0


class AnalyticsService:
    def __init__(self, reader: TrackerReader, run_blocking: BlockingRun) -> None:
        self.reader = reader
        self.run_blocking = run_blocking

    # ------------------------------------------------------------------ compare

    async def compare_runs(
        self,
        runs: Sequence[str],
        metric_keys: Sequence[str],
        max_points: int,
        directions: dict[str, int],
        options: CallOptions,
    ) -> pb.RunComparison:
        names = list(dict.fromkeys(r.strip() for r in runs))
        if not names or not all(names):
            raise InvalidArgument("runs: name 1 to 100 runs (ids or resource names)", field="runs")
        if len(names) > MAX_COMPARED_RUNS:
            raise InvalidArgument(f"at most {MAX_COMPARED_RUNS} runs", field="runs")
        if max_points < 0:
            raise InvalidArgument("max_points must not be negative", field="max_points")
        points = min(max_points or DEFAULT_HISTORY_POINTS, MAX_HISTORY_POINTS)
        goals = {key: _goal(value) for key, value in directions.items()}
        fetched = await asyncio.gather(
            *(
                self.reader.get_run(n if "/" in n else f"experiments/-/runs/{n}", options)
                for n in names
            )
        )
        # Two names of one run (id and resource name) compare it once.
        unique: dict[str, run_pb2.Run] = {}
        for run in fetched:
            unique.setdefault(run.run_id, run)
        loaded = list(unique.values())
        comparison = pb.RunComparison()
        for run in loaded:
            comparison.runs.append(
                pb.RunSummary(
                    run_id=run.run_id,
                    experiment_id=run.experiment_id,
                    run_name=run.run_name,
                    status=run.status,
                    model_type=run.lineage.model_type,
                    dataset_id=run.lineage.dataset_id,
                    dataset_name=run.lineage.dataset_name,
                    version=run.version,
                    start_time=run.start_time if run.HasField("start_time") else None,
                    end_time=run.end_time if run.HasField("end_time") else None,
                )
            )
        for key in sorted({k for run in loaded for k in run.params}):
            values = [run.params.get(key) for run in loaded]
            present = [v is not None for v in values]
            texts = [v or "" for v in values]
            differs = not all(present) or len(set(texts)) > 1
            comparison.params.append(
                pb.ComparedParam(key=key, values=texts, present=present, differs=differs)
            )
        latest = [{m.key: m.value for m in run.metrics} for run in loaded]
        for key in sorted({k for values in latest for k in values}):
            direction = resolve(key, goals.get(key))
            numbers = [values.get(key, math.nan) for values in latest]
            present = [key in values for values in latest]
            compared = pb.ComparedMetric(
                key=key,
                values=numbers,
                present=present,
                direction=_direction_proto(direction),
                direction_inferred=direction.inferred,
                best_value=math.nan,
            )
            candidates = [(direction.sort_key(v), i) for i, v in enumerate(numbers) if present[i]]
            candidates = [c for c in candidates if math.isfinite(c[0])]
            if candidates:
                _, best_index = min(candidates)
                compared.best_run_id = loaded[best_index].run_id
                compared.best_value = numbers[best_index]
            comparison.metrics.append(compared)
        wanted = [_metric_key(k) for k in metric_keys] or sorted(
            {k for values in latest for k in values}
        )[:MAX_COMPARED_HISTORIES]
        if len(wanted) > MAX_COMPARED_HISTORIES:
            raise InvalidArgument(
                f"at most {MAX_COMPARED_HISTORIES} metric_keys", field="metric_keys"
            )
        histories = await asyncio.gather(
            *(
                self.reader.history(run.name, key, points, options)
                for key in wanted
                for run in loaded
            )
        )
        for index, key in enumerate(wanted):
            per_run = histories[index * len(loaded) : (index + 1) * len(loaded)]
            steps = sorted({s for h in per_run for s in h.steps})
            aligned = pb.AlignedHistory(
                metric_key=key, steps=steps, downsampled=any(h.downsampled for h in per_run)
            )
            for run, history in zip(loaded, per_run, strict=True):
                at = dict(zip(history.steps, history.values, strict=True))
                aligned.series.append(
                    pb.Series(name=run.run_id, values=[at.get(s, math.nan) for s in steps])
                )
            comparison.histories.append(aligned)
        return comparison

    # ------------------------------------------------------------------ leaderboard

    async def leaderboard(
        self,
        scope: Scope,
        metric: str,
        direction_value: int,
        top_k: int,
        group_by: int,
        param_keys: Sequence[str],
        include_unfinished: bool,
        options: CallOptions,
    ) -> pb.Leaderboard:
        metric_field = _metric_field(metric)
        key = _metric_key(metric)
        direction = resolve(key, _goal(direction_value))
        k = coerce_page_size(top_k, default=DEFAULT_TOP_K, maximum=MAX_LEADERBOARD_K)
        params = [_param_field(p, "param_keys") for p in param_keys]
        if len(params) > MAX_PARAM_COLUMNS:
            raise InvalidArgument(f"at most {MAX_PARAM_COLUMNS} param_keys", field="param_keys")
        group_fields: dict[int, str] = {
            pb.GROUP_BY_UNSPECIFIED: "",
            pb.GROUP_BY_MODEL_TYPE: "model_type",
            pb.GROUP_BY_DATASET: "dataset_id",
        }
        group_field = group_fields.get(group_by)
        if group_field is None:
            raise InvalidArgument(f"unknown group_by {group_by}", field="group_by")
        conditions = [f"{metric_field} IS NOT NULL"]
        if not include_unfinished:
            conditions.append(FINISHED)
        board = pb.Leaderboard(
            metric=key, direction=_direction_proto(direction), direction_inferred=direction.inferred
        )
        # Round one, concurrently: the params worth showing and the groups with their sizes
        # (one group of the whole scope when ungrouped).
        explicit = bool(params)
        keys, group_rows = await asyncio.gather(
            self.reader.keys(scope, options, conditions=conditions) if not explicit else _none(),
            self.reader.aggregate(
                scope,
                [group_field] if group_field else [],
                [(COUNT, "")],
                options,
                conditions=conditions,
            ),
        )
        if keys is not None:
            params = [field_text("params", p) for p in keys.varied_params()[:MAX_PARAM_COLUMNS]]
        if group_field:
            groups = [(g[0], int(v[0])) for g, v in group_rows][:MAX_GROUPS]
        else:
            groups = [("", int(group_rows[0][1][0]) if group_rows else 0)]
        # Round two: each group's top runs.
        tables = await asyncio.gather(
            *(
                self.reader.query_table(
                    scope,
                    [*SUMMARY_COLUMNS, metric_field, *params],
                    options,
                    conditions=[*conditions, _group_condition(group_field, group)]
                    if group_field
                    else conditions,
                    order_by=f"{metric_field} {direction.sql_order}, start_time ASC",
                    limit=k,
                )
                for group, _ in groups
            )
        )
        counts = [count for _, count in groups]
        for (group, _), table, count in zip(groups, tables, counts, strict=True):
            values = _values(table.columns[metric_field], len(table))
            entry_group = pb.LeaderboardGroup(group=group, run_count=count)
            shown = [p for p in params if explicit or _differs(table.columns[p], len(table))]
            for row, rank in enumerate(_ranks(values)):
                entry = pb.LeaderboardEntry(rank=rank, run=_summary(table, row), value=values[row])
                for p in shown:
                    text = _param_text(table.columns[p], row)
                    if text is not None:
                        entry.params[parse_field(p, "param_keys").key] = text
                entry_group.entries.append(entry)
            board.groups.append(entry_group)
        return board

    # ------------------------------------------------------------------ dashboard

    async def dashboard(
        self,
        scope: Scope,
        metric: str,
        direction_value: int,
        top_k: int,
        epoch_metric: str,
        heatmap_metrics: Sequence[str],
        options: CallOptions,
    ) -> pb.Dashboard:
        metric_field = _metric_field(metric)
        key = _metric_key(metric)
        direction = resolve(key, _goal(direction_value))
        k = coerce_page_size(top_k, default=DEFAULT_TOP_K, maximum=MAX_DASHBOARD_K)
        epoch_key = _metric_key(epoch_metric or DEFAULT_EPOCH_METRIC)
        _metric_field(epoch_key, "epoch_metric")
        if len(heatmap_metrics) > MAX_HEATMAP_METRICS:
            raise InvalidArgument(
                f"at most {MAX_HEATMAP_METRICS} heatmap_metrics", field="heatmap_metrics"
            )
        heat_fields = [_metric_field(m, "heatmap_metrics") for m in heatmap_metrics]
        best_function = MIN if direction.minimize else MAX
        measured = f"{metric_field} IS NOT NULL"

        # Round one: everything that needs only the scope, concurrently.
        kpi_rows, keys, trend_table, dataset_rows = await asyncio.gather(
            self.reader.aggregate(
                scope.without_model_type(),
                ["model_type", "status"],
                [
                    (COUNT, ""),
                    (COUNT, metric_field),
                    (best_function, metric_field),
                    (AVG, metric_field),
                ],
                options,
            ),
            self.reader.keys(scope, options, conditions=[FINISHED]),
            # Every finished, measured run of every model type (4 compact columns): the
            # trend, the top runs and each model type's best run all come from it.
            self.reader.query_table(
                scope.without_model_type(),
                ["end_time", "start_time", "model_type", metric_field],
                options,
                conditions=[FINISHED, measured],
                order_by="end_time ASC, start_time ASC",
                limit=MAX_ANALYZED_RUNS,
            ),
            self.reader.aggregate(
                scope,
                ["dataset_id"],
                [
                    (COUNT, ""),
                    (COUNT, metric_field),
                    (best_function, metric_field),
                    (AVG, metric_field),
                    (STDDEV, metric_field),
                ],
                options,
                conditions=[FINISHED],
            ),
        )
        board = pb.Dashboard(
            metric=key, direction=_direction_proto(direction), direction_inferred=direction.inferred
        )
        measured_values = _values(trend_table.columns[metric_field], len(trend_table))
        model_types = trend_table.columns["model_type"].texts
        in_scope = [
            i
            for i in range(len(trend_table))
            if not scope.model_type or (model_types[i] or "") == scope.model_type
        ]
        board.trend.CopyFrom(_trend(trend_table, in_scope, metric_field, direction))
        for group, values in dataset_rows:
            board.datasets.append(
                pb.DatasetPerformance(
                    dataset_id=group[0],
                    run_count=int(values[0]),
                    measured_run_count=int(values[1]),
                    best_value=values[2],
                    average_value=values[3],
                    stddev=values[4],
                )
            )

        # The top runs and each model type's best, from the same table.
        ranked = sorted(
            range(len(trend_table)), key=lambda i: (direction.sort_key(measured_values[i]), i)
        )
        scoped = set(in_scope)
        top_ids = [trend_table.run_ids[i] for i in ranked if i in scoped][:k]
        best_by_type: dict[str, str] = {}
        for i in ranked:
            best_by_type.setdefault(model_types[i] or "", trend_table.run_ids[i])
        best_in_scope = top_ids[0] if top_ids else ""
        params = [field_text("params", p) for p in keys.varied_params()[:MAX_PARAM_COLUMNS]]
        if not heat_fields:
            common = sorted(keys.metrics, key=lambda c: (-c.run_count, c.key))
            heat_fields = [field_text("metrics", c.key) for c in common[:MAX_HEATMAP_METRICS]]
        kpi_groups = _kpi_groups(kpi_rows, direction)
        kpi_types = [t for t in kpi_groups if t][:MAX_GROUPS]

        # Round two: the top runs' details and histories.
        top_request = (
            self.reader.query_table(
                scope,
                [*SUMMARY_COLUMNS, metric_field, *params, *heat_fields],
                options,
                conditions=[_id_list(top_ids)],
                limit=len(top_ids),
            )
            if top_ids
            else _none()
        )
        histories = [
            self.reader.history(
                f"experiments/-/runs/{run_id}", epoch_key, MAX_HEATMAP_EPOCHS, options
            )
            for run_id in top_ids
        ]
        top_table, epoch_histories = await asyncio.gather(top_request, asyncio.gather(*histories))

        scope_group = (
            kpi_groups.get(scope.model_type) if scope.model_type else _merge(kpi_groups, direction)
        )
        board.kpis.append(_kpis("", scope_group or _Group(), best_in_scope))
        for model_type in kpi_types:
            board.kpis.append(
                _kpis(model_type, kpi_groups[model_type], best_by_type.get(model_type, ""))
            )
        board.states.CopyFrom(_states(kpi_rows, scope.model_type))

        if top_table is not None:
            position = {run_id: i for i, run_id in enumerate(top_table.run_ids)}
            rows = [position[r] for r in top_ids if r in position]
            top_values = [top_table.columns[metric_field].numbers[r] for r in rows]
            for (row, value), rank in zip(
                zip(rows, top_values, strict=True), _ranks(top_values), strict=True
            ):
                config = pb.TopConfiguration(rank=rank, run=_summary(top_table, row), value=value)
                for p in params:
                    text = _param_text(top_table.columns[p], row)
                    if text is not None:
                        config.params[parse_field(p, "params").key] = text
                board.top_configurations.append(config)
            board.final_metrics_heatmap.CopyFrom(
                _matrix(
                    "final metrics",
                    [top_table.run_ids[r] for r in rows],
                    [str(top_table.columns["run_name"].value(r) or "") for r in rows],
                    [parse_field(f, "heatmap_metrics").key for f in heat_fields],
                    [[top_table.columns[f].numbers[r] for f in heat_fields] for r in rows],
                )
            )
            names = [str(top_table.columns["run_name"].value(position[r]) or "") for r in top_ids]
        else:
            names = []
            board.final_metrics_heatmap.CopyFrom(_matrix("final metrics", [], [], [], []))
        steps = sorted({s for h in epoch_histories for s in h.steps})
        board.epoch_heatmap.CopyFrom(
            _matrix(
                f"{epoch_key} by epoch",
                top_ids,
                names,
                [str(s) for s in steps],
                [
                    [dict(zip(h.steps, h.values, strict=True)).get(s, math.nan) for s in steps]
                    for h in epoch_histories
                ],
            )
        )
        return board

    # ------------------------------------------------------------------ insights

    async def _analysis_input(
        self,
        scope: Scope,
        metric_field: str,
        param_keys: Sequence[str],
        options: CallOptions,
    ) -> tuple[Table, list[str], bool]:
        conditions = [FINISHED, f"{metric_field} IS NOT NULL"]
        if param_keys:
            params = [_param_field(p, "param_keys") for p in param_keys]
            if len(params) > MAX_ANALYZED_PARAMS:
                raise InvalidArgument(
                    f"at most {MAX_ANALYZED_PARAMS} param_keys", field="param_keys"
                )
        else:
            keys: KeyCounts = await self.reader.keys(scope, options, conditions=conditions)
            params = [field_text("params", p) for p in keys.varied_params()[:MAX_ANALYZED_PARAMS]]
        table = await self.reader.query_table(
            scope,
            [metric_field, "model_type", "dataset_id", *params],
            options,
            conditions=conditions,
            order_by="start_time DESC",
            limit=MAX_INSIGHT_RUNS,
        )
        return table, list(dict.fromkeys(params)), table.truncated

    async def insights(
        self,
        scope: Scope,
        metric: str,
        direction_value: int,
        param_keys: Sequence[str],
        top_fraction: float,
        method_value: int,
        options: CallOptions,
    ) -> pb.HyperparameterInsights:
        metric_field = _metric_field(metric)
        key = _metric_key(metric)
        direction = resolve(key, _goal(direction_value))
        fraction = _top_fraction(top_fraction)
        method: hyperparams.Method
        if method_value in (pb.IMPORTANCE_METHOD_UNSPECIFIED, pb.IMPORTANCE_METHOD_PED_ANOVA):
            method, method_proto = "ped_anova", pb.IMPORTANCE_METHOD_PED_ANOVA
        elif method_value == pb.IMPORTANCE_METHOD_FANOVA:
            method, method_proto = "fanova", pb.IMPORTANCE_METHOD_FANOVA
        else:
            raise InvalidArgument(
                f"unknown importance_method {method_value}", field="importance_method"
            )
        table, params, truncated = await self._analysis_input(
            scope, metric_field, param_keys, options
        )
        columns = {
            parse_field(p, "param_keys").key: [table.columns[p].value(i) for i in range(len(table))]
            for p in params
        }
        values = _values(table.columns[metric_field], len(table))
        result: hyperparams.Insights = await self.run_blocking(
            hyperparams.analyze, columns, values, direction, fraction, method
        )
        response = pb.HyperparameterInsights(
            metric=key,
            direction=_direction_proto(direction),
            direction_inferred=direction.inferred,
            run_count=result.run_count,
            good_run_count=result.split.good if result.split else 0,
            threshold=result.split.threshold if result.split else math.nan,
            importance_method=method_proto,
            message=_join(
                result.message,
                f"the analysis rests on the {MAX_INSIGHT_RUNS:,} most recent runs"
                if truncated
                else "",
            ),
        )
        for param in result.params:
            insight = pb.ParamInsight(
                key=param.spec.key,
                importance=param.importance,
                numeric=param.spec.numeric,
                best_label=param.best_label,
                rank_correlation=param.rank_correlation,
            )
            for density in param.densities:
                insight.densities.append(
                    pb.ValueDensity(
                        label=density.label,
                        low=density.low,
                        high=density.high,
                        good_count=density.good_count,
                        rest_count=density.rest_count,
                        good_density=density.good_density,
                        rest_density=density.rest_density,
                        mean_value=density.mean_value,
                    )
                )
            response.params.append(insight)
        return response

    async def suggest(
        self,
        scope: Scope,
        metric: str,
        direction_value: int,
        count: int,
        param_keys: Sequence[str],
        seed: int,
        options: CallOptions,
    ) -> pb.SuggestExperimentsResponse:
        metric_field = _metric_field(metric)
        key = _metric_key(metric)
        direction = resolve(key, _goal(direction_value))
        wanted = coerce_page_size(count, default=DEFAULT_SUGGESTIONS, maximum=MAX_SUGGESTIONS)
        table, params, _ = await self._analysis_input(scope, metric_field, param_keys, options)
        response = pb.SuggestExperimentsResponse(
            metric=key,
            direction=_direction_proto(direction),
            direction_inferred=direction.inferred,
            run_count=len(table),
        )
        if not len(table):
            response.message = "no finished runs with a value of the metric in scope"
            return response
        values = _values(table.columns[metric_field], len(table))
        best_row = min(range(len(values)), key=lambda i: (direction.sort_key(values[i]), i))
        base_run = await self.reader.get_run(
            f"experiments/-/runs/{table.run_ids[best_row]}", options
        )
        columns = {
            parse_field(p, "param_keys").key: [table.columns[p].value(i) for i in range(len(table))]
            for p in params
        }
        proposals, insights = await self.run_blocking(
            hyperparams.suggest,
            columns,
            values,
            direction,
            base=dict(base_run.params),
            count=wanted,
            seed=seed,
            top_fraction=DEFAULT_TOP_FRACTION,
            metric_name=key,
        )
        for proposal in proposals:
            suggestion = pb.Suggestion(
                base_run_id=base_run.run_id,
                model_type=base_run.lineage.model_type,
                dataset_id=base_run.lineage.dataset_id,
                reason=proposal.reason,
            )
            suggestion.params.update({**base_run.params, **proposal.values})
            suggestion.changed_params.update(proposal.changed)
            response.suggestions.append(suggestion)
        if not insights.params:
            response.message = insights.message or "no param varies across the runs"
        elif len(proposals) < wanted:
            response.message = (
                f"{len(proposals)} new configurations found; the rest of the space around the "
                "runs has been tried"
            )
        return response


# ---------------------------------------------------------------------- helpers


async def _none() -> None:
    return None


def _group_condition(field: str, value: str) -> str:
    """Runs of one group; "" is the group of runs without a value (NULL or empty)."""
    return f"{field} IS NULL" if value == "" else f"{field} = {quote_text(value)}"


def _id_list(run_ids: Sequence[str]) -> str:
    return "run_id IN (" + ", ".join(quote_text(r) for r in run_ids) + ")"


def _join(*messages: str) -> str:
    return "; ".join(m for m in messages if m)


def _top_fraction(value: float) -> float:
    if value == 0:
        return DEFAULT_TOP_FRACTION
    if not 0 < value < 1 or math.isnan(value):
        raise InvalidArgument("top_fraction must be within (0, 1)", field="top_fraction")
    return value


def _differs(column: Column, rows: int) -> bool:
    values = [column.value(i) for i in range(rows)]
    return len(set(values)) > 1


def _trend(table: Table, rows: Sequence[int], metric_field: str, direction: Direction) -> pb.Trend:
    """Best-so-far improvements over `rows` of a table in time order."""
    trend = pb.Trend(run_count=len(rows))
    numbers = table.columns[metric_field].numbers
    ends = table.columns["end_time"].numbers
    starts = table.columns["start_time"].numbers
    best = math.nan
    for row in rows:
        value = numbers[row]
        if math.isnan(value):
            continue
        if math.isnan(best) or direction.better(value, best):
            best = value
            when = ends[row] if not math.isnan(ends[row]) else starts[row]
            point = pb.TrendPoint(run_id=table.run_ids[row], value=value, best_so_far=best)
            stamp = _timestamp(when)
            if stamp is not None:
                point.time.CopyFrom(stamp)
            trend.points.append(point)
    return trend


def _kpi_groups(
    rows: list[tuple[list[str], list[float]]], direction: Direction
) -> dict[str, _Group]:
    """Per model type, from (model_type, status) groups of COUNT, COUNT(m), BEST(m), AVG(m).
    Best and average are over finished runs."""
    groups: dict[str, _Group] = defaultdict(_Group)
    for (model_type, status), (count, measured, best, average) in rows:
        group = groups[model_type]
        group.count += int(count)
        if status != "FINISHED":
            continue
        group.finished += int(count)
        if measured:
            group.measured += int(measured)
            group.total += average * measured
            if math.isnan(group.best) or direction.better(best, group.best):
                group.best = best
    return dict(sorted(groups.items()))


def _merge(groups: dict[str, _Group], direction: Direction) -> _Group:
    merged = _Group()
    for group in groups.values():
        merged.count += group.count
        merged.finished += group.finished
        merged.measured += group.measured
        merged.total += group.total
        if not math.isnan(group.best) and (
            math.isnan(merged.best) or direction.better(group.best, merged.best)
        ):
            merged.best = group.best
    return merged


def _kpis(model_type: str, group: _Group, best_run_id: str) -> pb.Kpis:
    return pb.Kpis(
        model_type=model_type,
        run_count=group.count,
        finished_run_count=group.finished,
        measured_run_count=group.measured,
        best_value=group.best,
        average_value=group.total / group.measured if group.measured else math.nan,
        best_run_id=best_run_id,
    )


def _states(rows: list[tuple[list[str], list[float]]], model_type: str) -> pb.StateCounts:
    states = pb.StateCounts()
    for (group_type, status), values in rows:
        if model_type and group_type != model_type:
            continue
        count = int(values[0])
        states.total += count
        field = status.lower()
        if field in ("queued", "running", "finished", "failed", "killed"):
            setattr(states, field, getattr(states, field) + count)
    return states


def _matrix(
    title: str,
    row_ids: Sequence[str],
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    rows: Sequence[Sequence[float]],
) -> pb.Matrix:
    return pb.Matrix(
        title=title,
        row_ids=row_ids,
        row_labels=row_labels,
        column_labels=column_labels,
        values=[v for row in rows for v in row],
    )
