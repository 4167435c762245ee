"""`cairn analytics ...`: compare, leaderboard, dashboard, insights, suggest.

The analytics service is at --analytics-uri, else CAIRN_ANALYTICS_URI, else 127.0.0.1:50053;
experiment names and run id prefixes are resolved through the tracker (--tracking-uri).
EXPERIMENT is a display name or id, or "-" for every experiment. --json prints the service's
response with every field (NaN as null); the tables show the gist.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, cast

import click
import grpc

from cairn.analysis import Analytics
from cairn.analytics.v1 import analytics_service_pb2 as pb
from cairn.cli.bundle import resolve_experiment
from cairn.cli.output import console, emit, format_value, message_data, print_json, print_table
from cairn.cli.tracking import _tracker, resolve_run, tracking_uri_option
from cairn.errors import UnavailableError, from_rpc_error

_ANALYTICS_KEY = "cairn.analytics"
_ANALYTICS_URI_KEY = "cairn.analytics_uri"


def _remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_ANALYTICS_URI_KEY] = value


def _analytics() -> Analytics:
    ctx = click.get_current_context()
    existing = ctx.meta.get(_ANALYTICS_KEY)
    if isinstance(existing, Analytics):
        return existing
    client = Analytics(ctx.meta.get(_ANALYTICS_URI_KEY))
    ctx.meta[_ANALYTICS_KEY] = client
    ctx.call_on_close(client.close)
    return client


@contextmanager
def _friendly_errors() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
    except UnavailableError as error:
        ctx = click.get_current_context()
        client = ctx.meta.get(_ANALYTICS_KEY)
        target = client.target if isinstance(client, Analytics) else "the analytics service"
        raise UnavailableError(
            f"{error} (analytics at {target}; start the stack with `cairn up`, or point "
            "CAIRN_ANALYTICS_URI / --analytics-uri at a running analytics service)",
            code=error.code,
        ) from None


class _AnalyticsGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with _friendly_errors():
            return super().invoke(ctx)


@click.group(cls=_AnalyticsGroup)
@click.option(
    "--analytics-uri",
    metavar="HOST:PORT",
    default=None,
    expose_value=False,
    callback=_remember,
    help="Analytics address (default: CAIRN_ANALYTICS_URI, else 127.0.0.1:50053).",
)
def analytics() -> None:
    """Compare runs, leaderboards, the dashboard, hyperparameter insight, suggestions."""


tracking_uri_option(analytics)


def _experiment_ids(experiment: str) -> list[str]:
    if experiment in ("-", "*", "all"):
        return []
    return [resolve_experiment(_tracker(), experiment).experiment_id]


def _scope(
    experiment: str, metric: str, filter_text: str, model_type: str, direction: str | None
) -> dict[str, Any]:
    """The SDK arguments of the scope options every analysis command shares."""
    return {
        "experiment_ids": _experiment_ids(experiment),
        "metric": metric,
        "filter": filter_text,
        "model_type": model_type,
        "direction": _direction(direction),
    }


def _direction(value: str | None) -> Literal["minimize", "maximize"] | None:
    if value is None:
        return None
    return "minimize" if value.startswith("min") else "maximize"


def _scope_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.argument("experiment"),
            click.option("--metric", required=True, help="The metric to rank or analyze."),
            click.option("--filter", "filter_text", default="", help="Tracker filter grammar."),
            click.option("--model-type", default="", help="Only runs of this model_type."),
            click.option(
                "--direction",
                type=click.Choice(["min", "max", "minimize", "maximize"]),
                default=None,
                help="Default: inferred from the metric name (loss, rmse... are minimized).",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
        ]
    ):
        command = option(command)
    return command


def _goal_word(direction: int) -> str:
    return "lower is better" if direction == pb.DIRECTION_MINIMIZE else "higher is better"


# ---------------------------------------------------------------------- compare


@analytics.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--metric", "metric_keys", multiple=True, help="Histories to align (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def compare(runs: tuple[str, ...], metric_keys: tuple[str, ...], as_json: bool) -> None:
    """Compare RUNS side by side: params that differ, best value per metric."""
    tracker = _tracker()
    names = [resolve_run(tracker, ref).name for ref in runs]
    result = _analytics().compare_runs(names, metric_keys=metric_keys)

    def render() -> None:
        headers = ["", *(r.run_name or r.run_id[:8] for r in result.runs)]
        rows: list[list[Any]] = []
        for param in result.params:
            marker = " *" if param.differs else ""
            rows.append(
                [
                    f"params.{param.key}{marker}",
                    *(v if p else None for v, p in zip(param.values, param.present, strict=True)),
                ]
            )
        for metric in result.metrics:
            cells: list[Any] = []
            for run, value, present in zip(result.runs, metric.values, metric.present, strict=True):
                text = format_value(value) if present else None
                if present and run.run_id == metric.best_run_id:
                    text = f"{text} (best)"
                cells.append(text)
            rows.append([f"metrics.{metric.key} ({_goal_word(metric.direction)})", *cells])
        print_table("Comparison (* params that differ)", headers, rows)

    emit(as_json, message_data(result), render)


# ---------------------------------------------------------------------- leaderboard


@analytics.command()
@_scope_options
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(1, 1000))
@click.option("--group-by", type=click.Choice(["model-type", "dataset"]), default=None)
@click.option("--include-unfinished", is_flag=True, help="Rank runs of every status.")
def leaderboard(
    experiment: str,
    metric: str,
    filter_text: str,
    model_type: str,
    direction: str | None,
    as_json: bool,
    top_k: int,
    group_by: str | None,
    include_unfinished: bool,
) -> None:
    """The top runs of EXPERIMENT by --metric."""
    group = cast(
        Literal["model_type", "dataset"] | None,
        group_by.replace("-", "_") if group_by else None,
    )
    board = _analytics().leaderboard(
        **_scope(experiment, metric, filter_text, model_type, direction),
        top_k=top_k,
        group_by=group,
        include_unfinished=include_unfinished,
    )

    def render() -> None:
        for entries in board.groups:
            title = f"Leaderboard: {board.metric} ({_goal_word(board.direction)})"
            if entries.group or group:
                title += f" - {group}: {entries.group or '(none)'}"
            params = sorted({k for e in entries.entries for k in e.params})
            print_table(
                f"{title}, {entries.run_count} runs",
                ["rank", "run", "run id", board.metric, *params],
                [
                    [
                        e.rank,
                        e.run.run_name,
                        e.run.run_id,
                        e.value,
                        *(e.params.get(p) for p in params),
                    ]
                    for e in entries.entries
                ],
                empty=f"no finished runs with {board.metric}",
            )

    emit(as_json, message_data(board), render)


# ---------------------------------------------------------------------- dashboard


@analytics.command()
@_scope_options
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(1, 50))
@click.option("--epoch-metric", default="loss", show_default=True)
def dashboard(
    experiment: str,
    metric: str,
    filter_text: str,
    model_type: str,
    direction: str | None,
    as_json: bool,
    top_k: int,
    epoch_metric: str,
) -> None:
    """The experiments dashboard of EXPERIMENT (KPIs, trend, top configurations...)."""
    board = _analytics().dashboard(
        **_scope(experiment, metric, filter_text, model_type, direction),
        top_k=top_k,
        epoch_metric=epoch_metric,
    )

    def render() -> None:
        print_table(
            f"KPIs: {board.metric} ({_goal_word(board.direction)})",
            ["model type", "runs", "finished", "measured", "best", "average", "best run"],
            [
                [
                    k.model_type or "(scope)",
                    k.run_count,
                    k.finished_run_count,
                    k.measured_run_count,
                    k.best_value,
                    k.average_value,
                    k.best_run_id,
                ]
                for k in board.kpis
            ],
        )
        s = board.states
        console.print(
            f"states: {s.running} running, {s.finished} finished, {s.failed} failed, "
            f"{s.killed} killed, {s.queued} queued ({s.total} runs)"
        )
        print_table(
            f"Best so far ({board.trend.run_count} finished runs)",
            ["time", "run id", "value", "best so far"],
            [
                [
                    p.time.ToDatetime().isoformat(timespec="seconds"),
                    p.run_id,
                    p.value,
                    p.best_so_far,
                ]
                for p in board.trend.points
            ],
            empty="no finished runs with the metric",
        )
        params = sorted({k for c in board.top_configurations for k in c.params})
        print_table(
            "Top configurations",
            ["rank", "run", board.metric, *params],
            [
                [c.rank, c.run.run_name, c.value, *(c.params.get(p) for p in params)]
                for c in board.top_configurations
            ],
            empty="no finished runs with the metric",
        )
        print_table(
            "Datasets",
            ["dataset", "runs", "measured", "best", "average", "stddev"],
            [
                [
                    d.dataset_id or "(none)",
                    d.run_count,
                    d.measured_run_count,
                    d.best_value,
                    d.average_value,
                    d.stddev,
                ]
                for d in board.datasets
            ],
        )

    emit(as_json, message_data(board), render)


# ---------------------------------------------------------------------- insights


@analytics.command()
@_scope_options
@click.option(
    "--method", type=click.Choice(["ped-anova", "fanova"]), default="ped-anova", show_default=True
)
@click.option("--top-fraction", default=0.3, show_default=True, type=float)
def insights(
    experiment: str,
    metric: str,
    filter_text: str,
    model_type: str,
    direction: str | None,
    as_json: bool,
    method: str,
    top_fraction: float,
) -> None:
    """Which params matter for --metric in EXPERIMENT, and which values go with good runs."""
    result = _analytics().insights(
        **_scope(experiment, metric, filter_text, model_type, direction),
        top_fraction=top_fraction,
        method=cast(Literal["ped_anova", "fanova"], method.replace("-", "_")),
    )

    def render() -> None:
        console.print(
            f"{result.metric} ({_goal_word(result.direction)}): {result.run_count} finished runs, "
            f"top {result.good_run_count} at {format_value(result.threshold)} or better"
        )
        if result.message:
            console.print(f"[yellow]{result.message}[/yellow]")
        print_table(
            "Hyperparameter importance",
            ["param", "importance", "best values", "rank correlation"],
            [
                [
                    p.key,
                    p.importance,
                    p.best_label,
                    None if math.isnan(p.rank_correlation) else p.rank_correlation,
                ]
                for p in result.params
            ],
        )

    emit(as_json, message_data(result), render)


# ---------------------------------------------------------------------- suggest


@analytics.command()
@_scope_options
@click.option("--count", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--seed", default=0, show_default=True, type=int)
def suggest(
    experiment: str,
    metric: str,
    filter_text: str,
    model_type: str,
    direction: str | None,
    as_json: bool,
    count: int,
    seed: int,
) -> None:
    """Configurations to try next in EXPERIMENT, from a TPE sampler warmed with its runs."""
    result = _analytics().suggest(
        **_scope(experiment, metric, filter_text, model_type, direction),
        count=count,
        seed=seed,
    )
    if as_json:
        print_json(message_data(result))
        return
    if result.message:
        console.print(f"[yellow]{result.message}[/yellow]")
    for index, suggestion in enumerate(result.suggestions, start=1):
        changes = ", ".join(f"{k}={v}" for k, v in sorted(suggestion.changed_params.items()))
        console.print(f"[bold]{index}.[/bold] {changes or '(the base configuration)'}")
        console.print(f"   based on run {suggestion.base_run_id}; {suggestion.reason}")


COMMANDS = [analytics]
