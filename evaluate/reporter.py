"""Carries each evaluation out of a training run.

A single run uses ``NullReporter``; the sweeper plugs an Optuna trial in
(report the objective at the step, ask whether to prune). The recipe raises
``RunPruned`` when the reporter says so, which ends the run cleanly.
"""

from __future__ import annotations

from typing import Protocol


class RunPruned(RuntimeError):
    """The reporter asked to stop this run early (e.g. an Optuna pruner)."""


class Reporter(Protocol):
    def report(self, result) -> None:
        """Receive one evaluation (``evaluate.evaluator.EvalResult``)."""

    def should_prune(self) -> bool:
        """True when the run should stop after this evaluation."""


class NullReporter:
    def report(self, result) -> None:
        pass

    def should_prune(self) -> bool:
        return False
