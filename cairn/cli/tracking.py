"""Tracking commands: `cairn experiments ...`, `cairn runs ...` and `cairn gc`.

Every command talks to the tracker at --tracking-uri, else CAIRN_TRACKING_URI, else
127.0.0.1:50051 (token from CAIRN_TOKEN). Commands that print data take --json: stable keys,
full ids, ISO-8601 times, NaN/infinite metric values as null.

A RUN argument is a full run id, a unique prefix of at least 6 characters of one, or a
resource name experiments/{experiment_id}/runs/{run_id}.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import grpc
from rich.table import Table
from rich.text import Text

from cairn.cli import bundle
from cairn.cli.bundle import human_bytes, resolve_experiment, rpc
from cairn.cli.output import console, emit, format_value, json_option
from cairn.client import Tracker
from cairn.errors import (
    CairnError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    from_rpc_error,
)
from cairn.tracker.v1 import lifecycle_pb2, run_pb2
from cairn.tracker.v1 import tracker_service_pb2 as pb
from cairn.types import Experiment, Run, to_datetime

MIN_PREFIX = 6
SHORT_ID = 8
DEFAULT_METRIC_COLUMNS = 5
DEFAULT_PARAM_COLUMNS = 8
LOWER_IS_BETTER = ("loss", "error", "rmse", "mae", "mse")
_PREFIX_CHARS = re.compile(r"[A-Za-z0-9_\-]+")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_URI_KEY = "cairn.tracking_uri"
_TRACKER_KEY = "cairn.tracker"


# ---------------------------------------------------------------------- plumbing


def _remember_uri(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_URI_KEY] = value


def _uri_parameter() -> click.Option:
    return click.Option(
        ["--tracking-uri"],
        metavar="HOST:PORT",
        default=None,
        expose_value=False,
        callback=_remember_uri,
        help="Tracker address (default: CAIRN_TRACKING_URI, else 127.0.0.1:50051).",
    )


def tracking_uri_option(command: click.Command) -> click.Command:
    """Adds --tracking-uri to a command or group (a group passes it to its subcommands)."""
    command.params.append(_uri_parameter())
    return command


def _tracker() -> Tracker:
    """One Tracker per command invocation, closed when the command ends."""
    ctx = click.get_current_context()
    existing = ctx.meta.get(_TRACKER_KEY)
    if isinstance(existing, Tracker):
        return existing
    tracker = Tracker(ctx.meta.get(_URI_KEY), capture_environment=False)
    ctx.meta[_TRACKER_KEY] = tracker
    ctx.call_on_close(tracker.close)
    return tracker


@contextmanager
def _friendly_errors(ctx: click.Context) -> Iterator[None]:
    """Raw gRPC errors become CairnErrors; an unreachable tracker gets a hint, not a trace."""
    try:
        yield
    except grpc.RpcError as error:
        raise _explain(ctx, from_rpc_error(error)) from None
    except UnavailableError as error:
        raise _explain(ctx, error) from None


def _explain(ctx: click.Context, error: CairnError) -> CairnError:
    if not isinstance(error, UnavailableError) or error.code != grpc.StatusCode.UNAVAILABLE:
        return error
    tracker = ctx.meta.get(_TRACKER_KEY)
    target = tracker.target if isinstance(tracker, Tracker) else "the tracker"
    return UnavailableError(
        f"cannot reach the Cairn tracker at {target}. Is it running? Start it with `cairn up` "
        "(or point CAIRN_TRACKING_URI / --tracking-uri at a running tracker).",
        code=error.code,
    )


class _TrackerGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        with _friendly_errors(ctx):
            return super().invoke(ctx)


class _TrackerCommand(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        with _friendly_errors(ctx):
            return super().invoke(ctx)


def _cell(value: Any, style: str = "") -> Text:
    """A table cell that never interprets rich markup in user data."""
    return Text(value if isinstance(value, str) else format_value(value), style=style)


# Short fixed-format columns never wrap; free-form ones fold when the terminal is narrow.
_NO_WRAP = frozenset({"run id", "status", "start", "version", "created", "state"})


def _table(title: str | None, columns: Sequence[str]) -> Table:
    table = Table(title=title, header_style="bold", title_justify="left")
    for column in columns:
        table.add_column(
            column,
            overflow="fold",
            no_wrap=column in _NO_WRAP,
            min_width=min(len(column), 12),  # a narrow terminal never squeezes a column away
        )
    return table


def _key_values(title: str, values: Mapping[str, Any]) -> None:
    if not values:
        return
    table = _table(title, ["key", "value"])
    for key in sorted(values):
        table.add_row(_cell(key), _cell(values[key]))
    console.print(table)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _short(run_id: str) -> str:
    return run_id[:SHORT_ID]


def _parse_pairs(pairs: Sequence[str], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r}: use key=value", param_hint=what)
        result[key.strip()] = value
    return result


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w', '1d12h' or '0' -> seconds."""
    cleaned = text.strip().lower()
    if cleaned in ("0", "0s"):
        return 0.0
    position = 0
    total = 0.0
    for match in _DURATION.finditer(cleaned):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(cleaned):
        raise click.BadParameter(
            f"{text!r}: use a number with a unit s, m, h, d or w (e.g. 30d, 12h, 90m), or 0",
            param_hint="--older-than",
        )
    return total


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# ---------------------------------------------------------------------- JSON shapes


