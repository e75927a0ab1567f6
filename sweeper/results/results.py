"""optimization_results.yaml, in the official Optuna sweeper's shape."""

from __future__ import annotations

from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from train.atomic import write_bytes_atomic


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def study_results(study: optuna.Study) -> dict:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    results: dict = {"name": "lora_sweeper", "study_name": study.study_name, "trials": counts}
    if not complete:
        return results
    if len(study.directions) == 1:
        best = study.best_trial
        results["best_trial"] = best.number
        results["best_params"] = {k: _plain(v) for k, v in best.params.items()}
        results["best_value"] = _plain(best.value)
        results["best_run_dir"] = best.user_attrs.get("run_dir")
    else:
        results["solutions"] = [
            {"trial": t.number, "params": {k: _plain(v) for k, v in t.params.items()}, "values": list(t.values)}
            for t in study.best_trials
        ]
    return results


def write_results(study: optuna.Study, path: Path) -> dict:
    results = study_results(study)
    write_bytes_atomic(path, OmegaConf.to_yaml(OmegaConf.create(results)).encode())
    return results
