"""``n_trials`` as a total for the study, across processes and hosts.

Each controller counts the study's trials and asks a new one under the
study's lock (a database or Redis lock on the storage's own server, or a file
lock beside the storage file), so two hosts can never both take the last slot.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper.store.storage import study_lock
from sweeper.store.study import touch_heartbeat

T = TypeVar("T")


def counts_against_budget(trial: FrozenTrial) -> bool:
    """WAITING trials have not run yet; a FAIL that was re-queued is paid for by its retry; a skipped draw never ran."""
    if trial.state == TrialState.WAITING:
        return False
    skipped = trial.user_attrs.get("requeued") or trial.user_attrs.get("skipped")
    return not (trial.state == TrialState.FAIL and skipped)


class TrialBudget:
    """Hands out trials of ``study`` until ``n_trials`` of them have been spent."""

    def __init__(self, study: optuna.Study, storage: BaseStorage, n_trials: int, lock_path: Path | None = None):
        self.study, self.storage, self.n_trials = study, storage, n_trials
        # None: beside the storage file, shared by every controller using that file.
        self.lock_path = lock_path

    def used(self) -> int:
        return sum(counts_against_budget(t) for t in self.study.get_trials(deepcopy=False))

    def remaining(self) -> int:
        return max(0, self.n_trials - self.used())

    def ask(self, prepare: Callable[[optuna.Trial], T] | None = None) -> optuna.Trial | T | None:
        """A RUNNING trial (enqueued ones first), or None once the study's budget is spent.

        ``prepare(trial)`` runs under the same lock and its result is returned
        instead: params sampled there are in the storage before any other
        controller asks, so a check for identical trials sees them all.
        """
        with study_lock(self.storage, self.study.study_name, self.lock_path):
            if self.used() >= self.n_trials:
                return None
            with warnings.catch_warnings():
                # Optuna expects heartbeats with optimize(); ours come from sweeper.store.study.Heartbeat.
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                trial = self.study.ask()
            # At once: a controller that dies now still leaves a trial the stale check can find.
            touch_heartbeat(self.study, trial, self.storage)
            return prepare(trial) if prepare is not None else trial