def _experiment_dict(experiment: Experiment) -> dict[str, Any]:
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "description": experiment.description,
        "tags": experiment.tags,
        "run_count": experiment.run_count,
        "created": _iso(experiment.created),
        "state": "DELETED" if experiment.deleted else "ACTIVE",
    }


def _run_dict(run: Run) -> dict[str, Any]:
    """The list/summary shape of a run (no artifacts or environment)."""
    return {
        "run_id": run.run_id,
        "run_name": run.run_name,
        "experiment_id": run.experiment_id,
        "status": run.status,
        "start_time": _iso(run.start_time),
        "end_time": _iso(run.end_time),
        "version": run.version,
        "dataset_id": run.dataset_id,
        "dataset_name": run.dataset_name,
        "model_type": run.model_type,
        "pipeline_id": run.pipeline_id,
        "node_id": run.node_id,
        "job_id": run.job_id,
        "user": run.user,
        "note": run.note,
        "deleted": run.deleted,
        "params": run.params,
        "metrics": run.metrics,
        "tags": run.tags,
    }


# ---------------------------------------------------------------------- lookups


def _get_run(tracker: Tracker, name: str, view: run_pb2.RunView) -> run_pb2.Run:
    run: run_pb2.Run = rpc(tracker, tracker.stub.GetRun, pb.GetRunRequest(name=name, view=view))
    return run


def resolve_run(
    tracker: Tracker, ref: str, view: run_pb2.RunView = run_pb2.RUN_VIEW_FULL
) -> run_pb2.Run:
    """A run by full id, unique id prefix (>= 6 characters) or resource name."""
    ref = ref.strip()
    if ref.startswith("experiments/"):
        return _get_run(tracker, ref, view)
    if not _PREFIX_CHARS.fullmatch(ref):
        raise InvalidArgumentError(
            f"{ref!r} is not a run id: use a run id, a prefix of one (at least {MIN_PREFIX} "
            "characters) or experiments/{experiment_id}/runs/{run_id}"
        )
    if len(ref) < MIN_PREFIX:
        raise InvalidArgumentError(
            f"run id prefix {ref!r} is too short: give at least {MIN_PREFIX} characters"
        )
    try:
        return _get_run(tracker, f"experiments/-/runs/{ref}", view)
    except NotFoundError:
        pass
    response = rpc(
        tracker,
        tracker.stub.SearchRuns,
        pb.SearchRunsRequest(
            filter=f"run_id LIKE '{ref}%'",
            order_by="start_time DESC",
            page_size=50,
            lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL,
            view=run_pb2.RUN_VIEW_BASIC,
        ),
    )
    # LIKE is case-insensitive on some databases and `_` is a wildcard: check exactly.
    matches = [r for r in response.runs if r.run_id.startswith(ref)]
    if not matches:
        raise NotFoundError(f"no run with id or id prefix {ref!r}", reason="RUN_NOT_FOUND")
    if len(matches) > 1:
        listed = "\n".join(
            f"  {r.run_id}  {r.run_name}  (experiment {r.experiment_id})" for r in matches[:10]
        )
        more = "\n  ..." if len(matches) > 10 or response.next_page_token else ""
        raise InvalidArgumentError(
            f"run id prefix {ref!r} is ambiguous; it matches:\n{listed}{more}\n"
            "Give more characters.",
            reason="AMBIGUOUS_RUN_ID",
        )
    return _get_run(tracker, f"experiments/-/runs/{matches[0].run_id}", view)


