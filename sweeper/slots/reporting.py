"""Pruning glue: one trial's evaluations go to Optuna through the study's storage.

The worker holds its own ``Study`` on the shared storage, so intermediate values
written here are what the controller, other hosts and optuna-dashboard see, and
the prune decision is the study's pruner judging them.
"""

from __future__ import annotations

import math

import optuna

METRICS = ("objective", "val_loss")


class OptunaReporter:
    """``evaluate.reporter.Reporter`` for one trial of ``study``."""

    def __init__(self, study: optuna.Study, trial_id: int, metric: str = "objective"):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.trial = optuna.trial.Trial(study, trial_id)
        self.metric = metric
        # Optuna cannot report or prune for multi-objective studies.
        self.single_objective = len(study.directions) == 1

    def _value(self, result) -> float | None:
        value = result.value if self.metric == "objective" else result.scores.get("val_loss")
        if value is None or math.isnan(value):
            return None
        return float(value)

    def report(self, result) -> None:
        value = self._value(result)
        if self.single_objective and value is not None:
            self.trial.report(value, step=result.step)

    def should_prune(self) -> bool:
        return self.single_objective and self.trial.should_prune()
