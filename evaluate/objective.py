"""One number from an evaluation's scores: a metric, or a weighted sum of metrics."""

from __future__ import annotations

import math

from evaluate.config import ObjectiveConfig
from train.errors import ConfigError


def used_metrics(cfg: ObjectiveConfig) -> dict[str, float]:
    """Metrics with a nonzero weight: a 0 switches off one inherited from another config file."""
    return {name: weight for name, weight in cfg.metrics.items() if weight != 0}


def check_objective(cfg: ObjectiveConfig, available: set[str]) -> None:
    """Before training: every metric the objective uses must be produced by this evaluation."""
    missing = sorted(set(used_metrics(cfg)) - available)
    if missing:
        raise ConfigError(
            f"evaluate.objective.metrics: {', '.join(missing)} not available with this evaluation "
            f"(available: {', '.join(sorted(available)) or 'none'}); set the missing weights or paths"
        )


def objective_value(scores: dict[str, float], cfg: ObjectiveConfig) -> float:
    return float(sum(weight * scores[name] for name, weight in used_metrics(cfg).items()))


def is_better(candidate: float, incumbent: float | None, direction: str) -> bool:
    if incumbent is None or math.isnan(incumbent):
        return not math.isnan(candidate)
    return candidate > incumbent if direction == "maximize" else candidate < incumbent
