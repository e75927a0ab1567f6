"""optimization_results.yaml, in the official Optuna sweeper's shape.

``name: optuna``, then ``best_params`` and ``best_value`` (``solutions`` for
several objectives), as the plugin writes them, so scripts that read its file
read ours. ``best_params`` holds the values by the keys a user passes on the
command line (``network.alpha``, not a virtual ``_alpha_ratio`` or a
conditional block's Optuna name); our own keys follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from train.atomic import write_bytes_atomic


def _plain(value):
    return value.item() if hasattr(value, "item") else value


ValuesOf = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def study_results(study: optuna.Study, values_of: ValuesOf | None = None) -> dict:
    def params(trial) -> dict:
        values = values_of(trial.params) if values_of is not None else trial.params
        return {k: _plain(v) for k, v in values.items()}

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    results: dict = {"name": "optuna"}
    if complete and len(study.directions) == 1:
        best = study.best_trial
        results["best_params"] = params(best)
        results["best_value"] = _plain(best.value)
        results["best_trial"] = best.number
        results["best_run_dir"] = best.user_attrs.get("run_dir")
    elif complete:
        results["solutions"] = [
            {"params": params(t), "values": list(t.values), "trial": t.number} for t in study.best_trials
        ]
    results.update({"study_name": study.study_name, "trials": counts})
    return results


def write_results(study: optuna.Study, path: Path, values_of: ValuesOf | None = None) -> dict:
    results = study_results(study, values_of)
    write_bytes_atomic(path, OmegaConf.to_yaml(OmegaConf.create(results)).encode())
    return results