def _experiment_names(tracker: Tracker, ids: Sequence[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for experiment_id in set(ids):
        try:
            names[experiment_id] = tracker.get_experiment(experiment_id).name
        except NotFoundError:
            names[experiment_id] = experiment_id
    return names


def _search(
    tracker: Tracker,
    experiment_id: str,
    *,
    filter_text: str = "",
    order_by: str = "",
    limit: int = 100,
    include_deleted: bool = False,
) -> tuple[list[Run], bool]:
    """Up to `limit` runs, and whether more matched (one extra run is asked for to know)."""
    runs: list[Run] = []
    token = ""
    while len(runs) <= limit:
        response = rpc(
            tracker,
            tracker.stub.SearchRuns,
            pb.SearchRunsRequest(
                experiment_ids=[experiment_id],
                filter=filter_text,
                order_by=order_by,
                page_size=min(1000, limit + 1 - len(runs)),
                page_token=token,
                lifecycle_filter=lifecycle_pb2.LIFECYCLE_FILTER_ALL
                if include_deleted
                else lifecycle_pb2.LIFECYCLE_FILTER_ACTIVE_ONLY,
                view=run_pb2.RUN_VIEW_STANDARD,
            ),
        )
        runs.extend(Run.from_proto(r) for r in response.runs)
        token = response.next_page_token
        if not token:
            break
    return runs[:limit], len(runs) > limit


# ---------------------------------------------------------------------- experiments


@click.group(cls=_TrackerGroup)
def experiments() -> None:
    """List, inspect, create, delete and restore experiments."""


@experiments.command("list")
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted experiments.")
@click.option("--filter", "filter_text", default="", help="e.g. \"display_name LIKE 'risk%'\".")
@json_option
def experiments_list(include_deleted: bool, filter_text: str, as_json: bool) -> None:
    """List experiments, newest first."""
    found = _tracker().list_experiments(filter_text, include_deleted=include_deleted)

    def render() -> None:
        if not found:
            console.print("[dim]no experiments[/dim]")
            return
        table = _table(
            _plural(len(found), "experiment"), ["name", "id", "runs", "created", "state"]
        )
        for e in found:
            table.add_row(
                _cell(e.name),
                _cell(e.experiment_id),
                _cell(e.run_count),
                _cell(e.created),
                _cell("deleted" if e.deleted else "active", "red" if e.deleted else ""),
            )
        console.print(table)

    emit(as_json, {"experiments": [_experiment_dict(e) for e in found]}, render)


@experiments.command("show")
@click.argument("name_or_id")
@json_option
def experiments_show(name_or_id: str, as_json: bool) -> None:
    """An experiment's details, tags and its 10 most recent runs."""
    tracker = _tracker()
    experiment = resolve_experiment(tracker, name_or_id)
    recent, _ = _search(
        tracker,
        experiment.experiment_id,
        order_by="start_time DESC",
        limit=10,
        include_deleted=experiment.deleted,
    )

    def render() -> None:
        table = _table(f"Experiment {experiment.name}", ["", ""])
        table.show_header = False
        for label, value in (
            ("name", experiment.name),
            ("id", experiment.experiment_id),
            ("description", experiment.description or "-"),
            ("runs", experiment.run_count),
            ("created", experiment.created),
            ("state", "deleted" if experiment.deleted else "active"),
        ):
            table.add_row(_cell(label, "bold"), _cell(value))
        console.print(table)
        _key_values("Tags", experiment.tags)
        if not recent:
            console.print("[dim]no runs yet[/dim]")
            return
        runs_table = _table("Most recent runs", ["run id", "name", "status", "start", "version"])
        for run in recent:
            runs_table.add_row(
                _cell(_short(run.run_id)),
                _cell(run.run_name),
                _cell(run.status),
                _cell(run.start_time),
                _cell(run.version or "-"),
            )
        console.print(runs_table)

    data = _experiment_dict(experiment)
    data["recent_runs"] = [_run_dict(r) for r in recent]
    emit(as_json, data, render)


@experiments.command("create")
@click.argument("name")
@click.option("--description", default="", help="Free text.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Repeatable.")
@json_option
def experiments_create(name: str, description: str, tags: tuple[str, ...], as_json: bool) -> None:
    """Create an experiment."""
    experiment = _tracker().create_experiment(name, description, _parse_pairs(tags, "--tag"))
    emit(
        as_json,
        _experiment_dict(experiment),
        lambda: console.print(
            Text(f"Created experiment {experiment.name} (id {experiment.experiment_id}).")
        ),
    )


@experiments.command("delete")
@click.argument("name_or_id")
@json_option
def experiments_delete(name_or_id: str, as_json: bool) -> None:
    """Soft-delete an experiment (and hide its runs); restorable until `cairn gc`."""
    tracker = _tracker()
    experiment = resolve_experiment(tracker, name_or_id)
    rpc(
        tracker,
        tracker.stub.DeleteExperiment,
        pb.DeleteExperimentRequest(name=f"experiments/{experiment.experiment_id}"),
    )
    emit(
        as_json,
        {"experiment_id": experiment.experiment_id, "name": experiment.name, "deleted": True},
        lambda: console.print(
            Text(
                f"Deleted experiment {experiment.name} (id {experiment.experiment_id}) and hid "
                f"its runs.\nRestore it with: cairn experiments restore "
                f"{experiment.experiment_id}\n`cairn gc` purges deleted experiments for good."
            )
        ),
    )


@experiments.command("restore")
@click.argument("name_or_id")
@json_option
def experiments_restore(name_or_id: str, as_json: bool) -> None:
    """Restore a deleted experiment and its runs."""
    tracker = _tracker()
    experiment = tracker.restore_experiment(name_or_id)
    emit(
        as_json,
        _experiment_dict(experiment),
        lambda: console.print(
            Text(
                f"Restored experiment {experiment.name} (id {experiment.experiment_id}, "
                f"{experiment.run_count} runs)."
            )
        ),
    )


# ---------------------------------------------------------------------- runs


@click.group(cls=_TrackerGroup)
def runs() -> None:
    """Find, inspect, compare, annotate, export and import runs.

    RUN is a run id, a unique prefix of one (6+ characters) or experiments/E/runs/R.
    """


def _order_metric_keys(order_by: str) -> list[str]:
    keys = []
    for part in order_by.split(","):
        words = part.strip().split()
        if words and words[0].startswith("metrics."):
            keys.append(words[0].removeprefix("metrics.").strip("`"))
    return keys


def _metric_columns(found: Sequence[Run], order_by: str) -> list[str]:
    counts = Counter(k for r in found for k in r.metrics)
    chosen = [k for k in _order_metric_keys(order_by) if k in counts]
    for key, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(chosen) >= DEFAULT_METRIC_COLUMNS:
            break
        if key not in chosen:
            chosen.append(key)
    return chosen


def _differing_params(found: Sequence[Run]) -> list[str]:
    keys = sorted({k for r in found for k in r.params})
    return [k for k in keys if len({r.params.get(k) for r in found}) > 1]


@runs.command("list")
@click.argument("experiment")
@click.option("--filter", "filter_text", default="", help='e.g. "metrics.acc > 0.9".')
@click.option(
    "--order-by", default="", help='e.g. "metrics.acc DESC, start_time DESC" (default: newest).'
)
@click.option(
    "--max", "limit", type=click.IntRange(1), default=100, show_default=True, help="At most N runs."
)
@click.option("--metric", "metric_keys", multiple=True, help="Metric column (repeatable).")
@click.option("--param", "param_keys", multiple=True, help="Param column (repeatable).")
@click.option("--all", "include_deleted", is_flag=True, help="Include deleted runs.")
@json_option
def runs_list(
    experiment: str,
    filter_text: str,
    order_by: str,
    limit: int,
    metric_keys: tuple[str, ...],
    param_keys: tuple[str, ...],
    include_deleted: bool,
    as_json: bool,
) -> None:
    """List an experiment's runs (EXPERIMENT: name or id)."""
    tracker = _tracker()
    target = resolve_experiment(tracker, experiment)
    found, truncated = _search(
        tracker,
        target.experiment_id,
        filter_text=filter_text,
        order_by=order_by,
        limit=limit,
        include_deleted=include_deleted,
    )
    metrics = list(metric_keys) or _metric_columns(found, order_by)
    all_params = list(param_keys) or _differing_params(found)
    params = all_params if param_keys else all_params[:DEFAULT_PARAM_COLUMNS]

    def render() -> None:
        if not found:
            hint = " (the experiment is deleted: add --all)" if target.deleted else ""
            console.print(Text(f"no runs in {target.name} match{hint}", style="dim"))
            return
        title = f"{target.name}: {_plural(len(found), 'run')}" + (
            f" (the first {limit}; raise --max for more)" if truncated else ""
        )
        columns = ["run id", "name", "status", "start", "version", "model_type"]
        table = _table(title, [*columns, *metrics, *(f"params.{k}" for k in params)])
        for run in found:
            table.add_row(
                _cell(_short(run.run_id), "red" if run.deleted else ""),
                _cell(run.run_name),
                _cell(run.status),
                _cell(run.start_time),
                _cell(run.version or "-"),
                _cell(run.model_type or "-"),
                *(_cell(run.metrics.get(k)) for k in metrics),
                *(_cell(run.params.get(k)) for k in params),
            )
        console.print(table)
        hidden = len(all_params) - len(params)
        if hidden > 0:
            console.print(Text(f"{hidden} more differing params: choose with --param", "dim"))

    emit(
        as_json,
        {
            "experiment": {"experiment_id": target.experiment_id, "name": target.name},
            "metric_columns": metrics,
            "param_columns": all_params,
            "truncated": truncated,
            "runs": [_run_dict(r) for r in found],
        },
        render,
    )


def _show_dict(message: run_pb2.Run, experiment_name: str) -> dict[str, Any]:
    run = Run.from_proto(message)
    data = _run_dict(run)
    data["experiment_name"] = experiment_name
    data["name"] = run.name
    data["artifact_uri"] = run.artifact_uri
    data["metric_steps"] = {m.key: m.step for m in message.metrics}
    data["metric_timestamps"] = {m.key: _iso(to_datetime(m.timestamp)) for m in message.metrics}
    data["artifacts"] = [
        {
            "path": a.path,
            "artifact_type": a.artifact_type,
            "size_bytes": a.size_bytes,
            "sha256": a.sha256,
            "created": _iso(a.created),
        }
        for a in run.artifacts
    ]
    env = run.environment
    data["environment"] = (
        {f: getattr(env, f) for f in env.__dataclass_fields__} if env is not None else None
    )
    return data


@runs.command("show")
@click.argument("run_ref", metavar="RUN")
@json_option
def runs_show(run_ref: str, as_json: bool) -> None:
    """Everything about a run: attributes, lineage, params, metrics, tags, note, artifacts,
    environment (pip freeze only with --json)."""
    tracker = _tracker()
    message = resolve_run(tracker, run_ref)
    run = Run.from_proto(message)
    experiment_name = _experiment_names(tracker, [run.experiment_id])[run.experiment_id]
    data = _show_dict(message, experiment_name)

    def render() -> None:
        head = _table(f"Run {run.run_name}", ["", ""])
        head.show_header = False
        duration = (
            str(run.end_time - run.start_time).split(".")[0]
            if run.end_time and run.start_time
            else "-"
        )
        rows: list[tuple[str, Any]] = [
            ("run id", run.run_id),
            ("name", run.run_name),
            ("experiment", f"{experiment_name} ({run.experiment_id})"),
            ("status", run.status + (" (deleted)" if run.deleted else "")),
            ("start", run.start_time),
            ("end", run.end_time),
            ("duration", duration),
            ("user", run.user or "-"),
            ("version", run.version or "-"),
        ]
        for label in (
            "dataset_id",
            "dataset_name",
            "model_type",
            "pipeline_id",
            "node_id",
            "job_id",
        ):
            value = getattr(run, label)
            if value:
                rows.append((label, value))
        rows.append(("artifact uri", run.artifact_uri or "-"))
        for label, value in rows:
            head.add_row(_cell(label, "bold"), _cell(value))
        console.print(head)
        if run.note:
            console.print(Text("Note: ", style="bold") + Text(run.note))
        _key_values("Params", run.params)
        if message.metrics:
            table = _table("Metrics (latest)", ["key", "value", "step", "logged"])
            for metric in sorted(message.metrics, key=lambda m: m.key):
                table.add_row(
                    _cell(metric.key),
                    _cell(metric.value),
                    _cell(metric.step),
                    _cell(to_datetime(metric.timestamp)),
                )
            console.print(table)
        _key_values("Tags", run.tags)
        if run.artifacts:
            table = _table("Artifacts", ["path", "type", "size", "sha256"])
            for artifact in run.artifacts:
                table.add_row(
                    _cell(artifact.path),
                    _cell(artifact.artifact_type),
                    _cell(human_bytes(artifact.size_bytes)),
                    _cell(artifact.sha256[:12]),
                )
            console.print(table)
        env = run.environment
        if env is not None:
            git = env.git_commit[:12] if env.git_commit else "-"
            if env.git_branch:
                git += f" on {env.git_branch}"
            if env.git_dirty:
                git += " (dirty)"
            _key_values(
                "Environment",
                {
                    k: v
                    for k, v in {
                        "git": git,
                        "git remote": env.git_remote,
                        "command": env.command,
                        "python": env.python_version,
                        "host": env.hostname,
                        "platform": env.platform,
                        "device": env.device_info,
                    }.items()
                    if v
                },
            )

    emit(as_json, data, render)


def _lower_is_better(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in LOWER_IS_BETTER)


def _comparable(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


@runs.command("compare")
@click.argument("run_refs", metavar="RUN RUN...", nargs=-1, required=True)
@click.option("--metric", "metric_keys", multiple=True, help="Only these metrics (repeatable).")
@json_option
def runs_compare(run_refs: tuple[str, ...], metric_keys: tuple[str, ...], as_json: bool) -> None:
    """Runs side by side: params (differences highlighted) and metrics (best marked; lower is
    better for keys with loss, error, rmse, mae or mse)."""
    if len(run_refs) < 2:
        raise click.UsageError("compare needs at least two runs")
    tracker = _tracker()
    found: list[Run] = []
    for ref in run_refs:
        run = Run.from_proto(resolve_run(tracker, ref, run_pb2.RUN_VIEW_STANDARD))
        if all(r.run_id != run.run_id for r in found):
            found.append(run)
    param_keys = sorted({k for r in found for k in r.params})
    metric_list = list(metric_keys) or sorted({k for r in found for k in r.metrics})
    params: list[dict[str, Any]] = [
        {
            "key": key,
            "values": [r.params.get(key) for r in found],
            "differs": len({r.params.get(key) for r in found}) > 1,
        }
        for key in param_keys
    ]
    metrics: list[dict[str, Any]] = []
    for key in metric_list:
        values = [r.metrics.get(key) for r in found]
        present = [v for v in values if v is not None and _comparable(v)]
        lower = _lower_is_better(key)
        best = (min(present) if lower else max(present)) if present else None
        metrics.append(
            {
                "key": key,
                "values": values,
                "goal": "min" if lower else "max",
                "best_run_ids": [
                    r.run_id
                    for r, v in zip(found, values, strict=True)
                    if best is not None and v == best
                ],
            }
        )

    def render() -> None:
        table = _table(
            f"Comparing {len(found)} runs",
            ["", *(f"{r.run_name}\n{_short(r.run_id)}" for r in found)],
        )
        attributes: list[tuple[str, Callable[[Run], Any]]] = [
            ("status", lambda r: r.status),
            ("start", lambda r: r.start_time),
            ("version", lambda r: r.version or "-"),
            ("model_type", lambda r: r.model_type or "-"),
        ]
        for label, getter in attributes:
            table.add_row(_cell(label, "bold"), *(_cell(getter(r)) for r in found))
        if params:
            table.add_section()
            for row in params:
                style = "bold yellow" if row["differs"] else ""
                marker = " ≠" if row["differs"] else ""
                table.add_row(
                    _cell(f"params.{row['key']}{marker}", style),
                    *(_cell(v, style) for v in row["values"]),
                )
        if metrics:
            table.add_section()
            for row in metrics:
                cells = []
                for run, value in zip(found, row["values"], strict=True):
                    if run.run_id in row["best_run_ids"]:
                        cells.append(_cell(f"{format_value(value)} *", "bold green"))
                    else:
                        cells.append(_cell(value))
                arrow = "↓" if row["goal"] == "min" else "↑"
                table.add_row(_cell(f"metrics.{row['key']} {arrow}"), *cells)
        console.print(table)
        console.print(
            Text(
                "* best value (↑ higher is better, ↓ lower is better); ≠ params that differ",
                style="dim",
            )
        )

    emit(
        as_json,
        {
            "runs": [
                {
                    "run_id": r.run_id,
                    "run_name": r.run_name,
                    "experiment_id": r.experiment_id,
                    "status": r.status,
                    "start_time": _iso(r.start_time),
                    "version": r.version,
                    "model_type": r.model_type,
                }
                for r in found
            ],
            "params": params,
            "metrics": metrics,
        },
        render,
    )


@runs.command("delete")
@click.argument("run_ref", metavar="RUN")
@json_option
def runs_delete(run_ref: str, as_json: bool) -> None:
    """Soft-delete a run; restorable until `cairn gc` purges it."""
    tracker = _tracker()
    run = resolve_run(tracker, run_ref, run_pb2.RUN_VIEW_BASIC)
    rpc(tracker, tracker.stub.DeleteRun, pb.DeleteRunRequest(name=run.name))
    emit(
        as_json,
        {"run_id": run.run_id, "run_name": run.run_name, "deleted": True},
        lambda: console.print(
            Text(
                f"Deleted run {_short(run.run_id)} ({run.run_name}).\n"
                f"Restore it with: cairn runs restore {run.run_id}\n"
                "`cairn gc` purges deleted runs and their artifacts for good."
            )
        ),
    )


@runs.command("restore")
@click.argument("run_ref", metavar="RUN")
@json_option
def runs_restore(run_ref: str, as_json: bool) -> None:
    """Restore a deleted run."""
    tracker = _tracker()
    run = resolve_run(tracker, run_ref, run_pb2.RUN_VIEW_BASIC)
    restored = rpc(tracker, tracker.stub.RestoreRun, pb.RestoreRunRequest(name=run.name))
    emit(
        as_json,
        {"run_id": restored.run_id, "run_name": restored.run_name, "deleted": False},
        lambda: console.print(Text(f"Restored run {_short(run.run_id)} ({run.run_name}).")),
    )


@runs.command("note")
@click.argument("run_ref", metavar="RUN")
@click.argument("text")
@json_option
def runs_note(run_ref: str, text: str, as_json: bool) -> None:
    """Set a run's note, for example "PUBLISH: best model" or "BEST" ("" clears it)."""
    tracker = _tracker()
    run = resolve_run(tracker, run_ref, run_pb2.RUN_VIEW_BASIC)
    tracker.set_note(text, run_id=run.name)
    emit(
        as_json,
        {"run_id": run.run_id, "run_name": run.run_name, "note": text},
        lambda: console.print(
            Text(f"Note of run {_short(run.run_id)} ({run.run_name}): {text or '(cleared)'}")
        ),
    )


@runs.command("tag")
@click.argument("run_ref", metavar="RUN")
@click.argument("pairs", metavar="KEY=VALUE...", nargs=-1)
@click.option("--remove", "remove", multiple=True, metavar="KEY", help="Delete a tag (repeatable).")
@json_option
def runs_tag(run_ref: str, pairs: tuple[str, ...], remove: tuple[str, ...], as_json: bool) -> None:
    """Set (add or overwrite) tags on a run, or --remove them."""
    tags = _parse_pairs(pairs, "KEY=VALUE")
    if not tags and not remove:
        raise click.UsageError("give KEY=VALUE pairs to set and/or --remove KEY")
    tracker = _tracker()
    run = resolve_run(tracker, run_ref, run_pb2.RUN_VIEW_BASIC)
    if tags:
        tracker.set_tags(tags, run_id=run.name)
    for key in remove:
        tracker.delete_tag(key, run_id=run.name)
    current = dict(_get_run(tracker, run.name, run_pb2.RUN_VIEW_STANDARD).tags)

    def render() -> None:
        console.print(Text(f"Tags of run {_short(run.run_id)} ({run.run_name}) updated."))
        _key_values("Tags", current)

    emit(as_json, {"run_id": run.run_id, "run_name": run.run_name, "tags": current}, render)


@runs.command("export")
@click.argument("experiment")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The bundle to write (a .tar.gz).",
)
@click.option("--filter", "filter_text", default="", help="Only runs matching this filter.")
@click.option("--no-artifacts", is_flag=True, help="Leave artifact content out.")
@json_option
def runs_export(
    experiment: str, out: Path, filter_text: str, no_artifacts: bool, as_json: bool
) -> None:
    """Export an experiment's runs to a portable bundle (.tar.gz) for sharing or backup.

    The bundle holds manifest.json (format cairn-bundle/1: the experiment, and every run's
    attributes, params, tags, note, lineage, environment and artifact list),
    metrics/<run_id>.jsonl (every metric point) and artifacts/<run_id>/<path>.
    """
    summary = bundle.export_bundle(
        _tracker(),
        experiment,
        out,
        filter_text=filter_text,
        include_artifacts=not no_artifacts,
        progress=None if as_json else _progress(),
    )
    content = (
        f"{summary.artifact_count} artifacts, {human_bytes(summary.artifact_bytes)}"
        if summary.artifacts_included
        else f"artifact content left out ({summary.artifact_count} listed)"
    )
    emit(
        as_json,
        summary.to_dict(),
        lambda: console.print(
            Text(
                f"Exported {_plural(len(summary.run_ids), 'run')} of {summary.experiment.name} "
                f"({summary.metric_points} metric points; {content}) to {summary.path} "
                f"({bundle.FORMAT}, {human_bytes(summary.file_bytes)}).\n"
                f"Import it with: cairn runs import {summary.path}"
            )
        ),
    )


@runs.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--experiment",
    "experiment_name",
    default=None,
    help="Target experiment (default: the bundle's; created if missing).",
)
@json_option
def runs_import(file: Path, experiment_name: str | None, as_json: bool) -> None:
    """Import a bundle made by `cairn runs export`. Safe to repeat: runs already imported are
    reused, never duplicated. Version numbers are assigned anew by this tracker."""
    summary = bundle.import_bundle(
        _tracker(),
        file,
        experiment_name=experiment_name,
        progress=None if as_json else _progress(),
    )

    def render() -> None:
        verb = "created" if summary.experiment_created else "existing"
        console.print(
            Text(
                f"Imported {_plural(len(summary.runs), 'run')} into {verb} experiment "
                f"{summary.experiment_name} (id {summary.experiment_id})."
            )
        )
        table = _table(
            None,
            [
                "source run",
                "run id",
                "name",
                "result",
                "status",
                "version",
                "new params",
                "points stored",
                "artifacts",
            ],
        )
        for r in summary.runs:
            version = f"{r.version or '-'}"
            if r.source_version:
                version += f" (source {r.source_version})"
            table.add_row(
                _cell(_short(r.source_run_id)),
                _cell(_short(r.run_id)),
                _cell(r.run_name),
                _cell(r.result, "yellow" if r.result == "skipped" else ""),
                _cell(r.status),
                _cell(version),
                _cell(r.new_params),
                _cell(r.stored_points),
                _cell(
                    f"{r.uploaded_artifacts} new"
                    + (f", {r.skipped_artifacts} present" if r.skipped_artifacts else "")
                ),
            )
        if summary.runs:
            console.print(table)
        for r in summary.runs:
            if r.message:
                console.print(Text(f"{_short(r.run_id)}: {r.message}", style="yellow"))
        console.print(
            Text(
                "Version numbers are assigned anew by this tracker (the source's in parentheses).",
                style="dim",
            )
        )

    emit(as_json, summary.to_dict(), render)


def _progress() -> Callable[[str], None] | None:
    """Progress lines on stderr, when it is a terminal."""
    if not sys.stderr.isatty():
        return None
    return lambda line: click.echo(f"  {line}", err=True)


# ---------------------------------------------------------------------- gc


@click.command("gc", cls=_TrackerCommand)
@click.option(
    "--older-than",
    "older_than",
    required=True,
    metavar="DURATION",
    help="Purge what was deleted at least this long ago: 30d, 12h, 90m, or 0 for everything.",
)
@click.option("--dry-run", is_flag=True, help="Only report what would be purged.")
@json_option
def gc(older_than: str, dry_run: bool, as_json: bool) -> None:
    """Permanently remove deleted experiments and runs, freeing their artifact storage."""
    seconds = parse_duration(older_than)
    response = _tracker().purge_deleted(seconds, dry_run=dry_run)
    data = {
        "dry_run": dry_run,
        "older_than_seconds": seconds,
        "purged_experiment_count": response.purged_experiment_count,
        "purged_run_count": response.purged_run_count,
        "purged_run_ids": list(response.purged_run_ids),
        "freed_bytes": response.freed_bytes,
    }

    def render() -> None:
        verb = "Would purge" if dry_run else "Purged"
        freed = "would free" if dry_run else "freed"
        when = "" if seconds == 0 else f" deleted at least {older_than} ago"
        console.print(
            Text(
                f"{verb} {_plural(response.purged_experiment_count, 'experiment')} and "
                f"{_plural(response.purged_run_count, 'run')}{when}; "
                f"{freed} {human_bytes(response.freed_bytes)}."
            )
        )
        for run_id in response.purged_run_ids:
            console.print(Text(f"  run {run_id}", style="dim"))

    emit(as_json, data, render)


# --tracking-uri is accepted on the groups and on every command alike.
for _command in (experiments, runs, gc, *experiments.commands.values(), *runs.commands.values()):
    tracking_uri_option(_command)

COMMANDS: list[click.Command] = [experiments, runs, gc]
