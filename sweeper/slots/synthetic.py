"""A synthetic trial: it sleeps and reports instead of training, to measure the sweep machinery.

Used by tests and ``bench/`` (``hydra.sweeper.synthetic_trial``) and named as
such wherever a figure comes from it. Everything around the trial is real: the
controller, the trial's config composition, the budget, the storage the worker
opens, heartbeats, stale-trial recovery, pruning and the slot pool. Only the LoRA training is replaced, by a
sleep and a value computed from the trial's params, so the same configuration
always scores the same.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from evaluate.reporter import RunPruned
from sweeper.slots.compose import compose_trial
from sweeper.slots.worker import FaultInjector, TrialJob, TrialOutcome, classify_failure, open_study, rss_mb, trial_log

log = logging.getLogger("sweeper.slots.worker")


def synthetic_value(params: Mapping[str, Any]) -> float:
    """A deterministic score of a configuration: equal params, equal value; different params, different values."""
    total = 0.0
    for name, value in sorted(params.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total += abs(math.log10(abs(float(value)) + 1e-12))  # orders of magnitude: lr 1e-4 -> 4
        else:
            total += (zlib.crc32(f"{name}={value}".encode()) % 1000) / 1000.0
    return total


def run_synthetic_trial(job: TrialJob, progress: Callable[[int, bool], None] | None = None) -> TrialOutcome:
    """Sleep ``seconds`` over ``steps`` reports of the trial's synthetic value; faults and pruning as in training."""
    started = time.monotonic()
    seconds, steps = float(job.synthetic.get("seconds", 1.0)), int(job.synthetic.get("steps", 4))
    faults = FaultInjector(job.fault)
    handler = trial_log(Path(job.run_dir))
    step, values = 0, None
    try:
        compose_trial(job.source, job.overrides, job.run_dir)  # a config no real trial could compose fails here too
        study = open_study(job)
        trial = optuna.trial.Trial(study, job.trial_id)
        value = synthetic_value(trial.params)
        for step in range(1, steps + 1):
            time.sleep(seconds / steps)
            if progress is not None:
                progress(step, faults.due(step))
            faults(step, None)
            if len(study.directions) == 1:
                trial.report(value * (1.0 + 1.0 / step), step)  # converges on the final value
                if trial.should_prune():
                    raise RunPruned(f"pruned at step {step} (synthetic)")
        values = [value + i for i in range(len(study.directions))]
        state, reason = "COMPLETE", None
    except Exception as err:  # as in training: a trial's failure never ends the worker
        state, reason = classify_failure(err, step)
    outcome = TrialOutcome(job.trial_number, state, values, reason, time.monotonic() - started, rss_mb(), step)
    log.info("trial %d %s (synthetic)%s", job.trial_number, state, f": {reason}" if reason else "")
    logging.getLogger().removeHandler(handler)
    handler.close()
    return outcome
