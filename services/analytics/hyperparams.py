"""Hyperparameter insight and suggestions over finished runs, with optuna.

The runs become optuna trials (their params with a distribution each, their metric as the
objective), so optuna's own, well-tested pieces do the statistics: PED-ANOVA or fANOVA for
importance, and a TPE sampler warmed with the runs for the next configurations. The
TPE-style split (the top fraction of runs against the rest, densities per value) is computed
here because it is what people read: which values go with good results.

Everything here is CPU work on plain data; the service runs it off the event loop.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.samplers import TPESampler
from optuna.trial import create_trial
from scipy.stats import spearmanr

from services.analytics.directions import Direction

optuna.logging.set_verbosity(optuna.logging.WARNING)

ParamValue = float | str
Method = Literal["ped_anova", "fanova"]

# A numeric param with at most this many distinct values is treated as a grid of choices
# (embedding sizes 32/64/128): suggestions stay on the grid, densities are per value.
MAX_GRID_VALUES = 6
NUMERIC_BINS = 8
# Fewer runs than this give densities but no importance estimate.
MIN_RUNS_FOR_IMPORTANCE = 5
# TPE models the space after this many runs; before, optuna samples at random.
TPE_STARTUP_RUNS = 10
_SEARCH_ATTEMPTS_PER_SUGGESTION = 20


def format_number(value: float, integer: bool) -> str:
    """How a suggested number is written: integers exactly, floats to 4 significant digits
    (a configuration people can read and type)."""
    if integer:
        return str(round(value))
    return f"{value:.4g}"


@dataclass
class ParamSpec:
    """One param of the search space, from the values the runs used."""

    key: str
    kind: Literal["int", "float", "categorical"]
    numeric: bool
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: list[ParamValue] = field(default_factory=list)

    def distribution(self) -> BaseDistribution:
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log)
        return CategoricalDistribution(self.choices)

    def internal(self, value: ParamValue) -> Any:
        if self.kind == "int":
            return int(value)
        if self.kind == "float":
            return float(value)
        return value

    def text(self, value: Any) -> str:
        if self.kind == "int":
            return format_number(float(value), True)
        if self.kind == "float":
            return format_number(float(value), False)
        if isinstance(value, float):
            return format_number(value, value.is_integer())
        return str(value)


def build_space(key: str, values: Sequence[ParamValue | None]) -> ParamSpec | None:
    """The param's distribution, or None when it never varies (nothing to learn)."""
    present = [v for v in values if v is not None]
    distinct = sorted(set(present), key=lambda v: (isinstance(v, str), v))
    if len(distinct) < 2:
        return None
    numeric = all(isinstance(v, float) for v in distinct)
    if not numeric:
        return ParamSpec(key, "categorical", False, choices=[str(v) for v in distinct])
    numbers = [float(v) for v in distinct]
    if len(numbers) <= MAX_GRID_VALUES:
        return ParamSpec(key, "categorical", True, choices=list(numbers))
    low, high = min(numbers), max(numbers)
    integer = all(n.is_integer() for n in numbers)
    # Ranges spanning two decades or more (learning rates, regularizers) are searched and
    # binned on a log scale.
    log = low > 0 and high / low >= 100 and (not integer or low >= 1)
    return ParamSpec(key, "int" if integer else "float", True, low, high, log)


@dataclass
class Density:
    label: str
    low: float
    high: float
    good_count: int
    rest_count: int
    good_density: float
    rest_density: float
    mean_value: float
    contains: Any = None  # membership test for a value (bins) or the value itself

    def ratio(self, good_total: int, rest_total: int) -> float:
        """l(x)/g(x) with add-one smoothing, so one lucky run does not dominate."""
        good = (self.good_count + 1) / (good_total + 2)
        rest = (self.rest_count + 1) / (rest_total + 2)
        return good / rest

    def holds(self, value: Any) -> bool:
        if callable(self.contains):
            return bool(self.contains(value))
        return bool(self.contains == value)


