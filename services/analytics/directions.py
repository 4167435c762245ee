"""Whether lower or higher values of a metric are better, from its name unless given."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Goal = Literal["minimize", "maximize"]

# Name words of metrics where lower is better. Everything else (accuracy, recall, precision,
# AUC, NDCG, F1, MRR, top_k_categorical_accuracy...) is maximized.
_LOWER_IS_BETTER = frozenset(
    {
        "loss",
        "losses",
        "logloss",
        "nll",
        "error",
        "errors",
        "err",
        "rmse",
        "mse",
        "mae",
        "mape",
        "smape",
        "rmsle",
        "msle",
        "wer",
        "cer",
        "perplexity",
        "ppl",
        "latency",
        "duration",
        "seconds",
        "secs",
        "ms",
        "time",
        "cost",
        "regret",
        "brier",
        "fpr",
        "fnr",
        "distance",
        "divergence",
        "kl",
    }
)
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def name_words(name: str) -> list[str]:
    """ "val_loss" -> [val, loss]; "meanAbsoluteError" -> [mean, absolute, error]."""
    return [w.lower() for w in _WORDS.findall(name)]


def infer_goal(metric: str) -> Goal:
    words = name_words(metric)
    if any(w in _LOWER_IS_BETTER for w in words) or metric.lower().endswith("loss"):
        return "minimize"
    return "maximize"


@dataclass(frozen=True)
class Direction:
    goal: Goal
    inferred: bool

    @property
    def minimize(self) -> bool:
        return self.goal == "minimize"

    def better(self, candidate: float, incumbent: float) -> bool:
        return candidate < incumbent if self.minimize else candidate > incumbent

    def best(self, values: Iterable[float]) -> float:
        present = [v for v in values if not math.isnan(v)]
        if not present:
            return math.nan
        return min(present) if self.minimize else max(present)

    def sort_key(self, value: float) -> float:
        """Ascending sort key: the best value first, NaN last."""
        if math.isnan(value):
            return math.inf
        return value if self.minimize else -value

    @property
    def sql_order(self) -> str:
        return "ASC" if self.minimize else "DESC"


def resolve(metric: str, given: Goal | None) -> Direction:
    if given is not None:
        return Direction(given, inferred=False)
    return Direction(infer_goal(metric), inferred=True)
