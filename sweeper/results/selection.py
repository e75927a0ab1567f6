"""Which trial to promote: pure functions over a study's finished trials.

Single objective: the best value, as Optuna ranks it. Multi-objective: a rule
from ``hydra.sweeper.promote`` (a weighted sum of metrics, or one metric with
floors and ceilings on others), since a Pareto front has no single best.
``--trial N`` overrides both. A trial's metrics are the scores of its best
evaluation (recorded by the worker), plus its objective values by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweeper.config import PromoteConfig
from train.errors import ConfigError


@dataclass
class Choice:
    trial: FrozenTrial
    reason: str  # how it was chosen, for the manifest and the log


def trial_metrics(trial: FrozenTrial, objectives: list[str] | None) -> dict[str, float]:
    """Every score of the trial's best evaluation, and each objective value under its metric's name."""
    metrics = {k: float(v) for k, v in (trial.user_attrs.get("best") or {}).get("scores", {}).items()}
    if trial.values is not None:
        names = objectives if objectives and len(objectives) == len(trial.values) else ["objective"]
        metrics.update({name: float(v) for name, v in zip(names, trial.values, strict=False)})
    return metrics


def _direction_of(metric: str, study: optuna.Study, objectives: list[str] | None, given: str | None) -> str:
    if given:
        return given
    if objectives and metric in objectives:
        return "minimize" if study.directions[objectives.index(metric)] == StudyDirection.MINIMIZE else "maximize"
    raise ConfigError(
        f"hydra.sweeper.promote.metric_direction: {metric!r} is not one of the study's objectives "
        f"({objectives or ['objective']}); say whether to maximize or minimize it"
    )


def _qualifies(metrics: dict[str, float], cfg: PromoteConfig) -> bool:
    for name, floor in cfg.floors.items():
        if not metrics.get(name, -math.inf) >= floor:
            return False
    for name, ceiling in cfg.ceilings.items():
        if not metrics.get(name, math.inf) <= ceiling:
            return False
    return True


def _check_known(cfg: PromoteConfig, known: set[str]) -> None:
    for key, names in (("weights", cfg.weights), ("floors", cfg.floors), ("ceilings", cfg.ceilings)):
        unknown = sorted(set(names) - known)
        if unknown:
            raise ConfigError(
                f"hydra.sweeper.promote.{key}: no trial recorded {unknown}; the scores are {sorted(known)}"
            )
    if cfg.metric and cfg.metric not in known:
        raise ConfigError(
            f"hydra.sweeper.promote.metric: no trial recorded {cfg.metric!r}; the scores are {sorted(known)}"
        )


def _by_hand(study: optuna.Study, number: int) -> Choice:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise ConfigError(f"--trial: the study has no trial {number} (trials 0..{max(trials, default=-1)})")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        reason = trial.user_attrs.get("fail_reason") or trial.user_attrs.get("prune_reason") or ""
        raise ConfigError(
            f"--trial: trial {number} is {trial.state.name}{f' ({reason})' if reason else ''}; "
            "only a COMPLETE trial is promoted"
        )
    return Choice(trial, f"chosen by hand (--trial {number})")


def choose_trial(
    study: optuna.Study, cfg: PromoteConfig, objectives: list[str] | None = None, trial_number: int | None = None
) -> Choice:
    """The trial to promote; a ConfigError that names the key when the rule cannot pick one."""
    if trial_number is not None:
        return _by_hand(study, trial_number)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        raise ConfigError(f"study {study.study_name!r}: no COMPLETE trial to promote yet")
    multi = len(study.directions) > 1
    if not (cfg.weights or cfg.metric):
        if multi:
            front = sorted(t.number for t in study.best_trials)
            raise ConfigError(
                f"hydra.sweeper.promote: a multi-objective study has no single best trial (Pareto front: {front}); "
                "set promote.weights={metric: weight,...} or promote.metric=NAME (with floors/ceilings), "
                "or pick one with --trial N"
            )
        if not (cfg.floors or cfg.ceilings):
            best = study.best_trial
            return Choice(best, f"best value ({study.direction.name.lower()}): {best.value:.6g}")
    metrics = {t.number: trial_metrics(t, objectives) for t in complete}
    _check_known(cfg, set().union(*metrics.values()))
    candidates = [t for t in complete if _qualifies(metrics[t.number], cfg)]
    if not candidates:
        limits = {
            **{k: f">= {v:g}" for k, v in cfg.floors.items()},
            **{k: f"<= {v:g}" for k, v in cfg.ceilings.items()},
        }
        raise ConfigError(f"hydra.sweeper.promote: no COMPLETE trial meets {limits}")
    limits_text = "".join(f", {k} >= {v:g}" for k, v in cfg.floors.items()) + "".join(
        f", {k} <= {v:g}" for k, v in cfg.ceilings.items()
    )
    if cfg.weights:

        def weighted(t: FrozenTrial) -> float:
            return sum(w * metrics[t.number].get(name, math.nan) for name, w in cfg.weights.items())

        scored = [(weighted(t), t) for t in candidates]
        scored = [(s, t) for s, t in scored if math.isfinite(s)]
        if not scored:
            raise ConfigError(f"hydra.sweeper.promote.weights: no trial has every metric of {sorted(cfg.weights)}")
        score, best = max(scored, key=lambda pair: (pair[0], -pair[1].number))
        formula = " + ".join(f"{w:g}*{name}" for name, w in cfg.weights.items())
        return Choice(best, f"largest weighted sum {formula} = {score:.6g}{limits_text}")
    metric = cfg.metric or "objective"
    if cfg.metric:
        direction = _direction_of(metric, study, objectives, cfg.metric_direction)
    else:  # single objective, with floors or ceilings
        direction = study.direction.name.lower()
    ranked = [t for t in candidates if math.isfinite(metrics[t.number].get(metric, math.nan))]
    if not ranked:
        raise ConfigError(f"hydra.sweeper.promote.metric: no qualifying trial recorded {metric!r}")
    sign = 1.0 if direction == "maximize" else -1.0
    best = max(ranked, key=lambda t: (sign * metrics[t.number][metric], -t.number))
    return Choice(best, f"best {metric} ({direction}) = {metrics[best.number][metric]:.6g}{limits_text}")