@dataclass
class ParamResult:
    spec: ParamSpec
    densities: list[Density]
    best_label: str
    rank_correlation: float
    importance: float = 0.0


@dataclass
class Split:
    """Runs ordered best first; the first `good` are the good ones."""

    order: list[int]
    good: int
    threshold: float


@dataclass
class Insights:
    run_count: int
    split: Split | None
    params: list[ParamResult]
    message: str = ""


def split_runs(values: Sequence[float], direction: Direction, top_fraction: float) -> Split:
    order = sorted(range(len(values)), key=lambda i: (direction.sort_key(values[i]), i))
    good = min(len(values), max(1, math.ceil(top_fraction * len(values))))
    threshold = values[order[good - 1]] if values else math.nan
    return Split(order, good, threshold)


def _bins(spec: ParamSpec) -> list[tuple[float, float]]:
    if spec.log:
        edges = np.geomspace(spec.low, spec.high, NUMERIC_BINS + 1)
    else:
        edges = np.linspace(spec.low, spec.high, NUMERIC_BINS + 1)
    if spec.kind == "int":
        # Integer params get integer edges (no "[2, 2)" bins).
        edges = np.unique(np.round(edges))
    return [(float(edges[i]), float(edges[i + 1])) for i in range(len(edges) - 1)]


def _densities(
    spec: ParamSpec,
    values: Sequence[ParamValue | None],
    metric: Sequence[float],
    good_mask: Sequence[bool],
) -> list[Density]:
    good_total = sum(1 for g, v in zip(good_mask, values, strict=True) if g and v is not None)
    rest_total = sum(1 for g, v in zip(good_mask, values, strict=True) if not g and v is not None)
    groups: list[tuple[str, float, float, Any]] = []
    if spec.kind == "categorical":
        groups = [(spec.text(c), 0.0, 0.0, c) for c in spec.choices]
    elif spec.kind == "int" and spec.high - spec.low < 2 * NUMERIC_BINS:
        # A short integer range: one density per value reads better than ranges.
        groups = [(str(v), float(v), float(v), v) for v in range(int(spec.low), int(spec.high) + 1)]
    else:
        bins = _bins(spec)
        for index, (low, high) in enumerate(bins):
            last = index == len(bins) - 1
            label = f"[{spec.text(low)}, {spec.text(high)}{']' if last else ')'}"

            def member(v: Any, low: float = low, high: float = high, last: bool = last) -> bool:
                return low <= float(v) <= high if last else low <= float(v) < high

            groups.append((label, low, high, member))
    result = []
    for label, low, high, contains in groups:
        density = Density(label, low, high, 0, 0, 0.0, 0.0, math.nan, contains)
        hits = [
            i for i, v in enumerate(values) if v is not None and density.holds(spec.internal(v))
        ]
        density.good_count = sum(1 for i in hits if good_mask[i])
        density.rest_count = len(hits) - density.good_count
        density.good_density = density.good_count / good_total if good_total else 0.0
        density.rest_density = density.rest_count / rest_total if rest_total else 0.0
        density.mean_value = float(np.mean([metric[i] for i in hits])) if hits else math.nan
        result.append(density)
    return result


