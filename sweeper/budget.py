"""``n_trials`` as a total for the study, across processes and hosts.

Each controller counts the study's trials and asks a new one under the
study's lock (a database or Redis lock on the storage's own server, or a file
lock beside the storage file), so two hosts can never both take the last slot.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweeper.storage import study_lock
from sweeper.study import touch_heartbeat


def counts_against_budget(trial: FrozenTrial) -> bool:
    """WAITING trials have not run yet, and a FAIL that was re-queued is paid for by its retry."""
    if trial.state == TrialState.WAITING:
        return False
    return not (trial.state == TrialState.FAIL and trial.user_attrs.get("requeued"))


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

    def ask(self) -> optuna.Trial | None:
        """A RUNNING trial (enqueued ones first), or None once the study's budget is spent."""
        with study_lock(self.storage, self.study.study_name, self.lock_path):
            if self.used() >= self.n_trials:
                return None
            with warnings.catch_warnings():
                # Optuna expects heartbeats with optimize(); ours come from sweeper.study.Heartbeat.
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
                trial = self.study.ask()
            # At once: a trial without a heartbeat record is never found stale on RDB storages.
            touch_heartbeat(self.study, trial, self.storage)
            return trial
