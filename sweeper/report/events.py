"""One plain line per trial event, and the best-trial summary: what a sweep prints where nothing is redrawn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweeper.report.live_table import _fmt, best_step, params_text, trial_reason
from sweeper.space.search_space import display_params


def started_line(number: int, slot: int, params: Mapping[str, Any]) -> str:
    return f"trial {number} started on slot {slot}: {params_text(params)}"


def finished_line(t: FrozenTrial, step: int) -> str:
    """``step``: the last optimizer step the trial reached."""
    reason = trial_reason(t)
    if t.state == TrialState.COMPLETE:
        best = best_step(t)
        value = ", ".join(_fmt(v) for v in t.values)
        return f"trial {t.number} COMPLETE value {value}" + (f" (best step {best})" if best is not None else "")
    if t.state == TrialState.PRUNED:
        return f"trial {t.number} PRUNED at step {step}" + (f": {reason}" if reason else "")
    return f"trial {t.number} {t.state.name}" + (f": {reason}" if reason else "")


def best_lines(study: optuna.Study) -> list[str]:
    """The best trial with its params and run dir; the Pareto front of a multi-objective study."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return ["no trial completed"]
    if len(study.directions) > 1:
        return [f"Pareto front: trials {[t.number for t in study.best_trials]}"]
    best = study.best_trial
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in display_params(best.params).items())
    return [
        f"best trial {best.number}: value {_fmt(best.value)} ({params})",
        f"  run dir: {best.user_attrs.get('run_dir')}",
    ]