def _rank_correlation(
    spec: ParamSpec, values: Sequence[ParamValue | None], metric: Sequence[float]
) -> float:
    if not spec.numeric:
        return math.nan
    pairs = [(float(v), m) for v, m in zip(values, metric, strict=True) if v is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return math.nan
    correlation = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(correlation)


def _study(
    specs: Sequence[ParamSpec],
    columns: dict[str, Sequence[ParamValue | None]],
    metric: Sequence[float],
    direction: Direction,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    study = optuna.create_study(
        direction="minimize" if direction.minimize else "maximize", sampler=sampler
    )
    distributions = {spec.key: spec.distribution() for spec in specs}
    trials = []
    for row, value in enumerate(metric):
        params = {}
        for spec in specs:
            raw = columns[spec.key][row]
            if raw is not None:
                params[spec.key] = spec.internal(raw)
        trials.append(
            create_trial(
                params=params,
                distributions={k: distributions[k] for k in params},
                value=value,
            )
        )
    study.add_trials(trials)
    return study


def _importances(
    study: optuna.Study, keys: list[str], method: Method, top_fraction: float
) -> dict[str, float]:
    evaluator: optuna.importance.BaseImportanceEvaluator
    if method == "fanova":
        evaluator = FanovaImportanceEvaluator(seed=0)
    else:
        evaluator = PedAnovaImportanceEvaluator(target_quantile=min(top_fraction, 0.99))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = optuna.importance.get_param_importances(
            study, evaluator=evaluator, params=keys, normalize=True
        )
    return {k: float(v) if math.isfinite(v) else 0.0 for k, v in scores.items()}


def analyze(
    columns: dict[str, Sequence[ParamValue | None]],
    metric: Sequence[float],
    direction: Direction,
    top_fraction: float,
    method: Method,
    *,
    with_importance: bool = True,
) -> Insights:
    """Densities, rank correlation and importance of every varying param for `metric`.

    `columns` maps each param key to one value per run (a float for numeric params, a str
    otherwise, None where the run lacks it); `metric` has one value per run, none NaN.
    """
    count = len(metric)
    if count == 0:
        return Insights(0, None, [], "no finished runs with a value of the metric in scope")
    split = split_runs(metric, direction, top_fraction)
    good_mask = [False] * count
    for index in split.order[: split.good]:
        good_mask[index] = True
    specs = [spec for key in columns if (spec := build_space(key, columns[key])) is not None]
    results: list[ParamResult] = []
    for spec in specs:
        values = columns[spec.key]
        densities = _densities(spec, values, metric, good_mask)
        good_total = split.good
        rest_total = count - split.good
        # Ties (one run per value is common) go to the value with the better mean.
        best = max(
            densities,
            key=lambda d: (
                d.ratio(good_total, rest_total),
                d.good_count,
                -direction.sort_key(d.mean_value),
            ),
        )
        results.append(
            ParamResult(spec, densities, best.label, _rank_correlation(spec, values, metric))
        )
    message = ""
    if count < 2:
        message = "one run: nothing to compare it with"
    elif not specs:
        message = "no param takes more than one value across these runs"
    elif not with_importance:
        pass
    elif count < MIN_RUNS_FOR_IMPORTANCE:
        message = f"importance needs at least {MIN_RUNS_FOR_IMPORTANCE} runs; there are {count}"
    else:
        study = _study(specs, columns, metric, direction)
        try:
            scores = _importances(study, [s.key for s in specs], method, top_fraction)
        except (ValueError, RuntimeError) as error:
            message = f"importance could not be estimated: {error}"
        else:
            for result in results:
                result.importance = scores.get(result.spec.key, 0.0)
    results.sort(key=lambda r: (-r.importance, r.spec.key))
    return Insights(count, split, results, message)


@dataclass
class Proposal:
    values: dict[str, str]
    # The values that differ from the base configuration ("1e-3" and "0.001" are one value).
    changed: dict[str, str]
    reason: str


def _describe(result: ParamResult, value: Any, insights: Insights) -> str:
    assert insights.split is not None
    good_total = insights.split.good
    rest_total = insights.run_count - good_total
    text = result.spec.text(value)
    for density in result.densities:
        if density.holds(value):
            if density.good_count + density.rest_count == 0:
                return f"{result.spec.key}={text} explores {density.label}, which no run has tried"
            ratio = density.ratio(good_total, rest_total)
            single = result.spec.kind == "categorical" or density.low == density.high
            where = "is" if single else f"lies in {density.label},"
            return (
                f"{result.spec.key}={text} {where} {ratio:.1f}x as common among the top runs "
                f"as among the rest ({density.good_count} of {good_total} top runs)"
            )
    return f"{result.spec.key}={text}"


def suggest(
    columns: dict[str, Sequence[ParamValue | None]],
    metric: Sequence[float],
    direction: Direction,
    *,
    base: dict[str, str],
    count: int,
    seed: int,
    top_fraction: float,
    metric_name: str,
) -> tuple[list[Proposal], Insights]:
    """Up to `count` new configurations from a TPE sampler warmed with the runs.

    Each proposal is the base configuration with the sampled values in place; proposals
    that repeat a run's configuration (or an earlier proposal) are skipped.
    """
    insights = analyze(columns, metric, direction, top_fraction, "ped_anova", with_importance=False)
    if insights.run_count == 0 or not insights.params:
        return [], insights
    specs = [r.spec for r in insights.params]
    by_key = {r.spec.key: r for r in insights.params}
    sampler = TPESampler(seed=seed, n_startup_trials=TPE_STARTUP_RUNS, constant_liar=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = _study(specs, columns, metric, direction, sampler)
    distributions = {spec.key: spec.distribution() for spec in specs}

    def fingerprint(values: dict[str, str]) -> tuple[str, ...]:
        return tuple(values.get(spec.key, "") for spec in specs)

    canonical_base = {
        spec.key: canonical
        for spec in specs
        if spec.key in base and (canonical := _canonical(spec, base[spec.key])) is not None
    }
    seen = set()
    for row in range(len(metric)):
        tried: dict[str, str] = {}
        for spec in specs:
            raw = columns[spec.key][row]
            if raw is not None:
                tried[spec.key] = spec.text(spec.internal(raw))
        seen.add(fingerprint(tried))
    worst = max(metric) if direction.minimize else min(metric)
    warm = len(metric) >= TPE_STARTUP_RUNS
    assert insights.split is not None
    threshold = (
        f"{metric_name} {'<=' if direction.minimize else '>='} {insights.split.threshold:.4g}"
    )
    if warm:
        preface = (
            f"TPE warmed with {len(metric)} finished runs (top {insights.split.good}: {threshold})"
        )
    else:
        preface = (
            f"exploring at random within the tried ranges: TPE models the space after "
            f"{TPE_STARTUP_RUNS} finished runs and there are {len(metric)}"
        )
    proposals: list[Proposal] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(count * _SEARCH_ATTEMPTS_PER_SUGGESTION):
            if len(proposals) == count:
                break
            trial = study.ask(fixed_distributions=distributions)
            sampled = {spec.key: spec.text(trial.params[spec.key]) for spec in specs}
            merged = {**canonical_base, **sampled}
            if fingerprint(merged) in seen:
                # TPE happily proposes the best configuration it has already seen. Telling
                # this throwaway in-memory study that the repeat scored the worst value
                # pushes the sampler off configurations that were tried, towards new ones.
                study.tell(trial, worst)
                continue
            seen.add(fingerprint(merged))
            changed = {k: v for k, v in sampled.items() if canonical_base.get(k) != v}
            parts = [
                _describe(by_key[key], trial.params[key], insights)
                for key in sorted(
                    changed, key=lambda k: -abs(_ratio_of(by_key[k], trial.params[k], insights))
                )
            ]
            reason = preface + ("; " + "; ".join(parts) if parts else "")
            proposals.append(Proposal(sampled, changed, reason))
    return proposals, insights


def _canonical(spec: ParamSpec, text: str) -> str | None:
    """A run's param text as the spec writes it ("1e-3" and "0.001" are one value)."""
    if not spec.numeric:
        return text
    try:
        return spec.text(spec.internal(float(text)))
    except ValueError:
        return None


def _ratio_of(result: ParamResult, value: Any, insights: Insights) -> float:
    assert insights.split is not None
    for density in result.densities:
        if density.holds(value):
            return math.log(
                density.ratio(insights.split.good, insights.run_count - insights.split.good)
            )
    return 0.0
